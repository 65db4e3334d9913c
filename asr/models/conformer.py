"""Conformer encoder (Gulati et al. 2020) with an optional causal / chunked attention mask.

With ``causal: true`` the depthwise convolutions only look back and each frame attends
to frames of its own chunk and earlier chunks (``chunk_size`` frames, 0 = frame by frame;
``left_chunks`` limits the history): a streaming encoder whose latency is one chunk.

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

from asr.models.config import EncoderConfig
from asr.models.encoders import ConvSubsampling, length_mask


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
            raise ValueError(f"sequence of {offset + T} frames is longer than the position table ({self.pe.shape[0]})")
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
        for block in self.blocks:
            x = block(x, mask, att_mask)
        return x * mask.unsqueeze(-1), lengths
