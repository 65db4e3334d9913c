"""The WebSocket server (`asr serve`, `kws serve`) with real clients on loopback.

Concurrent streams of different real recordings give exactly the offline streaming results
(ASR text and words, KWS events); the encoder really runs several streams per call; bad clients
(malformed config, binary first, oversized message, odd byte count, wrong token, too many
connections, idle, too long, abrupt disconnect) get their close codes while the other streams
finish correctly; a failing stream inside the engine ends only itself."""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import iter_audio_blocks, resample
from asr.client import ServerError, stream_audio, stream_file_async
from asr.decode.streaming import Recognizer, transcribe_stream
from asr.models.config import EncoderConfig, ModelConfig
from asr.models.ctc import CTCModel
from asr.models.encoders import build_encoder
from asr.serve import protocol as P
from asr.serve.batching import infer_batch, split_state, stack_states, state_signature
from asr.serve.engines import AsrEngine, Engine, Job, JobResult, aligned_chunk_ms
from asr.serve.server import start_in_thread
from asr.text import CharTokenizer

pytest.importorskip("websockets")
REPO = Path(__file__).resolve().parents[1]
TOK = CharTokenizer.english()
RNN = dict(dim=32, layers=2, bidirectional=False, lookahead=2, conv_channels=8)
TOKEN = "s3cret"
LIMITS = dict(max_connections=16, max_message_bytes=32 * 1024, max_stream_seconds=6.0, idle_timeout=1.5)


def small_model(enc=RNN):
    torch.manual_seed(0)
    m = CTCModel(ModelConfig(encoder=EncoderConfig(**enc)), TOK.vocab_size).eval()
    with torch.no_grad():  # larger random weights: the greedy path then emits many tokens
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        m.frontend.set_cmvn(torch.full((m.frontend.dim,), -6.0), torch.full((m.frontend.dim,), 3.0))
    return m


def speech_files(shared_data, n=4):
    """The ``n`` shortest LibriSpeech-mini recordings (2-3 s)."""
    files = sorted((shared_data / "librispeech-mini").rglob("*.flac"))
    return [f for _, f in sorted((sf.info(str(f)).duration, f) for f in files)[:n]]


def offline_text(model, path, rate=16000):
    wav = torch.from_numpy(np.concatenate(list(iter_audio_blocks(path, rate, 60.0, numpy=True))))
    return transcribe_stream(model, TOK, wav, chunk_ms=200)


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def server(model):
    torch.set_num_threads(1)
    with start_in_thread(AsrEngine(Recognizer(model, TOK, chunk_ms=200)), limits=P.ServerLimits(**LIMITS),
                         token=TOKEN) as running:
        yield running


