"""`kws listen` and `asr listen`: live audio through the audio-source interface.

A file played as if it were the microphone (``--input``, as fast as possible or in real time)
must print what the offline commands print for the same audio; the microphone source is
driven by a stand-in for PortAudio that delivers a real recording from its own thread, as
PortAudio's callback does; Ctrl-C stops cleanly; no input device is a clean error."""

import json
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.serve.sources import FileSource, MicrophoneSource
from kws.listen import listen

REPO = Path(__file__).resolve().parents[1]


def run(*args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def commands(shared_data, tmp_path_factory):
    """12 s of real Speech Commands clips (keywords and other words) in a row."""
    root = shared_data / "speech-commands-real"
    clips = [sorted((root / w).glob("*.wav"))[i] for i in range(2) for w in ("yes", "stop", "bed", "left", "go", "dog")]
    audio = np.concatenate([sf.read(str(c), dtype="float32")[0] for c in clips])
    path = tmp_path_factory.mktemp("listen") / "commands.wav"
    sf.write(path, audio, 16000)
    return path


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def same_events(got: list[dict], ref: list[dict], tol_time=0.011, tol_score=1e-3) -> None:
    assert [e["keyword"] for e in got] == [e["keyword"] for e in ref]
    for g, r in zip(got, ref):
        assert abs(g["start"] - r["start"]) <= tol_time and abs(g["end"] - r["end"]) <= tol_time, (g, r)
        assert abs(g["score"] - r["score"]) <= tol_score, (g, r)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_kws_listen_on_a_file_prints_the_events_of_kws_detect(commands, backend):
    ref = run("-m", "kws", "detect", str(commands), "--format", "jsonl", "--backend", backend)
    got = run("-m", "kws", "listen", "--input", str(commands), "--speed", "0", "--format", "jsonl", "--backend", backend)
    assert ref.returncode == 0 and got.returncode == 0, (ref.stderr, got.stderr)
    ref_events, got_events = events(ref.stdout), events(got.stdout)
    assert len(ref_events) >= 3  # measured: 7 events (the shipped model finds most of the 8 keywords)
    same_events(got_events, ref_events)
    assert "events in 12.0 s of audio" in got.stderr


def test_kws_listen_stops_cleanly_on_ctrl_c(commands):
    # As at a terminal: SIGINT at its default. A runner that starts the suite as a background job of a
    # non-interactive shell passes SIGINT on ignored, and Python then never raises KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-m", "kws", "listen", "--input", str(commands), "--speed", "1"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stdout.readline()  # the first event: the command is past start-up and listening
    assert first.count("\t") == 4, first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped by Ctrl-C" in err and "Traceback" not in err
    heard = float(err.split(" events in ")[1].split(" s")[0])
    assert 0 < heard < 11.5  # it stopped before the end of the 12-s file


def test_microphone_source_with_a_stand_in_portaudio(commands, monkeypatch):
    """The microphone source, fed from another thread in 100-ms blocks as PortAudio's callback is,
    gives the detector exactly the events of the same file read from disk."""
    audio = sf.read(str(commands), dtype="float32")[0]

    class InputStream:
        def __init__(self, device, channels, samplerate, dtype, blocksize, callback):
            assert channels == 1 and samplerate == 16000 and dtype == "float32"
            self.blocksize, self.callback, self.thread = blocksize, callback, None

        def start(self):
            def feed():
                for i in range(0, len(audio), self.blocksize):
                    self.callback(audio[i:i + self.blocksize, None].copy(), self.blocksize, None, None)
                    time.sleep(0.001)
                mic.close()  # the user presses Ctrl-C after the last word
            self.thread = threading.Thread(target=feed, daemon=True)
            self.thread.start()

        def stop(self):
            self.thread.join()

        def close(self):
            pass

    monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(InputStream=InputStream))
    from kws.onnx_detect import OnnxDetector

    det = OnnxDetector(REPO / "kws" / "pretrained" / "crnn.onnx", batch_windows=1)
    mic = MicrophoneSource(sample_rate=16000, block_ms=100, max_queue=1000)
    live: list = []
    summary = listen(det, mic, live.append)
    assert summary.seconds == pytest.approx(len(audio) / 16000, abs=0.11) and mic.dropped == 0
    offline: list = []
    listen(det, FileSource(commands, 16000, speed=0), offline.append)
    same_events([e.to_dict() for e in live], [e.to_dict() for e in offline], tol_time=1e-6, tol_score=1e-6)
    assert len(offline) >= 3


