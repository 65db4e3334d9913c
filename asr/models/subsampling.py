"""The convolutional time-downsampling front every encoder starts with, and length masks.

Example:
    >>> sub = ConvSubsampling(input_dim=80, factor=4, channels=8, out_dim=16)
    >>> out, lengths = sub(torch.randn(2, 100, 80), torch.tensor([100, 60]))
    >>> out.shape, lengths.tolist()
    (torch.Size([2, 24, 16]), [24, 14])
    >>> length_mask(torch.tensor([1, 3]), 3).tolist()
    [[True, False, False], [True, True, True]]
"""

from __future__ import annotations

import torch
import torch.nn as nn

from asr.config import ConfigError


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B,)`` lengths -> ``(B, max_len)`` boolean mask, True on valid positions."""
    return torch.arange(max_len, device=lengths.device) < lengths.unsqueeze(1)


class ConvSubsampling(nn.Module):
    """2-D convolutions (kernel 3, stride 2 in time and frequency) downsampling time by 2, 4 or 8.

    ``(B, T, F)`` -> ``(B, T', out_dim)``; each layer maps ``T -> (T - 3) // 2 + 1`` (valid in
    time, padded in frequency).
    """

    def __init__(self, input_dim: int, factor: int, channels: int, out_dim: int):
        super().__init__()
        if factor not in (2, 4, 8):
            raise ConfigError(f"subsampling must be 2, 4 or 8, got {factor}")
        self.factor = factor
        n = factor.bit_length() - 1
        layers, c_in, f = [], 1, input_dim
        for _ in range(n):
            layers += [nn.Conv2d(c_in, channels, 3, stride=2, padding=(0, 1)), nn.GELU()]
            c_in, f = channels, (f + 2 - 3) // 2 + 1
        self.conv = nn.Sequential(*layers)
        self.out = nn.Linear(channels * f, out_dim)
        self.num_layers = n
        self.receptive_field = 2 ** (n + 1) - 1  # input frames one output frame sees

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for _ in range(self.num_layers):
            lengths = torch.div(lengths - 3, 2, rounding_mode="floor") + 1
        return lengths.clamp(min=0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        return self._project(x), self.output_lengths(lengths)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """Last conv output ``(B, C, T', F')`` -> ``(B, T', out_dim)``."""
        B, C, T, Fq = x.shape
        return self.out(x.permute(0, 2, 1, 3).reshape(B, T, C * Fq))

    def infer(self, x: torch.Tensor, state: dict | None = None) -> tuple[torch.Tensor, dict]:
        """Streaming: feature frames ``(B, t, F)`` (any ``t``, 0 included) -> new output frames ``(B, t', out_dim)``.

        Streams layer by layer: each layer keeps the input frames its next output still needs
        (a layer with ``L`` buffered frames emits ``(L - 3) // 2 + 1`` and drops the first
        ``2 * emitted``). No flush is needed: like ``forward``, only complete windows give
        outputs. ``state`` starts as ``None``.
        """
        buffers = list(state["buffers"]) if state else [None] * self.num_layers
        h = x.unsqueeze(1)  # (B, 1, t, F)
        for i in range(self.num_layers):
            if buffers[i] is not None:
                h = torch.cat([buffers[i], h], dim=2)
            n = (h.shape[2] - 3) // 2 + 1 if h.shape[2] >= 3 else 0
            buffers[i] = h[:, :, 2 * n :]
            if n == 0:  # nothing reaches the later layers this time
                return x.new_zeros(x.shape[0], 0, self.out.out_features), {"buffers": buffers}
            conv, act = self.conv[2 * i], self.conv[2 * i + 1]
            h = act(conv(h[:, :, : 2 * n + 1]))
        return self._project(h), {"buffers": buffers}
