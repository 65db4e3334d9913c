"""Load on one `asr serve` / `kws serve` process: how many real-time streams it serves on time.

For each engine (the streaming CTC model of ``--asr-model``; the keyword spotter, default the
model shipped with the package), start the server (one process, ``--threads`` model threads),
then run N concurrent clients in this process. Each client streams ``--utterances`` real
recordings one after the other (LibriSpeech-mini cut into ``--seconds`` pieces for ASR; Speech
Commands clips with pauses between them for KWS, from ../shared/data), at real-time pace in
``--chunk-ms`` messages, clients starting at random moments within the first second. Measured
per trial:

* final latency: end-of-stream sent -> final message received, for every utterance;
* partial latency (ASR): a partial covering audio up to t s -> received, minus when the audio
  up to t had been sent; event latency (KWS): the same for the event's end time (it includes
  the detector's look-ahead: the window after the word and the smoothing);
* on time: every utterance's final message within ``--deadline`` s (0.5) and no errors.

N goes through ``--streams`` (default 1 and 8), then doubles until a trial is late and bisects
(to 10%) to find the largest N on time. Baseline: the same utterances one at a time through
``Recognizer.infer`` (``Detector.process``) in this process, one thread: audio seconds per wall
second, i.e. how many real-time streams a loop without batching could serve at best. The ratio
max N / baseline shows what batching across streams (and the server's overhead) amounts to.
``--no-batch`` also runs the ASR search with ``asr serve --no-batch``.

The clients run on the same machine and take CPU from the server (their share is printed).

    python benchmarks/serve_load.py --asr-model exp/synthetic/ctc_streaming/best.pt [--kws-model M.pt]
        [--streams 1,8] [--seconds 5] [--utterances 3] [--no-search] [--skip-kws] [--no-batch]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asr.client import ServerError, stream_audio  # noqa: E402


def shared_data() -> Path:
    return Path(os.environ.get("ASR_SHARED_DATA", REPO.parent / "shared" / "data"))


def asr_pool(seconds: float) -> list[np.ndarray]:
    """LibriSpeech-mini recordings cut into pieces of ``seconds`` (16 kHz), shuffled (fixed seed)."""
    import soundfile as sf

    out = []
    for f in sorted((shared_data() / "librispeech-mini").rglob("*.flac")):
        x, _ = sf.read(str(f), dtype="float32")
        n = int(seconds * 16000)
        out += [x[i:i + n] for i in range(0, len(x) - n // 2, n)]
    random.Random(0).shuffle(out)
    return out


def kws_pool(seconds: float, count: int = 64) -> list[np.ndarray]:
    """``count`` recordings of ``seconds``: Speech Commands clips with 0.3-1 s pauses between them."""
    import soundfile as sf

    clips = sorted((shared_data() / "speech-commands-real").glob("*/*.wav"))
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        parts, n = [], 0
        while n < seconds * 16000:
            x, _ = sf.read(str(clips[rng.integers(len(clips))]), dtype="float32")
            gap = np.zeros(int(rng.uniform(0.3, 1.0) * 16000), np.float32)
            parts += [x, gap]
            n += len(x) + len(gap)
        out.append(np.concatenate(parts)[: int(seconds * 16000)])
    return out


def start_server(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", *cmd, "--port", "0", "--max-connections", "4096"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"ws://\S+", line)
    if not m:
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
    return proc, m.group(0)


def stop_server(proc: subprocess.Popen) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def client(url: str, utterances: list[np.ndarray], chunk: int, kind: str, rec: dict) -> None:
    await asyncio.sleep(random.random())  # streams start at random moments within the first second
    for x in utterances:
        blocks = [x[i:i + chunk] for i in range(0, len(x), chunk)]
        try:
            r = await stream_audio(url, blocks, 16000, fmt="pcm16", realtime=True, open_timeout=30,
                                   config={"partial": True} if kind == "asr" else None)
        except ServerError as e:
            rec["errors"].append(str(e))
            continue
        t = r["timing"]
        rec["final"].append(t["final"] - t["eos"])
        sent = np.array(t["sent"])  # (audio seconds sent so far, time)
        for m, at in zip(r["messages"], t["received"]):
            a = m.get("audio_seconds") if m["type"] == "partial" else m.get("end") if m["type"] == "event" else None
            if a is None or not len(sent):
                continue
            k = min(int(np.searchsorted(sent[:, 0], a - 1e-6)), len(sent) - 1)
            rec["partial"].append(at - sent[k, 1])


def trial(cmd: list[str], kind: str, pool: list[np.ndarray], n: int, per_client: int, chunk_ms: float,
          deadline: float) -> dict:
    proc, url = start_server(cmd)
    rec: dict = {"final": [], "partial": [], "errors": []}
    chunk = int(chunk_ms * 16)
    cpu0, t0 = time.process_time(), time.monotonic()
    try:
        async def run() -> None:
            await asyncio.gather(*[client(url, [pool[(i * per_client + k) % len(pool)] for k in range(per_client)],
                                          chunk, kind, rec) for i in range(n)])

        asyncio.run(run())
    finally:
        summary = stop_server(proc)
    wall = time.monotonic() - t0
    ok = not rec["errors"] and len(rec["final"]) == n * per_client and max(rec["final"]) < deadline
    out = {"kind": kind, "streams": n, "ok": ok, "final_p50": pct(rec["final"], 50), "final_p95": pct(rec["final"], 95),
           "final_max": max(rec["final"], default=float("nan")), "partial_p50": pct(rec["partial"], 50),
           "partial_p95": pct(rec["partial"], 95), "errors": len(rec["errors"]),
           "client_cpu": (time.process_time() - cpu0) / wall, "summary": summary}
    print(f"  {kind} {'no-batch ' if '--no-batch' in cmd else ''}N={n}: {'on time' if ok else 'LATE'}  final p50 "
          f"{out['final_p50']:.3f} p95 {out['final_p95']:.3f} max {out['final_max']:.3f} s; errors {out['errors']}; "
          f"server {summary}", flush=True)
    return out


def search(cmd, kind, pool, args) -> list[dict]:
    results = {}
    for n in args.streams:
        results[n] = trial(cmd, kind, pool, n, args.utterances, args.chunk_ms, args.deadline)
    if not args.no_search:
        ok = [n for n, r in results.items() if r["ok"]]
        lo = max(ok, default=0)
        hi = min((n for n, r in results.items() if not r["ok"] and n > lo), default=None)
        while hi is None and lo and lo < args.max_streams:
            n = min(lo * 2, args.max_streams)
            results[n] = r = trial(cmd, kind, pool, n, args.utterances, args.chunk_ms, args.deadline)
            lo, hi = (n, None) if r["ok"] else (lo, n)
            if r["ok"] and n == args.max_streams:
                break
        while hi is not None and hi - lo > max(1, lo // 10):
            n = (lo + hi) // 2
            results[n] = r = trial(cmd, kind, pool, n, args.utterances, args.chunk_ms, args.deadline)
            lo, hi = (n, hi) if r["ok"] else (lo, n)
    return [results[n] for n in sorted(results)]


def baseline_asr(model: Path, pool: list[np.ndarray], chunk_ms: float) -> float:
    """Audio seconds per wall second of Recognizer.infer, one utterance after the other, one thread."""
    import torch

    from asr.checkpoint import load_model
    from asr.decode.streaming import Recognizer

    torch.set_num_threads(1)
    m, family, tok, _ = load_model(model, "cpu", recognizer=True)
    rec = Recognizer(m, tok, chunk_ms=200.0, family=family)
    chunk = int(chunk_ms * 16)
    t = time.perf_counter()
    for x in pool:
        state = None
        for i in range(0, len(x), chunk):
            _, state = rec.infer(torch.from_numpy(x[i:i + chunk]), state)
        rec.infer(torch.zeros(0), state, final=True)
    return sum(map(len, pool)) / 16000 / (time.perf_counter() - t)


def baseline_kws(model: Path | None, pool: list[np.ndarray], chunk_ms: float, backend: str) -> float:
    import torch

    torch.set_num_threads(1)
    if backend == "onnx":
        from kws.detect import DEFAULT_MODEL
        from kws.onnx_detect import OnnxDetector

        det = OnnxDetector((model or DEFAULT_MODEL).with_suffix(".onnx"), batch_windows=1)
    else:
        from kws.detect import Detector

        det = Detector.from_checkpoint(model, batch_windows=1)
    chunk = int(chunk_ms * 16)
    t = time.perf_counter()
    for x in pool:
        det.reset()
        for i in range(0, len(x), chunk):
            det.process(x[i:i + chunk])
        det.flush()
    return sum(map(len, pool)) / 16000 / (time.perf_counter() - t)


def table(rows: list[dict]) -> None:
    print(f"\n{'engine':<16}{'streams':>8}{'on time':>9}{'final p50':>11}{'final p95':>11}{'final max':>11}"
          f"{'partial/event p50':>19}{'p95':>8}{'client CPU':>12}  server")
    for r in rows:
        s = r["summary"]
        batch = s.get("streams_per_encoder_call") or s.get("streams_per_classifier_call") or "-"
        print(f"{r['label']:<16}{r['streams']:>8}{'yes' if r['ok'] else 'no':>9}{r['final_p50']:>11.3f}"
              f"{r['final_p95']:>11.3f}{r['final_max']:>11.3f}{r['partial_p50']:>19.3f}{r['partial_p95']:>8.3f}"
              f"{r['client_cpu']:>11.0%}  streams/model call {batch}, model busy {s.get('model_busy_fraction', '-')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--asr-model", type=Path, default=None, help="a streaming CTC checkpoint (default: skip ASR)")
    ap.add_argument("--kws-model", type=Path, default=None, help="a crnn checkpoint (default: the shipped model)")
    ap.add_argument("--kws-backend", default="torch", choices=("torch", "onnx"), help="kws serve --backend (default torch)")
    ap.add_argument("--skip-kws", action="store_true")
    ap.add_argument("--streams", default="1,8", help="stream counts to run first (default 1,8)")
    ap.add_argument("--no-search", action="store_true", help="only --streams, no search for the maximum")
    ap.add_argument("--max-streams", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each utterance (default 5)")
    ap.add_argument("--utterances", type=int, default=3, help="utterances per client, one after the other (default 3)")
    ap.add_argument("--chunk-ms", type=float, default=100.0, help="audio per message (default 100)")
    ap.add_argument("--deadline", type=float, default=0.5, help="end-of-stream to final, seconds (default 0.5)")
    ap.add_argument("--threads", type=int, default=1, help="server model threads (default 1)")
    ap.add_argument("--no-batch", action="store_true", help="also search with asr serve --no-batch")
    ap.add_argument("--baseline-utterances", type=int, default=40, help="utterances in the baselines (default 40)")
    args = ap.parse_args()
    args.streams = sorted({int(s) for s in args.streams.split(",")})
    random.seed(0)
    rows, baselines = [], {}
    threads = ["--threads", str(args.threads)]
    if args.asr_model is not None:
        pool = asr_pool(args.seconds)
        variants = [("asr", [])] + ([("asr no-batch", ["--no-batch"])] if args.no_batch else [])
        for label, extra in variants:
            print(f"{label}: {args.asr_model}", flush=True)
            for r in search(["asr", "serve", "--model", str(args.asr_model), *threads, *extra], "asr", pool, args):
                rows.append({**r, "label": label})
        baselines["asr: Recognizer.infer one stream at a time"] = baseline_asr(
            args.asr_model, pool[:args.baseline_utterances], args.chunk_ms)
    if not args.skip_kws:
        pool = kws_pool(args.seconds)
        cmd = ["kws", "serve", "--backend", args.kws_backend, *threads]
        if args.kws_model is not None:
            cmd += ["--model", str(args.kws_model)]
        print(f"kws ({args.kws_backend}): {args.kws_model or 'the shipped model'}", flush=True)
        for r in search(cmd, "kws", pool, args):
            rows.append({**r, "label": f"kws {args.kws_backend}"})
        for backend in ("torch", "onnx"):
            baselines[f"kws {backend}: {'Detector' if backend == 'torch' else 'OnnxDetector'}.process one stream at a time"] = \
                baseline_kws(args.kws_model, pool[:args.baseline_utterances], args.chunk_ms, backend)
    table(rows)
    print(f"\none-at-a-time baselines (audio seconds per wall second, one thread, {args.chunk_ms:g} ms chunks):")
    for name, value in baselines.items():
        print(f"  {name:<55}{value:8.1f}")
    for label in dict.fromkeys(r["label"] for r in rows):
        best = max((r["streams"] for r in rows if r["label"] == label and r["ok"]), default=0)
        base = next((v for k, v in baselines.items() if k.startswith(label.replace(" no-batch", "") + ":")), None)
        ratio = f" = {best / base:.2f} x the one-at-a-time throughput" if base else ""
        print(f"max real-time streams on time, {label}: {best}{ratio}")


if __name__ == "__main__":
    main()