def test_file_source_paces_blocks_in_real_time(commands):
    src = FileSource(commands, 16000, block_ms=100, speed=4.0)  # 12 s of audio in 3 s
    start = time.monotonic()
    n = sum(block.size for block in src)
    took = time.monotonic() - start
    assert n == 12 * 16000 and 2.9 <= took < 6.0


def test_listen_without_a_microphone_or_file_is_a_clean_error(tmp_path, monkeypatch):
    missing = run("-m", "kws", "listen", "--input", str(tmp_path / "none.wav"))
    assert missing.returncode == 2 and "none.wav" in missing.stderr and "Traceback" not in missing.stderr

    def no_device(**kwargs):
        raise RuntimeError("Error querying device -1")

    monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(
        InputStream=no_device, query_devices=lambda: []))
    from asr.serve.sources import AudioDeviceError

    with pytest.raises(AudioDeviceError, match="cannot record at 16000 Hz.*input devices: none"):
        next(iter(MicrophoneSource()))


def _streaming_ctc_checkpoint(path: Path) -> Path:
    from asr.models.config import EncoderConfig, ModelConfig
    from asr.models.ctc import CTCModel
    from asr.text import CharTokenizer

    tok = CharTokenizer.english()
    enc = dict(dim=32, layers=2, bidirectional=False, lookahead=2, conv_channels=8)
    torch.manual_seed(0)
    m = CTCModel(ModelConfig(encoder=EncoderConfig(**enc)), tok.vocab_size).eval()
    with torch.no_grad():  # larger random weights: the greedy path then emits many tokens
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        m.frontend.set_cmvn(torch.full((m.frontend.dim,), -6.0), torch.full((m.frontend.dim,), 3.0))
    torch.save({"format": 1, "family": "ctc", "config": {"model": {"family": "ctc", "encoder": enc}},
                "model": m.state_dict(), "tokenizer": tok.state_dict()}, path)
    return path


def test_asr_listen_on_a_file_gives_the_streaming_transcript(shared_data, tmp_path):
    ckpt = _streaming_ctc_checkpoint(tmp_path / "m.pt")
    flac = sorted((shared_data / "librispeech-mini").rglob("*.flac"))[0]
    ref = run("-m", "asr", "transcribe", "--model", str(ckpt), "--streaming", str(flac))
    one = run("-m", "asr", "listen", "--model", str(ckpt), "--input", str(flac), "--speed", "0",
              "--endpoint-silence", "0", "--max-utterance", "0", "--format", "jsonl")
    assert ref.returncode == 0 and one.returncode == 0, (ref.stderr, one.stderr)
    results = events(one.stdout)
    finals = [r for r in results if r["type"] == "final"]
    assert len(finals) == 1 and finals[0]["text"] == ref.stdout.split("\t", 1)[1].strip()
    partials = [r["text"] for r in results if r["type"] == "partial"]
    assert len(partials) >= 2 and all(b.startswith(a) for a, b in zip(partials, partials[1:]))  # text only grows
    # with endpointing the stream is cut into utterances that follow each other in time
    cut = run("-m", "asr", "listen", "--model", str(ckpt), "--input", str(flac), "--speed", "0",
              "--max-utterance", "2", "--format", "jsonl")
    assert cut.returncode == 0, cut.stderr
    finals = [r for r in events(cut.stdout) if r["type"] == "final"]
    duration = sf.info(str(flac)).duration
    assert len(finals) >= 2
    assert all(a["end"] <= b["start"] + 1e-6 for a, b in zip(finals, finals[1:]))
    assert finals[-1]["end"] <= duration + 0.21
