"""Per-hypothesis squared gradient norms ``||grad_theta L(x_b, y_bk)||^2``, batched.

The naive way (:func:`naive_sq_grad_norms`, kept as the reference) runs one forward and one
backward pass per (utterance, hypothesis) pair. :func:`sq_grad_norms` gets the same numbers
from the split of the model into a trunk (front-end + encoder: audio only) and a head (labels
too), see :mod:`asr.active.adapters`:

1. One batched pass (no vmap): encode the ``B`` utterances, repeat each encoder output once
   per hypothesis (``R = sum_b N_b`` rows), run the head and the family's own loss on the rows
   and take, by autograd, the gradient of the summed loss with respect to the loss inputs
   (``C``, e.g. ``softmax - gamma`` for CTC) and to the repeated encoder output (``E``). Rows do
   not interact, so row ``r`` of ``C`` and ``E`` is exactly that pair's gradient.
2. Output layer, closed form: for a final linear layer ``z_t = W h_t + b`` whose output the loss
   reads (the CTC head), ``grad_W = sum_t c_t h_t^T`` and ``grad_b = sum_t c_t``, so
   ``||grad_W||^2 = ||C^T H||_F^2`` and ``||grad_b||^2 = ||sum_t c_t||^2``, batched over rows.
3. Other head parameters (RNN-T predictor and joiner, attention decoder): per-row
   vector-Jacobian products ``C_r^T d head / d theta``, vectorised over rows with
   ``torch.func.vmap`` of ``torch.func.vjp`` (the loss itself never runs under vmap, so
   ``ctc_loss`` / ``rnnt_loss`` need no batching rule).
4. Trunk parameters: per utterance, one forward of the trunk and one ``vjp`` whose backward is
   vmapped over that utterance's ``N`` cotangents ``E_bk``; the utterances are vmapped too
   (``vmap`` of ``vjp`` of ``vmap``), in chunks that bound the memory of the materialised
   per-sample gradients. A trunk with packed recurrent layers (which vmap cannot batch) runs
   one utterance at a time, trimmed to its length, still sharing its forward between the
   hypotheses.

The trunk forward is thus shared by the ``N`` hypotheses of an utterance and every step is
batched; the results equal the naive loop to float rounding (tested to 1e-4 relative).

Example:
    >>> from asr.models.config import ModelConfig, EncoderConfig
    >>> from asr.models import get_family
    >>> from asr.active.adapters import adapter_for
    >>> _ = torch.manual_seed(0)
    >>> cfg = ModelConfig(encoder=EncoderConfig(kind="conformer", dim=8, layers=1, heads=2))
    >>> model = get_family("ctc").build(cfg, 6).eval()
    >>> wav, wl = torch.randn(2, 6000), torch.tensor([6000, 4000])
    >>> hyps = [[[3, 4], [3]], [[5]]]
    >>> fast = sq_grad_norms(model, adapter_for(model, "ctc"), wav, wl, hyps)
    >>> slow = naive_sq_grad_norms(model, adapter_for(model, "ctc"), wav, wl, hyps)
    >>> fast.shape, bool(torch.allclose(fast, slow, rtol=1e-4)), float(fast[1, 1])
    (torch.Size([2, 2]), True, 0.0)
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, vjp, vmap

from asr.active.adapters import EGLAdapter, select_parameters

Hyps = Sequence[Sequence[Sequence[int]]]  # per utterance, its hypotheses' token ids


class _Bound(nn.Module):
    """``forward(*args) = fn(model, *args)``: lets ``functional_call`` run any method of ``model``."""

    def __init__(self, model: nn.Module, fn: Callable):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *args):
        return self.fn(self.model, *args)


def _rows(hyps: Hyps, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten N-best lists into rows: utterance index ``(R,)``, hypothesis slot ``(R,)``,
    padded tokens ``(R, U)`` and token counts ``(R,)``."""
    pairs = [(b, k, list(h)) for b, hs in enumerate(hyps) for k, h in enumerate(hs)]
    U = max((len(h) for _, _, h in pairs), default=0)
    tokens = torch.zeros(len(pairs), U, dtype=torch.long)
    for r, (_, _, h) in enumerate(pairs):
        tokens[r, : len(h)] = torch.tensor(h, dtype=torch.long)
    long = dict(dtype=torch.long, device=device)
    utt = torch.tensor([b for b, _, _ in pairs], **long)
    slot = torch.tensor([k for _, k, _ in pairs], **long)
    lengths = torch.tensor([len(h) for _, _, h in pairs], **long)
    return utt, slot, tokens.to(device), lengths


