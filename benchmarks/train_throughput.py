"""Training throughput and peak memory of one training step, per model family.

Each family is built from its recipe config (``recipes/synthetic/conf/<family>.yaml`` by
default), fed the same fixed batch (``--batch`` utterances of ``--seconds`` seconds with
transcripts of ``--chars`` characters: speech rate of the synthetic corpus), and timed over
``--steps`` optimizer steps (forward, backward, AdamW) after a warm-up. Each family runs in
its own process so that peak memory is its own: CUDA ``max_memory_allocated`` on a GPU,
the process's peak resident set size (``ru_maxrss``) minus the size before the model was
built on CPU.

    python benchmarks/train_throughput.py [--device cpu] [--threads 2] [--batch 16] [--seconds 5]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("ctc", "transducer", "attention")


def measure(family: str, args) -> dict:
    import torch

    from asr.config import load_config
    from asr.models import get_family
    from asr.train import TrainConfig

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(TrainConfig, REPO / args.conf_dir / f"{family}.yaml")
    fam = get_family(cfg.model.family)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = fam.build(cfg.model, 31).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n = int(args.seconds * 16000)
    batch = {
        "wav": 0.1 * torch.randn(args.batch, n, device=device),
        "wav_lengths": torch.full((args.batch,), n, device=device),
        "tokens": torch.randint(3, 31, (args.batch, args.chars), device=device),
        "token_lengths": torch.full((args.batch,), args.chars, device=device),
    }

    def step():
        out = fam.loss(model, batch)
        (out.loss / out.weight).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    seconds = (time.perf_counter() - t0) / args.steps
    return {"family": family, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "step_s": seconds, "utt_per_s": args.batch / seconds,
            "audio_s_per_s": args.batch * args.seconds / seconds, "peak_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--batch", type=int, default=16, help="utterances per batch (default 16)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per utterance (default 5)")
    ap.add_argument("--chars", type=int, default=75, help="transcript characters per utterance (default 75)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    ap.add_argument("--conf-dir", default="recipes/synthetic/conf", help="folder of <family>.yaml configs")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), help="families to measure")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one family, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return
    rows = []
    for family in args.families:
        cmd = [sys.executable, __file__, "--one", family] + [a for a in sys.argv[1:] if a != "--families"
                                                              and a not in args.families]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"One training step, batch {args.batch} x {args.seconds:g} s ({args.chars} chars), {args.device}, "
          f"{args.threads} thread(s), configs from {args.conf_dir}")
    print("| family | params (M) | s/step | utt/s | audio s/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['params_m']:.2f} | {r['step_s']:.2f} | {r['utt_per_s']:.1f} | "
              f"{r['audio_s_per_s']:.0f} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
