"""`kws detect` speed and memory on long files, one CPU thread.

Builds a 1-minute and a 1-hour recording of keyword clips in noise (real Speech Commands
clips from ../shared/data when present, else the synthetic corpus; clips cycled with noise
gaps), then for each:

* runs the command as a user would (`kws detect FILE --threads 1 --backend B`, a fresh
  process) and reports its wall time and peak resident memory (from wait4's rusage);
* times the detection alone in this process (file reading, resampling, features included;
  Python start-up and imports excluded) as x real time;

for each backend: PyTorch (`--backend torch`), ONNX Runtime in float32 (`--backend onnx`,
the default) and int8 (`--int8`), side by side in one run.

The peer is the plain sliding-window way: cut every window of the long file as a clip and
run the whole model (features, convolution, GRUs) on a batch of clips, with the same hop.

    python benchmarks/kws_detect.py [--model M] [--hours 1]
"""

import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from asr.audio import read_audio  # noqa: E402
from asr.data.manifest import read_manifest  # noqa: E402
from kws.detect import DEFAULT_MODEL, Detector, detect_file, load_detector  # noqa: E402
from kws.stream import build_stream  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def clips() -> tuple[list[dict], str]:
    real = Path(os.environ.get("ASR_SHARED_DATA", REPO.parent / "shared" / "data")) / "speech-commands-real"
    if real.is_dir():
        items = [{"id": str(p), "audio": str(p), "label": p.parent.name} for p in sorted(real.glob("*/*.wav"))]
        return items, f"{len(items)} real Speech Commands clips"
    man = REPO / "data" / "synthetic" / "manifests" / "kws" / "test.jsonl"
    return read_manifest(man), "synthetic keyword clips"


BACKENDS = {"torch": ["--backend", "torch"], "onnx": ["--backend", "onnx"], "onnx int8": ["--backend", "onnx", "--int8"]}


# `python -m kws` that reports its own peak resident memory (VmHWM of its address space) on exit: the
# rusage of a child started from this process would also count this process's memory copied at fork
RUNNER = """
import atexit, re, sys
def peak():
    status = open("/proc/self/status").read()
    sys.stderr.write("VmHWM_KiB " + re.search(r"VmHWM:\\s+(\\d+)", status).group(1) + "\\n")
atexit.register(peak)
from kws.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_command(path: Path, model: Path, flags: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, events) of `kws detect` in a fresh process."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", RUNNER, "detect", str(path), "--model", str(model), "--threads", "1",
                        "--format", "jsonl", *flags], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"kws detect failed on {path} (status {p.returncode}): {p.stderr[-2000:]}")
    rss = int(p.stderr.rsplit("VmHWM_KiB ", 1)[1].split()[0]) / 1024
    return wall, rss, len(p.stdout.splitlines())


def detector(backend: str, model_path: Path, model, labels, cfg):
    if backend == "torch":
        return Detector(model, labels, config=cfg)
    from kws.onnx_detect import OnnxDetector

    onnx = model_path.with_suffix(".int8.onnx" if backend.endswith("int8") else ".onnx")
    return OnnxDetector(onnx, config=cfg, threads=1)


def in_process(path: Path, det) -> tuple[float, float]:
    t = time.perf_counter()
    for _ in detect_file(det, path):
        pass
    return time.perf_counter() - t, det.seconds_processed


@torch.no_grad()
def naive(path: Path, model, labels, hop_s: float) -> tuple[float, float]:
    """Every window as a separate clip through the whole model, batched 256 windows at a time."""
    wav, sr = read_audio(path, 16000)
    t = time.perf_counter()
    hop = int(round(hop_s * sr))
    starts = torch.arange(0, len(wav) - sr + 1, hop)
    for i in range(0, len(starts), 256):
        idx = starts[i:i + 256].unsqueeze(1) + torch.arange(sr)
        model(wav[idx], torch.full((idx.shape[0],), sr))
    return time.perf_counter() - t, len(wav) / sr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="crnn checkpoint (default: the shipped model)")
    ap.add_argument("--hours", type=float, default=1.0, help="length of the long file (default 1)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/kws_bench"), help="where the test files go")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    items, source = clips()
    files = {}
    for name, minutes in (("1min", 1.0), (f"{args.hours:g}h", 60.0 * args.hours)):
        path = args.work / f"stream_{name}.wav"
        if not path.is_file():
            build_stream(items, path, minutes=minutes, seed=0)
        files[name] = path
    model, labels, cfg = load_detector(args.model)
    print(f"kws detect, one CPU thread; audio: {source} joined with noise gaps; model {args.model.name}")
    print(f"{'file':<6} {'backend':<10} {'audio (s)':>9} {'detect (s)':>10} {'x real time':>11} {'command (s)':>11} "
          f"{'peak RSS (MiB)':>14} {'events':>6}")
    rows = {}
    for name, path in files.items():
        for backend, flags in BACKENDS.items():
            secs, audio = in_process(path, detector(backend, args.model, model, labels, cfg))
            wall, rss, events = run_command(path, args.model, flags)
            rows[f"{name} {backend}"] = dict(audio=audio, detect=secs, xrt=audio / secs, command=wall, rss=rss, events=events)
            print(f"{name:<6} {backend:<10} {audio:>9.0f} {secs:>10.2f} {audio / secs:>11.0f} {wall:>11.2f} {rss:>14.0f} {events:>6}")
    names = list(files)
    long = {b: rows[f"{names[1]} {b}"] for b in BACKENDS}
    for b in ("onnx", "onnx int8"):
        print(f"{names[1]}, {b} against torch: detection {long[b]['xrt'] / long['torch']['xrt']:.1f}x faster, whole "
              f"command {long['torch']['command'] / long[b]['command']:.1f}x faster, peak RSS "
              f"{long[b]['rss'] / long['torch']['rss']:.2f}x")
    hop = Detector(model, labels, config=cfg).hop * Detector(model, labels, config=cfg).conv_seconds
    secs, audio = naive(files[names[1]], model, labels, hop)
    ours = long["torch"]["xrt"]
    print(f"\npeer, every window cut out and run through the whole model ({names[1]} file, same hop {hop:.2f} s, file "
          f"already in memory): {audio / secs:.0f}x real time; ours (torch) {ours:.0f}x = {ours / (audio / secs):.1f}x faster")
    for b in BACKENDS:
        print(f"peak memory {names[1]} / {names[0]} ({b}): {long[b]['rss'] / rows[f'{names[0]} {b}']['rss']:.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
