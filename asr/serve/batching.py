"""Several streams' encoder steps as one batch: stack their states, run ``encoder.infer`` once, split.

A streaming encoder's state (:meth:`asr.models.encoders.RNNEncoder.infer`,
:meth:`asr.models.conformer.ConformerEncoder.infer`) is a tree of dicts, lists and tensors. The
tensors of one stream have batch size 1 along their batch dimension (dimension 1 for PyTorch RNN
hidden states ``(layers, B, H)``, 0 for everything else), so the states of streams at the same
point of their chunking (:func:`state_signature`) concatenate into the state of a batch
(:func:`stack_states`) and come apart again (:func:`split_state`). :func:`infer_batch` runs
the encoder on such a batch; for a causal Conformer it lets the streams be at different
positions (each adds its own position encodings) and have attention caches of different lengths
(left-padded and masked), which the encoder's own ``infer`` (one offset for the batch) cannot.
The outputs equal running the streams one by one (tested).

Example:
    >>> import torch
    >>> from asr.models.config import EncoderConfig
    >>> from asr.models.encoders import build_encoder
    >>> enc = build_encoder(EncoderConfig(dim=16, layers=1, bidirectional=False), input_dim=20).eval()
    >>> x = torch.randn(2, 16, 20)
    >>> _, a = enc.infer(x[:1])
    >>> _, b = enc.infer(x[1:])
    >>> state_signature(a) == state_signature(b)
    True
    >>> out, (a2, b2) = infer_batch(enc, torch.randn(2, 16, 20), [a, b])
    >>> out.shape, a2["hidden"].shape
    (torch.Size([2, 4, 16]), torch.Size([1, 1, 16]))
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["state_signature", "stack_states", "split_state", "infer_batch"]

# ---------------------------------------------------------------------------
BATCH_DIM_1 = ("hidden",)  # PyTorch RNN hidden states are (layers, B, H); every other state tensor is batch-first
PER_STREAM = ("offset",)  # numbers that may differ between stacked streams (the Conformer's position): kept as a list
VARIABLE_LENGTH = ("k", "v")  # attention caches (B, L, D) whose L may differ: stacked left-padded with zeros


def _dim(key: str, dim: int) -> int:
    return 1 if key in BATCH_DIM_1 else dim


def state_signature(state: Any, dim: int = 0, _free: tuple[int, ...] = ()) -> Any:
    """A hashable summary of an encoder state: its structure, every tensor's shape apart from the
    batch dimension (and the length of the attention caches), its dtype, and every other value
    but the per-stream ones (``offset``). States with equal signatures can be stacked."""
    import torch

    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        shape = list(state.shape)
        for d in (dim, *_free):
            if d < len(shape):
                shape[d] = -1
        return ("T", tuple(shape), str(state.dtype), str(state.device))
    if isinstance(state, dict):
        return ("D", tuple((k, "per-stream" if k in PER_STREAM else
                            state_signature(v, _dim(k, dim), (1,) if k in VARIABLE_LENGTH else ()))
                           for k, v in sorted(state.items())))
    if isinstance(state, (list, tuple)):
        return (type(state).__name__, tuple(state_signature(v, dim) for v in state))
    return ("V", state)


def stack_states(states: Sequence[Any], dim: int = 0, _pad: bool = False) -> Any:
    """States of the same signature, one stream each -> one state of ``len(states)`` streams:
    tensors concatenated along their batch dimension (attention caches of different lengths
    left-padded with zeros to the longest), ``offset`` values as a list."""
    import torch
    import torch.nn.functional as F

    first = states[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        if _pad:
            n = max(s.shape[1] for s in states)
            states = [F.pad(s, (0, 0, n - s.shape[1], 0)) if s.shape[1] < n else s for s in states]
        return torch.cat(list(states), dim=dim)
    if isinstance(first, dict):
        return {k: [s[k] for s in states] if k in PER_STREAM else
                stack_states([s[k] for s in states], _dim(k, dim), k in VARIABLE_LENGTH) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(stack_states([s[i] for s in states], dim) for i in range(len(first)))
    return first


def split_state(state: Any, n: int, dim: int = 0) -> list[Any]:
    """The inverse of :func:`stack_states`: one state of ``n`` streams -> ``n`` states of one
    (attention caches keep their padding: :func:`infer_batch` trims them)."""
    import torch

    if state is None:
        return [None] * n
    if isinstance(state, torch.Tensor):
        return [t.contiguous() for t in state.split(1, dim=dim)]
    if isinstance(state, dict):
        parts = {k: (list(v) if isinstance(v, list) else [v] * n) if k in PER_STREAM else split_state(v, n, _dim(k, dim))
                 for k, v in state.items()}
        return [{k: parts[k][i] for k in state} for i in range(n)]
    if isinstance(state, (list, tuple)):
        parts = [split_state(v, n, dim) for v in state]
        return [type(state)(p[i] for p in parts) for i in range(n)]
    return [state] * n


def infer_batch(encoder, feats, states: Sequence[Any], final: bool = False) -> tuple[Any, list[Any]]:
    """``encoder.infer`` for several streams whose states have one signature (:func:`state_signature`):
    features ``(B, t, F)`` -> outputs ``(B, t', D)`` and the ``B`` new states. The states are stacked
    along the batch dimension and split back; a causal Conformer's streams may be at different
    positions and have attention caches of different lengths (:func:`_conformer_infer`)."""
    from asr.models.conformer import ConformerEncoder

    if isinstance(encoder, ConformerEncoder) and states[0] is not None:
        return _conformer_infer(encoder, feats, states, final)
    out, state = encoder.infer(feats, stack_states(states), final=final)
    return out, split_state(state, len(states))


def _conformer_infer(encoder, feats, states: Sequence[dict], final: bool) -> tuple[Any, list[dict]]:
    """:meth:`asr.models.conformer.ConformerEncoder.infer` for streams at their own positions: each
    stream adds its own position encodings, and when their attention caches differ in length (the
    first ``left_chunks`` chunks of a stream) they are left-padded and the padding masked."""
    import torch

    from asr.errors import UsageError

    c = encoder.config
    size = max(c.chunk_size, 1)
    max_cache = c.left_chunks * size if c.left_chunks >= 0 else None
    offsets = torch.tensor([s["offset"] for s in states], device=feats.device)
    state = stack_states(states)
    x, sub = encoder.subsampling_layer.infer(feats, state["subsampling"])
    if state["pending"] is not None:
        x = torch.cat([state["pending"], x], dim=1)
    ready = x.shape[1] if final else x.shape[1] // size * size
    pos = encoder.pos
    layers, outs = list(state["layers"]), []
    for start in range(0, ready, size):
        h = x[:, start:start + size]
        t = h.shape[1]
        idx = offsets.unsqueeze(1) + torch.arange(t, device=x.device)  # (B, t): each stream's positions
        if int(idx.max()) >= pos.pe.shape[0]:
            raise UsageError(f"sequence of {int(idx.max()) + 1} frames is longer than the position table "
                             f"({pos.pe.shape[0]})")
        h = encoder.dropout(h * pos.scale + pos.pe[idx])
        cached = offsets if max_cache is None else offsets.clamp(max=max_cache)  # (B,) cached frames per stream
        mask = None
        if layers[0] is not None and bool((cached != cached.max()).any()):
            n = layers[0]["k"].shape[1]  # padded cache length
            mask = (torch.arange(n + t, device=x.device) >= (n - cached).unsqueeze(1))[:, None, None, :]
        for i, block in enumerate(encoder.blocks):
            h, layers[i] = block.infer(h, layers[i], max_cache) if mask is None else \
                _masked_block_infer(block, h, layers[i], max_cache, mask)
        offsets = offsets + t
        outs.append(h)
    out = torch.cat(outs, dim=1) if outs else x.new_zeros(x.shape[0], 0, encoder.output_dim)
    new = split_state({"subsampling": sub, "pending": x[:, ready:], "offset": offsets.tolist(), "layers": layers},
                      len(states))
    for s in new:  # drop each stream's padding from its attention caches
        keep = s["offset"] if max_cache is None else min(s["offset"], max_cache)
        s["layers"] = [None if layer is None else
                       {**layer, "k": layer["k"][:, layer["k"].shape[1] - keep:], "v": layer["v"][:, layer["v"].shape[1] - keep:]}
                       for layer in s["layers"]]
    return out, new


def _masked_block_infer(block, x, cache: dict, max_cache: int | None, mask) -> tuple[Any, dict]:
    """:meth:`asr.models.conformer.ConformerBlock.infer` with an attention mask ``(B, 1, 1, L + t)``
    over the (left-padded) cached keys and the chunk's own."""
    import torch
    import torch.nn.functional as F

    x = x + 0.5 * block.ff1(x)
    q = block.att_norm(x)
    att = block.att
    B, t, D = q.shape
    H = att.num_heads
    w_q, w_k, w_v = att.in_proj_weight.chunk(3)
    b_q, b_k, b_v = att.in_proj_bias.chunk(3) if att.in_proj_bias is not None else (None, None, None)
    k = torch.cat([cache["k"], F.linear(q, w_k, b_k)], dim=1)
    v = torch.cat([cache["v"], F.linear(q, w_v, b_v)], dim=1)

    def heads(z):  # (B, L, D) -> (B, H, L, D / H)
        return z.view(B, z.shape[1], H, D // H).transpose(1, 2)

    a = F.scaled_dot_product_attention(heads(F.linear(q, w_q, b_q)), heads(k), heads(v), attn_mask=mask)
    x = x + block.att_dropout(att.out_proj(a.transpose(1, 2).reshape(B, t, D)))
    c, conv_cache = block.conv.infer(x, cache["conv"])
    x = x + c
    x = x + 0.5 * block.ff2(x)
    if max_cache is not None:
        k, v = k[:, k.shape[1] - min(max_cache, k.shape[1]):], v[:, v.shape[1] - min(max_cache, v.shape[1]):]
    return block.out_norm(x), {"k": k, "v": v, "conv": conv_cache}
