"""`kws detect` speed and memory on long files, one CPU thread.

Builds a 1-minute and a 1-hour recording of keyword clips in noise (real Speech Commands
clips from ../shared/data when present, else the synthetic corpus; clips cycled with noise
gaps), then for each:

* runs the command as a user would (`kws detect FILE --threads 1`, a fresh process) and
  reports its wall time and peak resident memory (from wait4's rusage);
* times the detection alone in this process (file reading, resampling, features included;
  Python start-up and imports excluded) as x real time.

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
from kws.detect import DEFAULT_MODEL, Detector, detect_file, load_detector_model  # noqa: E402
from kws.stream import build_stream  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def clips() -> tuple[list[dict], str]:
    real = Path(os.environ.get("ASR_SHARED_DATA", REPO.parent / "shared" / "data")) / "speech-commands-real"
    if real.is_dir():
        items = [{"id": str(p), "audio": str(p), "label": p.parent.name} for p in sorted(real.glob("*/*.wav"))]
        return items, f"{len(items)} real Speech Commands clips"
    man = REPO / "data" / "synthetic" / "manifests" / "kws" / "test.jsonl"
    return read_manifest(man), "synthetic keyword clips"


def run_command(path: Path, model: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, events) of `kws detect` in a fresh process."""
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "kws", "detect", str(path), "--model", str(model), "--threads", "1",
                          "--format", "jsonl"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    if status != 0:
        raise RuntimeError(f"kws detect failed on {path} (status {status})")
    return wall, usage.ru_maxrss / 1024, len(out.splitlines())


def in_process(path: Path, model, labels) -> tuple[float, float]:
    det = Detector(model, labels)
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
    model, labels = load_detector_model(args.model)
    print(f"kws detect, one CPU thread; audio: {source} joined with noise gaps; model {args.model.name}")
    print(f"{'file':<8} {'audio (s)':>10} {'detect (s)':>11} {'x real time':>12} {'command (s)':>12} {'peak RSS (MiB)':>15} {'events':>7}")
    rows = {}
    for name, path in files.items():
        secs, audio = in_process(path, model, labels)
        wall, rss, events = run_command(path, args.model)
        rows[name] = dict(audio=audio, detect=secs, xrt=audio / secs, command=wall, rss=rss, events=events)
        print(f"{name:<8} {audio:>10.0f} {secs:>11.2f} {audio / secs:>12.0f} {wall:>12.2f} {rss:>15.0f} {events:>7}")
    hop = Detector(model, labels).hop * Detector(model, labels).conv_seconds
    names = list(rows)
    secs, audio = naive(files[names[1]], model, labels, hop)
    ours = rows[names[1]]["xrt"]
    print(f"\npeer, every window cut out and run through the whole model ({names[1]} file, same hop {hop:.2f} s, file "
          f"already in memory): {audio / secs:.0f}x real time; ours {ours:.0f}x = {ours / (audio / secs):.1f}x faster")
    print(f"peak memory {names[1]} / {names[0]}: {rows[names[1]]['rss'] / rows[names[0]]['rss']:.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
