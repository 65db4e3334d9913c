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
from asr.models.rnn import run_rnn
from asr.models.subsampling import ConvSubsampling, length_mask


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
        x, _ = run_rnn(self.rnn, packed)
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
            x, hidden = run_rnn(self.rnn, x, hidden)
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
