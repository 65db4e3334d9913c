"""Encoders shared by every family: a convolutional time-downsampling front and either
a Deep Speech 2 style recurrent stack or a Conformer (see :mod:`asr.models.conformer`).

All encoders map features ``(B, T, F)`` with lengths ``(B,)`` to ``(B, T', D)`` with
``T' ~ T / subsampling`` and expose ``output_dim`` and ``subsampling``.

The convolutions are "valid" along time (no padding), so an output frame depends
only on a fixed window of input frames: the same property that lets the streaming
recognizer feed chunks and get the offline result. Streaming encoders (forward-only RNNs,
causal Conformers) have ``infer(feats_chunk, state, final) -> (out, state)``: feature frames
in chunks of any size, start with ``state=None``, pass ``final=True`` with the last chunk;
the concatenated outputs equal ``forward`` on the whole utterance.

Example:
    >>> from asr.models.config import EncoderConfig
    >>> enc = build_encoder(EncoderConfig(dim=32, layers=2, subsampling=4), input_dim=80)
    >>> out, lengths = enc(torch.randn(2, 100, 80), torch.tensor([100, 60]))
    >>> out.shape, lengths.tolist()
    (torch.Size([2, 24, 64]), [24, 14])
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from asr.config import ConfigError
from asr.errors import UsageError
from asr.models.config import EncoderConfig


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


class Lookahead(nn.Module):
    """Row convolution over ``future`` frames (Deep Speech 2): ``y_t = sum_j w_j * x_{t+j}``, per channel.

    Lets a forward-only encoder see a bounded amount of future context: the output at
    ``t`` is final once frame ``t + future`` has arrived.
    """

    def __init__(self, dim: int, future: int):
        super().__init__()
        self.future = future
        self.conv = nn.Conv1d(dim, dim, future + 1, groups=dim, bias=False)
        with torch.no_grad():  # start as the identity (all weight on the current frame)
            self.conv.weight.zero_()
            self.conv.weight[:, 0, 0] = 1.0

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = x * length_mask(lengths, x.shape[1]).unsqueeze(-1)  # no peeking into padding
        y = self.conv(F.pad(x.transpose(1, 2), (0, self.future)))
        return y.transpose(1, 2)

    def infer(self, x: torch.Tensor, pending: torch.Tensor | None = None, final: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Streaming: new frames ``(B, t, D)`` and the frames still waiting for their future ->
        the outputs now complete ``(B, t', D)`` and the new waiting frames.

        Output ``t`` is emitted once frame ``t + future`` has arrived; with ``final`` the
        waiting frames are emitted against zeros, as ``forward`` pads the end of an utterance.
        """
        buf = x if pending is None else torch.cat([pending, x], dim=1)
        n = buf.shape[1] if final else buf.shape[1] - self.future
        if n <= 0:
            return buf[:, :0], buf
        y = buf.transpose(1, 2)
        if final:
            y = F.pad(y, (0, self.future))
        y = self.conv(y).transpose(1, 2)  # (B, n, D)
        return y, buf[:, n:]


class RNNEncoder(nn.Module):
    """Deep Speech 2 style: convolutional subsampling, then stacked GRU/LSTM layers.

    Bidirectional, or forward-only with an optional lookahead row convolution
    (``lookahead`` frames after subsampling) for streaming.
    """

    def __init__(self, config: EncoderConfig, input_dim: int):
        super().__init__()
        c = config
        if c.bidirectional and c.lookahead:
            raise ConfigError("lookahead applies to forward-only encoders (bidirectional: false)")
        rnn_cls = {"gru": nn.GRU, "lstm": nn.LSTM}.get(c.rnn_type)
        if rnn_cls is None:
            raise ConfigError(f"rnn_type must be gru or lstm, got {c.rnn_type!r}")
        self.subsampling_layer = ConvSubsampling(input_dim, c.subsampling, c.conv_channels, c.dim)
        self.norm = nn.LayerNorm(c.dim)
        self.rnn = rnn_cls(c.dim, c.dim, num_layers=c.layers, batch_first=True,
                           bidirectional=c.bidirectional, dropout=c.dropout if c.layers > 1 else 0.0)
        self.output_dim = c.dim * (2 if c.bidirectional else 1)
        self.lookahead = Lookahead(self.output_dim, c.lookahead) if c.lookahead else None
        self.dropout = nn.Dropout(c.dropout)
        self.subsampling = c.subsampling

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, F)``, ``(B,)`` -> ``(B, T', D)``, ``(B,)``."""
        x, lengths = self.subsampling_layer(feats, lengths)
        x = self.dropout(self.norm(x))
        T = x.shape[1]
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        x, _ = self.rnn(packed)
        x, _ = pad_packed_sequence(x, batch_first=True, total_length=T)
        if self.lookahead is not None:
            x = self.lookahead(x, lengths)
        return self.dropout(x), lengths

    @property
    def streamable(self) -> bool:
        """Forward-only encoders can stream (:meth:`infer`); bidirectional ones cannot."""
        return not self.rnn.bidirectional

    def infer(self, feats: torch.Tensor, state: dict | None = None, final: bool = False
              ) -> tuple[torch.Tensor, dict]:
        """Streaming: features ``(B, t, F)`` (any ``t``) -> new encoder frames ``(B, t', D)`` and the state.

        Carries the subsampling buffers, the recurrent hidden state and, with a lookahead,
        the last ``lookahead`` frames whose future has not arrived yet (so outputs lag the
        input by ``lookahead`` frames). ``final=True`` (with the last chunk, possibly empty)
        flushes them as ``forward`` does at the end of an utterance. Start with ``state=None``;
        the concatenated outputs equal ``forward`` on the whole utterance (in eval mode).
        """
        if not self.streamable:
            raise UsageError("a bidirectional RNN encoder cannot stream: it needs the whole utterance "
                             "(train with bidirectional: false, optionally with lookahead > 0)")
        state = state or {"subsampling": None, "hidden": None, "pending": None}
        x, sub = self.subsampling_layer.infer(feats, state["subsampling"])
        x = self.dropout(self.norm(x))
        hidden = state["hidden"]
        if x.shape[1] > 0:
            x, hidden = self.rnn(x, hidden)
        pending = None
        if self.lookahead is not None:
            x, pending = self.lookahead.infer(x, state["pending"], final)
        return self.dropout(x), {"subsampling": sub, "hidden": hidden, "pending": pending}


def build_encoder(config: EncoderConfig, input_dim: int) -> nn.Module:
    """The encoder named by ``config.kind`` (``rnn`` or ``conformer``)."""
    if config.kind == "rnn":
        return RNNEncoder(config, input_dim)
    if config.kind == "conformer":
        from asr.models.conformer import ConformerEncoder

        return ConformerEncoder(config, input_dim)
    raise ConfigError(f"unknown encoder kind {config.kind!r} (rnn or conformer)")