async def raw_session(url, *messages, abort=False, pause=0.0):
    """Send ``messages`` as they are; return ``(close code, reason, replies)``."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    replies = []
    async with connect(url, compression=None, max_size=None) as ws:
        try:
            for m in messages:
                await ws.send(m)
                await asyncio.sleep(pause)
        except ConnectionClosed:
            pass
        if abort:  # vanish without a close frame
            ws.transport.abort()
            return None, "", replies
        try:
            async for r in ws:
                replies.append(json.loads(r))
        except ConnectionClosed:
            pass
    return ws.close_code, ws.close_reason, replies


def cfg(**kw):
    return json.dumps({"token": TOKEN, **kw})


# ---------------------------------------------------------------------------
# units
# ---------------------------------------------------------------------------
def test_protocol_messages():
    c = P.parse_config('{"sample_rate": 8000, "format": "float32", "token": "t", "partial": false}')
    assert (c.sample_rate, c.format, c.token, c.options) == (8000, "float32", "t", {"partial": False})
    for bad in ("{", "[1]", '{"sample_rate": 100}', '{"format": "mp3"}', '{"token": 5}', '{"sample_rate": true}'):
        with pytest.raises(P.ProtocolError) as e:
            P.parse_config(bad)
        assert e.value.code == P.INVALID_DATA
    with pytest.raises(P.ProtocolError) as e:
        P.parse_config(b"\x00\x01")
    assert e.value.code == P.UNSUPPORTED_DATA
    assert P.parse_control("EOS") and P.parse_control('{"eos": true}')
    with pytest.raises(P.ProtocolError):
        P.parse_control('{"eos": false}')
    assert P.decode_audio(np.array([0.25, -1], "<f4").tobytes(), "float32").tolist() == [0.25, -1.0]
    for data, fmt in ((b"\x00\x01\x02", "pcm16"), (np.array([np.nan], "<f4").tobytes(), "float32")):
        with pytest.raises(P.ProtocolError) as e:
            P.decode_audio(data, fmt)
        assert e.value.code == P.INVALID_DATA
    assert len(P.close_reason("é" * 200).encode()) <= 123


@pytest.mark.parametrize("enc", [
    EncoderConfig(kind="rnn", rnn_type="gru", dim=16, layers=2, bidirectional=False, lookahead=3, dropout=0.0),
    EncoderConfig(kind="rnn", rnn_type="lstm", dim=16, layers=2, bidirectional=False, dropout=0.0),
    EncoderConfig(kind="conformer", dim=16, layers=2, heads=2, conv_kernel=5, dropout=0.0, causal=True,
                  chunk_size=4, left_chunks=4),
], ids=["gru-lookahead", "lstm", "causal-conformer"])
def test_stacked_encoder_states_give_the_one_by_one_outputs(enc, one_thread):
    """Streams that started at different times, 16 feature frames per step: those whose states
    stack run as one batch (a Conformer's at different positions and with attention caches of
    different lengths too) and give the one-by-one outputs and states."""
    torch.manual_seed(0)
    encoder = build_encoder(enc, 20).eval()
    starts = [0, 2, 5, 6]  # the step at which each stream begins
    feats = torch.randn(len(starts), 16 * 14, 20)
    single, batched = [[] for _ in starts], [[] for _ in starts]
    s_state, b_state = [None] * len(starts), [None] * len(starts)
    sizes, mixed = [], 0
    with torch.no_grad():
        for step in range(14 + max(starts)):
            live = [i for i, s0 in enumerate(starts) if 0 <= step - s0 < 14]
            chunk = {i: feats[i:i + 1, 16 * (step - starts[i]):16 * (step - starts[i] + 1)] for i in live}
            for i in live:
                out, s_state[i] = encoder.infer(chunk[i], s_state[i])
                single[i].append(out)
            groups = {}
            for i in live:
                groups.setdefault(state_signature(b_state[i]), []).append(i)
            for ids in groups.values():
                sizes.append(len(ids))
                layers = [b_state[i]["layers"][0] for i in ids if b_state[i] and "layers" in b_state[i]]
                mixed += len({layer["k"].shape[1] for layer in layers if layer is not None}) > 1
                out, states = infer_batch(encoder, torch.cat([chunk[i] for i in ids]), [b_state[i] for i in ids])
                for k, (i, state) in enumerate(zip(ids, states)):
                    batched[i].append(out[k:k + 1])
                    b_state[i] = state
    assert max(sizes) >= 3  # streams at different positions did run together
    assert mixed or enc.kind == "rnn"  # and Conformer streams with different attention histories
    for i in range(len(starts)):
        assert state_signature(b_state[i]) == state_signature(s_state[i])
        torch.testing.assert_close(torch.cat(batched[i], 1), torch.cat(single[i], 1), rtol=0, atol=1e-5)
        if enc.kind == "conformer":
            assert b_state[i]["offset"] == s_state[i]["offset"]
            torch.testing.assert_close(b_state[i]["layers"][1]["k"], s_state[i]["layers"][1]["k"], rtol=0, atol=1e-5)
    restacked = stack_states(split_state(stack_states(s_state), len(s_state)))
    assert state_signature(restacked) == state_signature(stack_states(s_state))


CONFORMER = dict(kind="conformer", dim=32, layers=2, heads=2, conv_channels=8, causal=True, chunk_size=4, left_chunks=2,
                 conv_kernel=5)


@pytest.mark.parametrize("enc", [RNN, CONFORMER], ids=["gru-lookahead", "causal-conformer"])
def test_engine_batches_streams_and_equals_the_recognizer(enc, shared_data, one_thread):
    model = small_model(enc)
    files = speech_files(shared_data, 3)
    wavs = [sf.read(str(f), dtype="float32")[0] for f in files]
    chunk_ms = aligned_chunk_ms(model)
    assert chunk_ms == (160.0 if enc is CONFORMER else 200.0)
    engine = AsrEngine(Recognizer(model, TOK, chunk_ms=chunk_ms))
    streams = [engine.open({}) for _ in wavs]
    pos, finals, partials = [0] * 3, [None] * 3, [[], [], []]
    tick = 0
    n = engine.chunk
    while None in finals:  # a chunk per stream per tick; stream i starts 2i ticks later
        jobs = []
        for i, w in enumerate(wavs):
            if finals[i] is None and tick >= 2 * i:
                jobs.append(Job(streams[i], w[pos[i]:pos[i] + n], final=pos[i] + n >= len(w)))
                pos[i] += n
        for job, result in zip(jobs, engine.step(jobs)):
            assert result.error is None
            i = streams.index(job.stream)
            for m in result.messages:
                if m["type"] == "partial":
                    partials[i].append(m)
                else:
                    finals[i] = m
        tick += 1
    assert engine.stats()["streams_per_encoder_call"] > 1.5  # really batched
    for i, w in enumerate(wavs):
        rec = Recognizer(model, TOK, chunk_ms=200)
        text, state = rec.infer(torch.from_numpy(w), None, final=True)
        assert finals[i]["text"] == text == transcribe_stream(model, TOK, torch.from_numpy(w), 200) and len(text) > 5
        assert finals[i]["words"] == [w.to_json() for w in rec.words(state)]
        assert finals[i]["audio_seconds"] == round(len(w) / 16000, 3)
        assert partials[i] and all(text.startswith(p["text"]) for p in partials[i])
        words = []
        for p in partials[i]:  # the partials' words, rebuilt: the final words but the last
            words[p["first_word"]:] = p["words"]
        assert words[:-1] == finals[i]["words"][:len(words) - 1]


def test_partial_words_are_computed_incrementally_and_equal_the_recognizers(model):
    """Word timings of a growing CTC transcript (many words), as the engine updates them chunk by
    chunk, equal Recognizer.words on the whole state every time."""
    engine = AsrEngine(Recognizer(model, TOK, chunk_ms=200))
    stream = engine.open({})
    ids = TOK.encode("THE CAT SAT ON THE MAT  AND A DOG RAN OFF TO SEE IT")
    rng = np.random.default_rng(0)
    starts = np.cumsum(rng.integers(2, 5, len(ids)))
    ends, post = starts + rng.integers(0, 2, len(ids)), rng.uniform(0.2, 1, len(ids))
    for n in range(1, len(ids) + 1, 3):
        dec = {"tokens": ids[:n], "last": ids[n - 1], "starts": starts[:n].tolist(), "ends": ends[:n].tolist(),
               "post": post[:n].tolist(), "offset": int(ends[n - 1]) + 1}
        dec["ends"][-1] += 1  # the last token's run may still grow
        dec["post"][-1] += 0.5
        stream.state["decoder"] = dec
        assert engine._words(stream) == [w.to_json() for w in engine.recognizer.words(stream.state)]
    assert len(stream.words_done) >= 10


# ---------------------------------------------------------------------------
# the server with real clients
# ---------------------------------------------------------------------------
def test_concurrent_streams_equal_offline(server, model, shared_data, tmp_path):
    files = speech_files(shared_data, 4)
    x8k, _ = sf.read(str(files[3]), dtype="float32")  # one stream at 8 kHz as float32: resampled by the server
    eight = tmp_path / "8k.wav"
    sf.write(eight, resample(x8k, 16000, 8000), 8000, subtype="FLOAT")
    paths = files[:3] + [eight]

    async def run():
        return await asyncio.gather(*[stream_file_async(server.url, p, token=TOKEN, chunk_ms=100 + 30 * i)
                                      for i, p in enumerate(paths)])

    results = asyncio.run(run())
    for path, r in zip(paths, results):
        final = r["final"]
        assert final["text"] == offline_text(model, path) and r["close_code"] == 1000
        assert r["ready"] == {"type": "ready", "engine": "asr", "sample_rate": 16000}
        assert [m["type"] for m in r["messages"]][-1] == "final"
        assert all(final["text"].startswith(m["text"]) for m in r["messages"] if m["type"] == "partial")
        assert " ".join(w["word"] for w in final["words"]) == final["text"]
        assert abs(final["audio_seconds"] - sf.info(str(path)).duration) < 0.01
    assert results[3]["messages"][0]["type"] == "partial"


def test_bad_clients_get_their_close_codes_while_others_finish(server, model, shared_data):
    files = speech_files(shared_data, 2)
    long_audio = np.zeros(int(16000 * 6.5), np.float32).tobytes()  # past max-stream-seconds (6 s)

    async def run():
        good = [asyncio.create_task(stream_file_async(server.url, f, token=TOKEN, realtime=True)) for f in files]
        await asyncio.sleep(0.3)  # the good streams are under way
        bad = await asyncio.gather(
            raw_session(server.url, "{not json"),
            raw_session(server.url, b"\x00\x00"),
            raw_session(server.url, cfg(), b"\x00" * (33 * 1024)),  # over max-message-bytes
            raw_session(server.url, cfg(), b"\x00\x00\x00"),  # not whole pcm16 samples
            raw_session(server.url, cfg(format="float32"), np.array([np.inf], "<f4").tobytes()),
            raw_session(server.url, cfg(), "hello"),
            raw_session(server.url, json.dumps({"token": "wrong"})),
            raw_session(server.url, json.dumps({})),
            raw_session(server.url, cfg(partial="yes")),
            raw_session(server.url, cfg(beam=4)),
            raw_session(server.url, cfg()),  # then nothing: idle
            raw_session(server.url, cfg(format="float32", partial=False), *[long_audio[i:i + 32000]
                                                                             for i in range(0, len(long_audio), 32000)]),
            raw_session(server.url, cfg(), np.zeros(8000, "<i2").tobytes(), np.zeros(8000, "<i2").tobytes(),
                        abort=True, pause=0.05),
        )
        return await asyncio.gather(*good), bad

    t0 = time.monotonic()
    good, bad = asyncio.run(run())
    codes = [b[0] for b in bad]
    assert codes == [1007, 1003, 1009, 1007, 1007, 1007, 1008, 1008, 1007, 1007, 4001, 4000, None], bad
    assert "malformed JSON" in bad[0][1] and "token" in bad[6][1] and "unknown field" in bad[9][1]
    assert "idle" in bad[10][1] and "too long" in bad[11][1]
    too_long = bad[11][2]
    assert too_long[-1]["type"] == "final" and too_long[-1]["audio_seconds"] == 6.0  # the audio up to the limit
    for f, r in zip(files, good):
        assert r["final"]["text"] == offline_text(model, f) and r["close_code"] == 1000
    assert time.monotonic() - t0 < 20
    deadline = time.monotonic() + 5
    while server.server.active and time.monotonic() < deadline:  # every connection, the aborted one too, is gone
        time.sleep(0.05)
    assert server.server.active == 0
    assert not server.server.scheduler.streams


def test_too_many_connections(server, shared_data):
    async def run():
        from websockets.asyncio.client import connect

        held = []
        for _ in range(LIMITS["max_connections"]):
            ws = await connect(server.url, compression=None)
            await ws.send(cfg())
            assert json.loads(await ws.recv())["type"] == "ready"
            held.append(ws)
        code, reason, _ = await raw_session(server.url, cfg())
        for ws in held:
            await ws.close()
        await asyncio.sleep(0.2)
        after = await stream_file_async(server.url, speech_files(shared_data, 1)[0], token=TOKEN)
        return code, reason, after

    code, reason, after = asyncio.run(run())
    assert code == 1013 and "busy" in reason
    assert after["close_code"] == 1000 and after["final"]["text"]


class _Fragile(Engine):
    """Echoes sample counts; a stream opened with {"fail": true} raises inside step."""

    name = "fragile"

    def open(self, options):
        return {"fail": bool(options.get("fail")), "n": 0}

    def step(self, jobs):
        out = []
        for job in jobs:
            if job.stream["fail"]:
                out.append(JobResult(error="RuntimeError: boom"))
                continue
            job.stream["n"] += job.samples.size
            out.append(JobResult([{"type": "final", "samples": job.stream["n"]}] if job.final else []))
        return out


def test_a_failing_stream_ends_alone():
    with start_in_thread(_Fragile()) as running:
        async def run():
            x = [np.zeros(1600, np.float32)] * 5
            return await asyncio.gather(stream_audio(running.url, x, 16000, config={"fail": True}),
                                        stream_audio(running.url, x, 16000), return_exceptions=True)

        failed, ok = asyncio.run(run())
    assert isinstance(failed, ServerError) and failed.code == 1011 and "boom" in failed.reason
    assert ok["final"] == {"type": "final", "samples": 8000}
    assert running.summary["failed"] == 1 and running.summary["completed"] == 1


# ---------------------------------------------------------------------------
# the commands
# ---------------------------------------------------------------------------
def start_command(args, env=None):
    proc = subprocess.Popen([sys.executable, "-m", *args, "--port", "0"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    line = proc.stdout.readline()
    m = re.search(r"ws://\S+", line)
    assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, m.group(0)


def stop_command(proc):
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def test_asr_serve_and_transcribe_server(model, shared_data, tmp_path, capsys):
    from asr.cli import main

    ckpt = tmp_path / "m.pt"
    torch.save({"format": 1, "family": "ctc", "config": {"model": {"encoder": RNN}}, "model": model.state_dict(),
                "tokenizer": TOK.state_dict()}, ckpt)
    files = [str(f) for f in speech_files(shared_data, 2)]
    proc, url = start_command(["asr", "serve", "--model", str(ckpt), "--max-connections", "3"],
                              env={"ASR_SERVE_TOKEN": "tok"})
    try:
        assert main(["transcribe", "--server", url, "--token", "tok", *files]) == 0
        served = capsys.readouterr().out
        assert main(["transcribe", "--model", str(ckpt), "--streaming", *files]) == 0
        assert served == capsys.readouterr().out and served.count("\t") == 2
        assert main(["transcribe", "--server", url, "--token", "nope", files[0]]) == 1
        assert "1008" in capsys.readouterr().err
    finally:
        summary = stop_command(proc)
    assert summary["completed"] == "2" and summary["streams"] == "2"


def kws_streams(shared_data, tmp_path, n=3):
    """Recordings of 10 Speech Commands clips each with silence between, different clips per file."""
    clips = sorted((shared_data / "speech-commands-real").glob("*/*.wav"))
    rng = np.random.default_rng(0)
    paths = []
    for s in range(n):
        parts = []
        for i in rng.choice(len(clips), 10, replace=False):
            parts += [sf.read(str(clips[i]), dtype="float32")[0], np.zeros(6000, np.float32)]
        paths.append(tmp_path / f"kws{s}.wav")
        sf.write(paths[-1], np.concatenate(parts), 16000)
    return paths


def test_kws_serve_events_equal_kws_detect(shared_data, tmp_path):
    from kws.detect import Detector
    from kws.events import events_in_file

    paths = kws_streams(shared_data, tmp_path)
    det, yes_no = Detector.from_checkpoint(), Detector.from_checkpoint(keywords=["yes", "no"])
    ref = [[(e.keyword, e.start, e.end, e.score) for e in events_in_file(d, p)]
           for d, p in [(det, p) for p in paths] + [(yes_no, paths[0])]]
    assert sum(map(len, ref)) >= 6
    proc, url = start_command(["kws", "serve", "--backend", "torch"])  # the batched backend
    try:
        async def run():
            return await asyncio.gather(*[stream_file_async(url, p, chunk_ms=100 + 20 * i) for i, p in enumerate(paths)],
                                        stream_file_async(url, paths[0], config={"keywords": ["yes", "no"]}))

        results = asyncio.run(run())
    finally:
        summary = stop_command(proc)
    for r, want in zip(results, ref):
        got = [(m["keyword"], m["start"], m["end"], m["score"]) for m in r["messages"] if m["type"] == "event"]
        assert [g[:3] for g in got] == [w[:3] for w in want]
        assert np.allclose([g[3] for g in got], [w[3] for w in want], atol=2e-3)
        assert r["final"]["events"] == len(want)
    assert float(summary["streams_per_classifier_call"]) > 1.5  # the streams' windows went through together


def test_load_benchmark_runs(model, tmp_path):
    ckpt = tmp_path / "m.pt"
    torch.save({"format": 1, "family": "ctc", "config": {"model": {"encoder": RNN}}, "model": model.state_dict(),
                "tokenizer": TOK.state_dict()}, ckpt)
    out = subprocess.run([sys.executable, "benchmarks/serve_load.py", "--asr-model", str(ckpt), "--streams", "2",
                          "--no-search", "--seconds", "1.5", "--utterances", "1", "--skip-kws",
                          "--baseline-utterances", "4"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("asr ") and line.split()[1] == "2")
    assert row.split()[2] == "yes"  # 2 streams of a tiny model are on time
    assert re.search(r"Recognizer.infer one stream at a time\s+\d", out.stdout)
    assert "max real-time streams on time, asr: 2 = " in out.stdout


def test_kws_onnx_engine_events_equal_the_onnx_detector(shared_data, tmp_path):
    pytest.importorskip("onnxruntime")
    from kws.events import events_in_file
    from kws.onnx_detect import OnnxDetector
    from kws.serve import load_kws_engine

    paths = kws_streams(shared_data, tmp_path, 2)
    det = OnnxDetector(REPO / "kws" / "pretrained" / "crnn.onnx")
    want = [[(e.keyword, e.start, e.end, e.score) for e in events_in_file(det, p)] for p in paths]
    engine = load_kws_engine()  # auto: the shipped model on ONNX Runtime
    assert type(engine.template).__name__ == "OnnxDetector"
    streams = [engine.open({}) for _ in paths]
    audio = [sf.read(str(p), dtype="float32")[0] for p in paths]
    got, pos, done = [[], []], [0, 0], [False, False]
    while not all(done):
        jobs = [Job(streams[i], audio[i][pos[i]:pos[i] + 1600 + 400 * i], final=pos[i] + 1600 + 400 * i >= len(audio[i]))
                for i in range(2) if not done[i]]
        for job, result in zip(jobs, engine.step(jobs)):
            i = streams.index(job.stream)
            pos[i] += 1600 + 400 * i
            for m in result.messages:
                if m["type"] == "event":
                    got[i].append((m["keyword"], m["start"], m["end"], m["score"]))
                else:
                    done[i] = True
                    assert m["events"] == len(want[i])
    assert got == want and sum(map(len, want)) >= 4


def test_a_port_that_cannot_be_listened_on_is_a_clean_error():
    import socket

    repo = Path(__file__).resolve().parents[1]
    bad = subprocess.run([sys.executable, "-m", "kws", "serve", "--port", "99999"], cwd=repo, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--port 99999" in bad.stderr and "Traceback" not in bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = subprocess.run([sys.executable, "-m", "kws", "serve", "--port", str(port)], cwd=repo,
                               capture_output=True, text=True, timeout=120)
    assert taken.returncode == 2 and f"127.0.0.1:{port}" in taken.stderr and "Traceback" not in taken.stderr
