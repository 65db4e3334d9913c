"""Conformer encoder (Gulati et al. 2020) with an optional causal / chunked attention mask.

With ``causal: true`` the depthwise convolutions only look back and each frame attends
to frames of its own chunk and earlier chunks (``chunk_size`` frames, 0 = frame by frame;
``left_chunks`` limits the history): a streaming encoder whose latency is one chunk.
:meth:`ConformerEncoder.infer` streams it: whole chunks at a time, with a cache of past
keys/values (at most ``left_chunks`` chunks) and of the last ``kernel - 1`` depthwise-conv
inputs per layer, and the position offset; its outputs equal the offline ones.

Example:
    >>> from asr.models.config import EncoderConfig
    >>> enc = ConformerEncoder(EncoderConfig(kind="conformer", dim=32, layers=2, heads=4), input_dim=40)
    >>> out, lengths = enc(torch.randn(2, 64, 40), torch.tensor([64, 40]))
    >>> out.shape, lengths.tolist()
    (torch.Size([2, 15, 32]), [15, 9])
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from asr.errors import UsageError
from asr.models.config import EncoderConfig
from asr.models.subsampling import ConvSubsampling, length_mask


def chunk_attention_mask(T: int, chunk_size: int, left_chunks: int = -1, device=None) -> torch.Tensor:
    """``(T, T)`` boolean mask, True where attention is NOT allowed.

    Frame ``i`` sees frame ``j`` iff ``chunk(j) <= chunk(i)`` and, when ``left_chunks >= 0``,
    ``chunk(j) >= chunk(i) - left_chunks``; ``chunk_size = 0`` means frame-by-frame (causal).

    >>> chunk_attention_mask(4, 2).int().tolist()
    [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    """
    idx = torch.arange(T, device=device)
    chunk = idx // chunk_size if chunk_size > 0 else idx
    ci, cj = chunk.unsqueeze(1), chunk.unsqueeze(0)
    allowed = cj <= ci
    if left_chunks >= 0:
        allowed &= cj >= ci - left_chunks
    return ~allowed


class SinusoidalPosition(nn.Module):
    """Adds sinusoidal absolute positions, starting at ``offset`` (for streaming)."""

    def __init__(self, dim: int, max_len: int = 10000):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        self.register_buffer("pe", pe, persistent=False)
        self.scale = math.sqrt(dim)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        T = x.shape[1]
        if offset + T > self.pe.shape[0]:
            raise UsageError(f"sequence of {offset + T} frames is longer than the position table ({self.pe.shape[0]})")
        return x * self.scale + self.pe[offset : offset + T]


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(dim * mult, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv (causal when streaming), norm, SiLU, pointwise conv."""

    def __init__(self, dim: int, kernel: int, dropout: float, causal: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pointwise1 = nn.Conv1d(dim, 2 * dim, 1)
        self.causal, self.kernel = causal, kernel
        self.depthwise = nn.Conv1d(dim, dim, kernel, groups=dim)
        self.dw_norm = nn.LayerNorm(dim)  # LayerNorm, not BatchNorm: batch-independent, streamable
        self.pointwise2 = nn.Conv1d(dim, dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, T, D)``, ``mask`` ``(B, T)`` True on valid frames."""
        y = self.norm(x) * mask.unsqueeze(-1)
        y = F.glu(self.pointwise1(y.transpose(1, 2)), dim=1)
        pad = (self.kernel - 1, 0) if self.causal else ((self.kernel - 1) // 2, self.kernel // 2)
        y = self.depthwise(F.pad(y * mask.unsqueeze(1), pad))
        y = F.silu(self.dw_norm(y.transpose(1, 2))).transpose(1, 2)
        return self.dropout(self.pointwise2(y).transpose(1, 2))

    def infer(self, x: torch.Tensor, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal streaming: new frames ``(B, t, D)`` and the last ``kernel - 1`` depthwise inputs
        ``(B, D, kernel - 1)`` (``None`` at the start: zeros, like the offline left padding)."""
        y = F.glu(self.pointwise1(self.norm(x).transpose(1, 2)), dim=1)  # (B, D, t)
        if cache is None:
            cache = y.new_zeros(y.shape[0], y.shape[1], self.kernel - 1)
        y = torch.cat([cache, y], dim=2)
        cache = y[:, :, y.shape[2] - (self.kernel - 1) :]
        y = F.silu(self.dw_norm(self.depthwise(y).transpose(1, 2))).transpose(1, 2)
        return self.dropout(self.pointwise2(y).transpose(1, 2)), cache


class ConformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ff_mult: int, kernel: int, dropout: float, causal: bool):
        super().__init__()
        self.ff1 = FeedForward(dim, ff_mult, dropout)
        self.att_norm = nn.LayerNorm(dim)
        self.att = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.att_dropout = nn.Dropout(dropout)
        self.conv = ConvModule(dim, kernel, dropout, causal)
        self.ff2 = FeedForward(dim, ff_mult, dropout)
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, att_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        q = self.att_norm(x)
        a, _ = self.att(q, q, q, key_padding_mask=~mask, attn_mask=att_mask, need_weights=False)
        x = x + self.att_dropout(a)
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ff2(x)
        return self.out_norm(x)

    def infer(self, x: torch.Tensor, cache: dict | None, max_cache: int | None) -> tuple[torch.Tensor, dict]:
        """One chunk ``(B, t, D)``, every frame of which sees the whole chunk and the cached past.

        ``cache`` holds the projected keys and values ``(B, L, D)`` of earlier frames and the
        convolution cache; ``max_cache`` frames of keys/values are kept (``None``: all).
        """
        cache = cache or {"k": None, "v": None, "conv": None}
        x = x + 0.5 * self.ff1(x)
        a, k, v = self._cached_attention(self.att_norm(x), cache["k"], cache["v"])
        x = x + self.att_dropout(a)
        c, conv_cache = self.conv.infer(x, cache["conv"])
        x = x + c
        x = x + 0.5 * self.ff2(x)
        if max_cache is not None:
            k, v = k[:, k.shape[1] - min(max_cache, k.shape[1]) :], v[:, v.shape[1] - min(max_cache, v.shape[1]) :]
        return self.out_norm(x), {"k": k, "v": v, "conv": conv_cache}

    def _cached_attention(self, q: torch.Tensor, k_past: torch.Tensor | None, v_past: torch.Tensor | None):
        """The same computation as ``self.att`` (unmasked) over ``[past; new]`` keys/values.

        ``q`` ``(B, t, D)`` normalised inputs -> output ``(B, t, D)`` and all keys/values ``(B, L + t, D)``.
        """
        att = self.att
        B, t, D = q.shape
        H = att.num_heads
        w_q, w_k, w_v = att.in_proj_weight.chunk(3)
        b_q, b_k, b_v = att.in_proj_bias.chunk(3) if att.in_proj_bias is not None else (None, None, None)
        k, v = F.linear(q, w_k, b_k), F.linear(q, w_v, b_v)
        if k_past is not None:
            k, v = torch.cat([k_past, k], dim=1), torch.cat([v_past, v], dim=1)

        def heads(z: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, H, L, D / H)
            return z.view(B, z.shape[1], H, D // H).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(F.linear(q, w_q, b_q)), heads(k), heads(v))
        return att.out_proj(out.transpose(1, 2).reshape(B, t, D)), k, v


class ConformerEncoder(nn.Module):
    """Convolutional subsampling, sinusoidal positions, ``layers`` Conformer blocks: ``(B, T, F)`` -> ``(B, T', dim)``."""

    def __init__(self, config: EncoderConfig, input_dim: int):
        super().__init__()
        c = config
        self.config = c
        self.subsampling_layer = ConvSubsampling(input_dim, c.subsampling, c.conv_channels, c.dim)
        self.pos = SinusoidalPosition(c.dim)
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            ConformerBlock(c.dim, c.heads, c.ff_mult, c.conv_kernel, c.dropout, c.causal) for _ in range(c.layers)
        )
        self.output_dim = c.dim
        self.subsampling = c.subsampling

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.subsampling_layer(feats, lengths)
        x = self.dropout(self.pos(x))
        T = x.shape[1]
        mask = length_mask(lengths.clamp(min=1), T)  # an empty utterance must not make a fully masked row
        att_mask = None
        if self.config.causal:
            att_mask = chunk_attention_mask(T, self.config.chunk_size, self.config.left_chunks, x.device)
        pad = ~mask.unsqueeze(-1)
        for block in self.blocks:
            # Zero the padding frames after every block. With a causal chunk mask, a padding frame more
            # than the attention history past its utterance's end sees only padding keys: its row is
            # fully masked and its output NaN. Left in place, that NaN reaches the valid frames through
            # the next block's masked keys (weight 0 times value NaN is NaN), so a short utterance
            # batched with long ones came out as NaN.
            x = block(x, mask, att_mask).masked_fill(pad, 0.0)
        return x, lengths

    @property
    def streamable(self) -> bool:
        """Causal Conformers can stream (:meth:`infer`); full-context ones cannot."""
        return bool(self.config.causal)

    def infer(self, feats: torch.Tensor, state: dict | None = None, final: bool = False
              ) -> tuple[torch.Tensor, dict]:
        """Streaming: features ``(B, t, F)`` (any ``t``) -> new encoder frames ``(B, t', D)`` and the state.

        Subsampled frames wait until a whole attention chunk (``chunk_size`` frames; 1 when
        ``chunk_size = 0``) is there, then the chunk goes through every block with its caches.
        ``final=True`` (with the last chunk, possibly empty) processes the last partial chunk.
        Start with ``state=None``; the concatenated outputs equal ``forward`` on the whole
        utterance with the same ``chunk_size``/``left_chunks`` (in eval mode).
        """
        if not self.streamable:
            raise UsageError("a full-context (causal: false) Conformer cannot stream: every frame attends "
                             "to the whole utterance (train with causal: true and a chunk_size)")
        c = self.config
        size = max(c.chunk_size, 1)
        max_cache = c.left_chunks * size if c.left_chunks >= 0 else None
        state = state or {"subsampling": None, "pending": None, "offset": 0, "layers": [None] * len(self.blocks)}
        x, sub = self.subsampling_layer.infer(feats, state["subsampling"])
        if state["pending"] is not None:
            x = torch.cat([state["pending"], x], dim=1)
        ready = x.shape[1] if final else x.shape[1] // size * size
        offset, layers, outs = state["offset"], list(state["layers"]), []
        for start in range(0, ready, size):
            h = x[:, start : start + size]
            h = self.dropout(self.pos(h, offset))
            offset += h.shape[1]
            for i, block in enumerate(self.blocks):
                h, layers[i] = block.infer(h, layers[i], max_cache)
            outs.append(h)
        out = torch.cat(outs, dim=1) if outs else x.new_zeros(x.shape[0], 0, self.output_dim)
        return out, {"subsampling": sub, "pending": x[:, ready:], "offset": offset, "layers": layers}