def _sq(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(g.float().pow(2).sum() for g in grads.values())


def _chunks(n: int, size: int):
    for start in range(0, n, max(1, size)):
        yield slice(start, min(n, start + max(1, size)))


def sq_grad_norms(
    model: nn.Module, adapter: EGLAdapter, wav: torch.Tensor, wav_lengths: torch.Tensor, hyps: Hyps,
    params: Sequence[str] | None = None, closed_form: bool = True, max_chunk_bytes: int = 256 << 20,
) -> torch.Tensor:
    """Squared gradient norms of every (utterance, hypothesis) pair, batched.

    Args:
        model: a model of ``adapter``'s family, in eval mode (no dropout, no SpecAugment).
        wav: ``(B, N)`` padded waveforms with ``wav_lengths (B,)``.
        hyps: per utterance a list of hypotheses (token-id lists), at most ``K`` each.
        params: names of the parameters to differentiate (default: every trainable one; see
            :func:`asr.active.adapters.select_parameters`).
        closed_form: use the closed form for the output layer (else vmapped vjp, for tests).
        max_chunk_bytes: memory for materialised per-sample gradients per vmapped chunk.

    Returns:
        ``(B, K)`` float64; 0 where an utterance has fewer than ``K`` hypotheses.
    """
    device = wav.device
    B, K = len(hyps), max((len(h) for h in hyps), default=0)
    out = torch.zeros(B, K, dtype=torch.float64)
    if B == 0 or K == 0:
        return out
    names = list(params) if params is not None else select_parameters(model)
    all_params = {n: p.detach() for n, p in model.named_parameters()}
    trunk = [n for n in names if n.startswith(adapter.trunk_prefixes)]
    head = [n for n in names if n not in trunk]
    utt, slot, tokens, tok_len = _rows(hyps, device)

    # 1. batched loss-input and encoder-output cotangents
    with torch.no_grad():
        enc, enc_len = adapter.encode(model, wav, wav_lengths)
    enc_rep = enc.index_select(0, utt).detach().requires_grad_(True)
    len_rep = enc_len.index_select(0, utt)
    with torch.enable_grad():
        ins = adapter.head(model, enc_rep, len_rep, tokens, tok_len)
        losses = adapter.losses(ins, len_rep, tokens, tok_len)
        grads = torch.autograd.grad(losses.sum(), [*ins, enc_rep])
    C, E = tuple(g.detach() for g in grads[:-1]), grads[-1].detach()
    row_sq = torch.zeros(len(utt), dtype=torch.float64, device=device)

    # 2. output layer in closed form
    if closed_form and adapter.output_layer:
        w, b = f"{adapter.output_layer}.weight", f"{adapter.output_layer}.bias"
        g, h = C[0].float(), enc_rep.detach().float()
        if w in head:
            row_sq += torch.einsum("rtv,rtd->rvd", g, h).pow(2).sum((1, 2)).double()
        if b in head:
            row_sq += g.sum(1).pow(2).sum(1).double()
        head = [n for n in head if n not in (w, b)]

    # 3. other head parameters: vmap over rows of vjp(head)
    if head:
        row_sq += _head_sq(model, adapter, all_params, head, enc_rep.detach(), len_rep, tokens, tok_len, C,
                           max_chunk_bytes).to(device)

    out[utt.cpu(), slot.cpu()] = row_sq.cpu()
    # 4. trunk parameters: vmap over utterances of vjp(trunk), vmapped over hypotheses
    if trunk:
        cot = torch.zeros(B, K, *E.shape[1:], dtype=E.dtype, device=device)
        cot[utt, slot] = E
        out += _trunk_sq(model, adapter, all_params, trunk, wav, wav_lengths, enc_len, cot, max_chunk_bytes).cpu()
    return out


def _numel(all_params: dict, names: Sequence[str]) -> int:
    return sum(all_params[n].numel() for n in names)


def _head_sq(model, adapter, all_params, names, enc, enc_len, tokens, tok_len, C, max_chunk_bytes) -> torch.Tensor:
    bound = _Bound(model, adapter.head)
    const = {f"model.{n}": v for n, v in all_params.items() if n not in names}
    primal = {f"model.{n}": all_params[n] for n in names}

    def row(e, l, y, yl, *c):
        def f(p):
            ins = functional_call(bound, {**const, **p}, (e[None], l[None], y[None], yl[None]))
            return tuple(x[0] for x in ins)

        _, vjp_fn = vjp(f, primal)
        return _sq(vjp_fn(tuple(c))[0])

    size = max(1, max_chunk_bytes // max(1, 4 * _numel(all_params, names)))
    parts = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        for s in _chunks(enc.shape[0], size):
            parts.append(vmap(row)(enc[s], enc_len[s], tokens[s], tok_len[s], *(c[s] for c in C)))
    return torch.cat(parts).double()


def _trunk_sq(model, adapter, all_params, names, wav, wav_len, enc_len, cot, max_chunk_bytes) -> torch.Tensor:
    """``cot (B, K, T, D)``: per utterance and hypothesis, the gradient on the encoder output."""
    bound = _Bound(model, adapter.encode)
    const = {f"model.{n}": v for n, v in all_params.items() if n not in names}
    primal = {f"model.{n}": all_params[n] for n in names}

    def trunk_vjp(w, l):
        return vjp(lambda p: functional_call(bound, {**const, **p}, (w[None], l[None]))[0][0], primal)[1]

    B, K = cot.shape[:2]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        if adapter.rnn_trunk:  # packed RNNs run neither under vmap nor torch.func.vjp: plain autograd
            return _trunk_sq_loop(model, adapter, names, wav, wav_len, enc_len, cot)

        def utt(w, l, c):
            vjp_fn = trunk_vjp(w, l)
            return vmap(lambda ck: _sq(vjp_fn(ck)[0]))(c)

        size = max(1, max_chunk_bytes // max(1, 4 * K * _numel(all_params, names)))
        parts = [vmap(utt)(wav[s], wav_len[s], cot[s]) for s in _chunks(B, size)]
    return torch.cat(parts).double()


def _trunk_sq_loop(model, adapter, names, wav, wav_len, enc_len, cot) -> torch.Tensor:
    """One utterance at a time (trimmed to its length): one forward, one backward per hypothesis."""
    named = dict(model.named_parameters())
    tensors = [named[n] for n in names]
    B, K = cot.shape[:2]
    out = torch.zeros(B, K, dtype=torch.float64)
    for b in range(B):
        n, t = int(wav_len[b]), int(enc_len[b])
        live = [k for k in range(K) if bool(cot[b, k].any())]
        if not live:
            continue
        with torch.enable_grad():
            enc, _ = adapter.encode(model, wav[b : b + 1, :n], wav_len[b : b + 1])
            for i, k in enumerate(live):
                grads = torch.autograd.grad(enc[0], tensors, grad_outputs=cot[b, k, :t],
                                            retain_graph=i + 1 < len(live), allow_unused=True)
                out[b, k] = float(sum(g.double().pow(2).sum() for g in grads if g is not None))
    return out


def naive_sq_grad_norms(model: nn.Module, adapter: EGLAdapter, wav: torch.Tensor, wav_lengths: torch.Tensor,
                        hyps: Hyps, params: Sequence[str] | None = None) -> torch.Tensor:
    """The reference: one forward and one backward pass per (utterance, hypothesis), each
    utterance alone (trimmed to its length). Same arguments and result as :func:`sq_grad_norms`."""
    names = list(params) if params is not None else select_parameters(model)
    named = dict(model.named_parameters())
    tensors = [named[n] for n in names]
    K = max((len(h) for h in hyps), default=0)
    out = torch.zeros(len(hyps), K, dtype=torch.float64)
    for b, hs in enumerate(hyps):
        n = int(wav_lengths[b])
        for k, h in enumerate(hs):
            tokens = torch.tensor([list(h)], dtype=torch.long, device=wav.device).reshape(1, len(h))
            with torch.enable_grad():
                loss = adapter.row_losses(model, wav[b : b + 1, :n], wav_lengths[b : b + 1], tokens,
                                          torch.tensor([len(h)], device=wav.device)).sum()
                grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            out[b, k] = float(sum(g.double().pow(2).sum() for g in grads if g is not None))
    return out
