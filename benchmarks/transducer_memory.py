"""RNN-T training step: peak memory and time with the joint computed whole or in chunks.

One realistic batch (default 16 utterances of 4-12 s, 5 BPE tokens per second, vocabulary
256, encoder subsampling 4, joint_dim 256), one forward + backward of
:func:`asr.models.transducer.transducer_loss` for each ``joint_chunk`` setting.

Each setting runs in its own subprocess so the measurements do not share an allocator:
on CUDA the peak is ``torch.cuda.max_memory_allocated`` during the step; on CPU it is the
growth of the process's peak resident set (``getrusage`` max RSS) over its size just
before the step, after a warm-up step on a short batch has loaded the kernels. Time is the best of ``--repeats`` steps after the measured one.
``full joint`` is the size of one float32 ``(B, T, U+1, V)`` tensor over the whole padded
batch, for scale.

    python benchmarks/transducer_memory.py [--device cuda] [--chunks 0 4 1] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from asr.models.config import EncoderConfig, ModelConfig, SpecAugmentConfig, TransducerConfig  # noqa: E402
from asr.models.transducer import TransducerModel, transducer_loss  # noqa: E402

SR = 16000


def make_batch(n: int, min_s: float, max_s: float, tokens_per_s: float, vocab: int, seed: int = 0) -> dict:
    """``n`` noise utterances with durations spread evenly over ``[min_s, max_s]`` and random targets."""
    g = torch.Generator().manual_seed(seed)
    durations = torch.linspace(min_s, max_s, n)[torch.randperm(n, generator=g)]
    wav_lengths = (durations * SR).long()
    token_lengths = (durations * tokens_per_s).round().long()
    wav = torch.zeros(n, int(wav_lengths.max()))
    tokens = torch.zeros(n, int(token_lengths.max()), dtype=torch.long)
    for i in range(n):
        wav[i, : wav_lengths[i]] = 0.1 * torch.randn(int(wav_lengths[i]), generator=g)
        tokens[i, : token_lengths[i]] = torch.randint(3, vocab, (int(token_lengths[i]),), generator=g)
    return {"wav": wav, "wav_lengths": wav_lengths, "tokens": tokens, "token_lengths": token_lengths}


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    device = torch.device(args.device)
    config = ModelConfig(
        family="transducer",
        specaugment=SpecAugmentConfig(enabled=False),
        encoder=EncoderConfig(kind=args.encoder, dim=args.encoder_dim, layers=args.layers, subsampling=4),
        transducer=TransducerConfig(pred_dim=args.joint_dim, joint_dim=args.joint_dim, joint_chunk=args.chunk),
    )
    model = TransducerModel(config, args.vocab).to(device).train()
    batch = make_batch(args.batch, args.min_s, args.max_s, args.tokens_per_s, args.vocab)
    batch = {k: v.to(device) for k, v in batch.items()}

    def step() -> float:
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = transducer_loss(model, batch)
        (out.loss / out.weight).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    # warm up on a short batch (loads kernels and libraries, which would count as resident memory)
    real = batch
    batch = {k: v.to(device) for k, v in make_batch(2, 1.0, 2.0, args.tokens_per_s, args.vocab).items()}
    step()
    batch = real
    if device.type == "cuda":
        step()  # and once on the real batch (cuDNN plans); then measure a clean step
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        first = step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = current_rss()
        first = step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = [step() for _ in range(args.repeats)] or [first]
    with torch.no_grad():
        enc, lengths = model.encode(batch["wav"], batch["wav_lengths"])
    T, U = int(lengths.max()), int(batch["token_lengths"].max())
    return {"chunk": args.chunk, "peak": peak, "time": min(times), "T": T, "U": U,
            "full_joint": args.batch * T * (U + 1) * args.vocab * 4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 4, 1], help="joint_chunk settings (0 = whole batch)")
    ap.add_argument("--batch", type=int, default=16, help="utterances (default 16)")
    ap.add_argument("--min-s", type=float, default=4.0, help="shortest utterance, seconds")
    ap.add_argument("--max-s", type=float, default=12.0, help="longest utterance, seconds")
    ap.add_argument("--tokens-per-s", type=float, default=5.0, help="target tokens per second of audio")
    ap.add_argument("--vocab", type=int, default=256, help="vocabulary size, blank included")
    ap.add_argument("--joint-dim", type=int, default=256, help="joint and predictor size")
    ap.add_argument("--encoder", default="rnn", help="rnn | conformer")
    ap.add_argument("--encoder-dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="timed steps after the measured one (best kept)")
    ap.add_argument("--chunk", type=int, help=argparse.SUPPRESS)  # worker mode
    args = ap.parse_args()

    if args.chunk is not None:
        print(json.dumps(worker(args)))
        return

    rows = []
    for chunk in args.chunks:
        cmd = [sys.executable, __file__, "--chunk", str(chunk)]
        for key, value in vars(args).items():
            if key not in ("chunk", "chunks"):
                cmd += [f"--{key.replace('_', '-')}", str(value)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))

    r0 = rows[0]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"RNN-T training step (forward + backward) on {name}: {args.batch} utterances of "
          f"{args.min_s:g}-{args.max_s:g} s, T'max={r0['T']}, Umax={r0['U']}, V={args.vocab}, "
          f"joint_dim={args.joint_dim}, {args.encoder} encoder {args.layers}x{args.encoder_dim}")
    print(f"full padded joint (float32): {r0['full_joint'] / 2**20:.0f} MiB")
    print(f"{'joint_chunk':>11}  {'peak MiB':>9}  {'vs 0':>6}  {'step s':>7}  {'vs 0':>6}")
    for r in rows:
        print(f"{r['chunk']:>11}  {r['peak'] / 2**20:>9.0f}  {r['peak'] / r0['peak']:>6.2f}  "
              f"{r['time']:>7.3f}  {r['time'] / r0['time']:>6.2f}")


if __name__ == "__main__":
    main()
