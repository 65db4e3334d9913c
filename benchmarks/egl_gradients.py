"""Per-hypothesis squared gradient norms for EGL: the naive loop against the batched computation.

A CTC model (built from ``--config`` with random weights, or loaded from ``--model``) scores a
batch of ``--batch`` utterances x ``--nbest`` hypotheses. With ``--model`` the hypotheses are the
model's N-best lists; with a random model they are random label sequences of a realistic
length (``--chars-per-second``). Rows:

- all parameters: the naive loop (one forward and one backward per utterance-hypothesis pair,
  each utterance alone), :func:`asr.active.gradients.sq_grad_norms` (batched: trunk forward
  shared by the hypotheses, vmapped per-sample vector-Jacobian products, closed-form output
  layer), and the same with the trunk run one utterance at a time by plain autograd (the path
  taken for packed-RNN encoders);
- output layer only: the naive loop with autograd restricted to the output layer, and the
  closed form ``||(P - Gamma)^T H||^2 + ||sum_t (p_t - gamma_t)||^2`` batched.

Times are the best of ``--repeats`` after one warm-up run; "max rel. diff" compares each method's
norms with the naive loop's.

    python benchmarks/egl_gradients.py [--config recipes/synthetic/conf/ctc.yaml | --model CKPT]
        [--manifest data/synthetic/manifests/asr/test.jsonl] [--batch 8] [--nbest 4] [--threads 1]
"""

import argparse
import dataclasses
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def load(args):
    from asr.checkpoint import load_model
    from asr.config import load_config
    from asr.models import get_family
    from asr.train import TrainConfig

    if args.model:
        model, family, tokenizer, _ = load_model(args.model, args.device)
        return model, family.name, tokenizer.vocab_size, True
    cfg = load_config(TrainConfig, REPO / args.config)
    torch.manual_seed(0)
    return get_family(cfg.model.family).build(cfg.model, 31).to(args.device).eval(), cfg.model.family, 31, False


def batch_of(args, vocab: int) -> dict:
    from asr.data.dataset import AudioDataset, collate_batch
    from asr.data.manifest import read_manifest

    manifest = REPO / args.manifest
    if manifest.is_file():
        items = read_manifest(manifest)[: args.batch]
        batch = collate_batch([AudioDataset(items)[i] for i in range(len(items))])
    else:  # noise of 2-4 s when the synthetic corpus is not there
        g = torch.Generator().manual_seed(0)
        lengths = torch.linspace(2 * 16000, 4 * 16000, args.batch).long()
        wav = torch.zeros(args.batch, int(lengths.max()))
        for i, n in enumerate(lengths.tolist()):
            wav[i, :n] = 0.1 * torch.randn(n, generator=g)
        batch = {"ids": [str(i) for i in range(args.batch)], "wav": wav, "wav_lengths": lengths}
    return {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def hypotheses(args, model, family: str, batch: dict, vocab: int, trained: bool) -> list:
    if trained:
        from asr.active.strategies import decode_nbest

        return [[h.tokens for h in nb] for nb in decode_nbest(model, family, batch, args.nbest)]
    g = torch.Generator().manual_seed(1)
    out = []
    for n in batch["wav_lengths"].tolist():
        u = max(1, int(n / 16000 * args.chars_per_second))
        out.append([torch.randint(3, vocab, (u - k,), generator=g).tolist() for k in range(args.nbest)])
    return out


def timed(fn, repeats: int, device: str) -> tuple[float, torch.Tensor]:
    result = fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="recipes/synthetic/conf/ctc.yaml", help="model config (random weights)")
    p.add_argument("--model", default="", help="a trained checkpoint instead (its N-best lists are used)")
    p.add_argument("--manifest", default="data/synthetic/manifests/asr/test.jsonl", help="audio of the batch")
    p.add_argument("--batch", type=int, default=8, help="utterances (default 8)")
    p.add_argument("--nbest", type=int, default=4, help="hypotheses per utterance (default 4)")
    p.add_argument("--chars-per-second", type=float, default=14.0, help="random hypotheses' length (default 14)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs, best kept (default 3)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from asr.active.adapters import adapter_for, select_parameters
    from asr.active.gradients import naive_sq_grad_norms, sq_grad_norms

    model, family, vocab, trained = load(args)
    batch = batch_of(args, vocab)
    hyps = hypotheses(args, model, family, batch, vocab, trained)
    adapter = adapter_for(model, family)
    wav, wl = batch["wav"], batch["wav_lengths"]
    pairs = sum(len(h) for h in hyps)
    all_names = select_parameters(model)
    out_names = [n for n in all_names if adapter.output_layer and n.startswith(adapter.output_layer + ".")]
    n_all = sum(dict(model.named_parameters())[n].numel() for n in all_names)
    n_out = sum(dict(model.named_parameters())[n].numel() for n in out_names)
    loop_adapter = dataclasses.replace(adapter, rnn_trunk=True)

    rows = []
    for label, names, methods in (
        (f"all ({n_all / 1e6:.2f}M)", all_names, [
            (f"naive loop ({pairs} forward + backward)", lambda: naive_sq_grad_norms(model, adapter, wav, wl, hyps, all_names)),
            ("batched (vmap, shared forward, closed-form output)", lambda: sq_grad_norms(model, adapter, wav, wl, hyps, all_names)),
            ("shared forward, autograd loop (RNN path)", lambda: sq_grad_norms(model, loop_adapter, wav, wl, hyps, all_names)),
        ]),
        (f"output layer ({n_out / 1e3:.1f}k)", out_names, [
            ("naive loop, autograd on the output layer", lambda: naive_sq_grad_norms(model, adapter, wav, wl, hyps, out_names)),
            ("closed form, batched", lambda: sq_grad_norms(model, adapter, wav, wl, hyps, out_names)),
        ]),
    ):
        if not names:
            continue
        base_t, base = timed(methods[0][1], args.repeats, args.device)
        rows.append((label, methods[0][0], base_t, 1.0, "-"))
        for name, fn in methods[1:]:
            t, res = timed(fn, args.repeats, args.device)
            diff = float(((res - base).abs() / base.abs().clamp(min=1e-30)).max())
            rows.append((label, name, t, base_t / t, f"{diff:.1e}"))

    secs = float(wl.sum()) / 16000
    print(f"{family} model, {len(hyps)} utterances ({secs:.1f} s of audio) x {args.nbest} hypotheses, "
          f"{args.threads} thread(s), {args.device}, {'trained N-best' if trained else 'random weights and hypotheses'}")
    print()
    print("| parameters | method | seconds | speed-up | max rel. diff |")
    print("|---|---|---|---|---|")
    for label, name, t, ratio, diff in rows:
        print(f"| {label} | {name} | {t:.3f} | {ratio:.2f} | {diff} |")


if __name__ == "__main__":
    main()
