"""Throughput of the active-learning selection job: utterances scored per second by each strategy,
and a 2-process ``torchrun`` job against a 1-process job on the same pool.

For each model (``--ctc``, ``--transducer``: checkpoints of the synthetic recipes; a missing one is
built from its recipe config with random weights and marked so) and each strategy, the job of
``asr select`` (:func:`asr.active.select.run_selection`, one thread, a fresh work folder, so
nothing is cached) scores the first ``--utterances`` of ``--pool``; the table gives utterances
and audio seconds scored per wall-clock second, and the time relative to least confidence.
``egl-output`` is EGL on the output layer (closed form; CTC only), ``egl-kcenter`` and
``egl-per-second`` score like ``egl`` (they differ in how they select).

The last table runs ``python -m asr select --strategy egl`` on the CTC model as one process and
under ``torchrun --nproc-per-node 2`` (each process one thread, gloo), checks that both select
the same utterances, and gives the wall-time ratio (start-up included).

    python benchmarks/select_throughput.py [--ctc CKPT] [--transducer CKPT]
        [--pool data/synthetic/manifests/asr/test.jsonl] [--utterances 64] [--torchrun-only | --skip-torchrun]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = [("random", {}), ("confidence", {}), ("entropy", {}), ("egl", {}), ("egl-output", {"params": ["output"]})]


def model_path(path: str, config: str, tmp: Path) -> tuple[str, str]:
    """``(checkpoint, note)``: the given checkpoint, or one built from ``config`` with random weights."""
    if path and Path(path).is_file():
        return path, "trained"
    from asr.checkpoint import FORMAT, save_checkpoint
    from asr.config import load_config, to_dict
    from asr.models import get_family
    from asr.text import CharTokenizer
    from asr.train_config import TrainConfig

    cfg = load_config(TrainConfig, REPO / config)
    tok = CharTokenizer.english()
    torch.manual_seed(0)
    model = get_family(cfg.model.family).build(cfg.model, tok.vocab_size)
    out = tmp / f"{Path(config).stem}.pt"
    save_checkpoint({"format": FORMAT, "family": cfg.model.family, "config": to_dict(cfg), "model": model.state_dict(),
                     "tokenizer": tok.state_dict(), "labels": None}, out)
    return str(out), "random weights"


def score_rate(model: str, pool: Path, strategy: str, extra: dict, tmp: Path) -> float:
    from asr.active.select import SelectOptions, run_selection

    out = tmp / f"{strategy}-{time.monotonic_ns()}.jsonl"
    t0 = time.perf_counter()
    run_selection(SelectOptions(pool=str(pool), budget="1", out=str(out), strategy="egl" if "egl" in strategy else strategy,
                                model=model, progress=False, device="cpu", **extra))
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ctc", default="exp/active_learning/seed-model/last.pt", help="CTC checkpoint")
    p.add_argument("--ctc-config", default="recipes/synthetic/conf/ctc.yaml", help="its config when it is missing")
    p.add_argument("--transducer", default="exp/synthetic/transducer/best.pt", help="RNN-T checkpoint")
    p.add_argument("--transducer-config", default="recipes/synthetic/conf/transducer.yaml", help="its config when it is missing")
    p.add_argument("--pool", default="data/synthetic/manifests/asr/test.jsonl", help="manifest to score")
    p.add_argument("--utterances", type=int, default=64, help="pool size (default 64)")
    p.add_argument("--skip-torchrun", action="store_true", help="only the per-strategy table")
    p.add_argument("--torchrun-only", action="store_true", help="only the 1- against 2-process table")
    args = p.parse_args()
    torch.set_num_threads(1)
    from asr.data.manifest import read_manifest, write_manifest

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        items = read_manifest(REPO / args.pool)[: args.utterances]
        pool = write_manifest(tmp / "pool.jsonl", items)
        audio = sum(float(it["duration"]) for it in items)
        print(f"pool: {len(items)} utterances, {audio:.1f} s of audio; one thread; torch {torch.__version__}\n")
        if not args.torchrun_only:
            print("| model | strategy | utt/s | audio s/s | time vs confidence |")
            print("|---|---|---|---|---|")
        ctc = None
        for label, path, config in (("CTC", args.ctc, args.ctc_config), ("RNN-T", args.transducer, args.transducer_config)):
            ckpt, note = model_path(path, config, tmp)
            ctc = ckpt if label == "CTC" else ctc
            if args.torchrun_only:
                continue
            times = {}
            for strategy, extra in STRATEGIES:
                if strategy == "egl-output" and label != "CTC":
                    continue
                times[strategy] = score_rate(ckpt, pool, strategy, extra, tmp)
            for strategy, t in times.items():
                print(f"| {label} ({note}) | {strategy} | {len(items) / t:.1f} | {audio / t:.1f} | "
                      f"{t / times['confidence']:.2f} |")
        if args.skip_torchrun:
            return
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        common = ["-m", "asr", "select", "--model", ctc, "--pool", str(pool), "--budget", "16", "--strategy", "egl",
                  "--device", "cpu", "--shard-size", "8"]
        walls = {}
        for n in (1, 2):
            launcher = [sys.executable] if n == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                         "--nproc-per-node", "2"]
            t0 = time.perf_counter()
            run = subprocess.run([*launcher, *common, "--out", str(tmp / f"sel{n}.jsonl")], env=env,
                                 capture_output=True, text=True)
            walls[n] = time.perf_counter() - t0
            if run.returncode != 0:
                sys.exit(f"asr select ({n} process{'es' if n > 1 else ''}) failed:\n{run.stderr[-2000:]}")
        same = (tmp / "sel1.jsonl").read_text() == (tmp / "sel2.jsonl").read_text()
        print("\n| processes | wall s | speed-up | same selection |")
        print("|---|---|---|---|")
        for n in (1, 2):
            print(f"| {n} | {walls[n]:.1f} | {walls[1] / walls[n]:.2f} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
