"""Attention decoders of the encoder-decoder family: location-aware LSTM (LAS style) and Transformer.

Both decoders share one interface:

- ``forward(enc (B, T, D_enc), enc_lengths (B,), ys_in (B, U)) -> logits (B, U, V)``: teacher
  forcing, ``ys_in`` starts with ``<sos>``;
- ``init_state(enc, enc_lengths) -> state`` once per utterance batch, then
  ``step(token (B,), state, enc, mask (B, T)) -> (log_probs (B, V), state)`` per output token.

``forward`` and ``step`` compute the same thing (the tests check that the step-by-step
log-probabilities equal the teacher-forced ones), so decoding sees the model it was trained as.
``mask`` is True on valid encoder frames; every row must have at least one.

Example:
    >>> dec = LSTMAttentionDecoder(vocab_size=10, enc_dim=8, dim=16, att_dim=8, conv_channels=4, conv_kernel=5)
    >>> enc, lengths = torch.randn(2, 7, 8), torch.tensor([7, 4])
    >>> dec(enc, lengths, torch.tensor([[2, 5, 6], [2, 3, 0]])).shape
    torch.Size([2, 3, 10])
    >>> state = dec.init_state(enc, lengths)
    >>> log_probs, state = dec.step(torch.tensor([2, 2]), state, enc, length_mask(lengths, 7))
    >>> log_probs.shape, state["weights"][1, 4:].abs().sum().item()
    (torch.Size([2, 10]), 0.0)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from asr.config import ConfigError
from asr.models.config import AttentionConfig
from asr.models.conformer import SinusoidalPosition
from asr.models.subsampling import length_mask

State = dict[str, torch.Tensor]


class LocationAwareAttention(nn.Module):
    """Location-aware additive attention (Chorowski et al. 2015).

    ``e_j = w^T tanh(W s + V h_j + U f_j + b)`` with location features ``f = conv1d(a_prev)``
    from the previous attention weights ``a_prev``; energies are masked over encoder padding
    and normalised with a softmax. ``V h + b`` depends only on the encoder output: compute it
    once per utterance batch with :meth:`project_encoder`.

    Args:
        enc_dim: encoder output size ``D_enc``.
        query_dim: decoder state size ``D_q``.
        att_dim: size ``A`` of the attention projections.
        conv_channels: location filters.
        conv_kernel: width of the location filters (frames).
    """

    def __init__(self, enc_dim: int, query_dim: int, att_dim: int, conv_channels: int, conv_kernel: int):
        super().__init__()
        self.enc_proj = nn.Linear(enc_dim, att_dim)  # V h + b
        self.query_proj = nn.Linear(query_dim, att_dim, bias=False)  # W s
        self.loc_conv = nn.Conv1d(1, conv_channels, conv_kernel, padding="same", bias=False)
        self.loc_proj = nn.Linear(conv_channels, att_dim, bias=False)  # U f
        self.score = nn.Linear(att_dim, 1, bias=False)  # w

    def project_encoder(self, enc: torch.Tensor) -> torch.Tensor:
        """``(B, T, D_enc)`` -> ``V h + b`` ``(B, T, A)``."""
        return self.enc_proj(enc)

    @staticmethod
    def initial_weights(mask: torch.Tensor) -> torch.Tensor:
        """Uniform weights over the valid frames: ``(B, T)`` mask -> ``(B, T)`` float."""
        m = mask.float()
        return m / m.sum(1, keepdim=True).clamp(min=1.0)

    def forward(
        self, query: torch.Tensor, enc: torch.Tensor, enc_proj: torch.Tensor, mask: torch.Tensor,
        prev_weights: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend once.

        Args:
            query: decoder state ``(B, D_q)``.
            enc: encoder output ``(B, T, D_enc)``.
            enc_proj: :meth:`project_encoder` of ``enc``, ``(B, T, A)``.
            mask: ``(B, T)`` True on valid frames.
            prev_weights: previous attention weights ``(B, T)``.

        Returns:
            ``context (B, D_enc)`` and ``weights (B, T)`` (sum to 1 over valid frames, 0 on padding).
        """
        loc = self.loc_conv(prev_weights.unsqueeze(1).to(enc_proj.dtype)).transpose(1, 2)  # (B, T, C)
        hidden = torch.tanh(enc_proj + self.query_proj(query).unsqueeze(1) + self.loc_proj(loc))
        energies = self.score(hidden).squeeze(-1).float()  # (B, T)
        energies = energies.masked_fill(~mask, torch.finfo(energies.dtype).min)
        weights = torch.softmax(energies, dim=-1) * mask  # exact zeros on padding, even for an all-padding row
        context = torch.bmm(weights.unsqueeze(1).to(enc.dtype), enc).squeeze(1)
        return context, weights


class LSTMAttentionDecoder(nn.Module):
    """LAS-style decoder: ``s_i = LSTM(s_{i-1}, [emb(y_{i-1}); c_{i-1}])``, ``c_i = Attend(s_i, h, a_{i-1})``,
    ``logits_i = Linear([s_i; c_i])``.

    ``layers`` stacked LSTM cells; the location-aware attention reads the top state.
    ``forward(enc (B, T, D_enc), enc_lengths (B,), ys_in (B, U)) -> logits (B, U, V)``.
    """

    def __init__(
        self, vocab_size: int, enc_dim: int, dim: int = 256, layers: int = 1, att_dim: int = 128,
        conv_channels: int = 10, conv_kernel: int = 31, dropout: float = 0.0,
    ):
        super().__init__()
        self.dim, self.enc_dim, self.num_layers = dim, enc_dim, layers
        self.embed = nn.Embedding(vocab_size, dim)
        self.cells = nn.ModuleList(
            nn.LSTMCell(dim + enc_dim if i == 0 else dim, dim) for i in range(layers)
        )
        self.attention = LocationAwareAttention(enc_dim, dim, att_dim, conv_channels, conv_kernel)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(dim + enc_dim, vocab_size)

    def init_state(self, enc: torch.Tensor, enc_lengths: torch.Tensor) -> State:
        """Zero LSTM states ``h, c (L, B, dim)``, zero context ``(B, D_enc)``, uniform weights ``(B, T)``
        and the projected encoder ``enc_proj (B, T, A)`` (computed once here)."""
        B, T, _ = enc.shape
        zeros = enc.new_zeros(self.num_layers, B, self.dim)
        return {
            "h": zeros, "c": zeros.clone(), "context": enc.new_zeros(B, self.enc_dim),
            "weights": self.attention.initial_weights(length_mask(enc_lengths, T)),
            "enc_proj": self.attention.project_encoder(enc),
        }

    def _advance(self, emb: torch.Tensor, state: State, enc: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, State]:
        """One decoder step from embedded tokens ``(B, dim)`` -> output features ``[s; c]`` ``(B, dim + D_enc)``."""
        x = torch.cat([emb, state["context"]], dim=-1)
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            h, c = cell(x, (state["h"][i], state["c"][i]))
            hs.append(h)
            cs.append(c)
            x = self.dropout(h) if i + 1 < self.num_layers else h
        context, weights = self.attention(x, enc, state["enc_proj"], mask, state["weights"])
        new = {"h": torch.stack(hs), "c": torch.stack(cs), "context": context, "weights": weights,
               "enc_proj": state["enc_proj"]}
        return torch.cat([x, context], dim=-1), new

    def forward(
        self, enc: torch.Tensor, enc_lengths: torch.Tensor, ys_in: torch.Tensor, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: ``(B, T, D_enc)``, ``(B,)``, ``(B, U)`` -> logits ``(B, U, V)``, and with
        ``return_weights`` also the attention weights of every step ``(B, U, T)`` (for the guided loss)."""
        mask = length_mask(enc_lengths, enc.shape[1])
        state = self.init_state(enc, enc_lengths)
        embs = self.dropout(self.embed(ys_in))  # (B, U, dim)
        outs, weights = [], []
        for u in range(ys_in.shape[1]):
            out, state = self._advance(embs[:, u], state, enc, mask)
            outs.append(out)
            weights.append(state["weights"])
        feats = torch.stack(outs, dim=1) if outs else enc.new_zeros(enc.shape[0], 0, self.dim + self.enc_dim)
        logits = self.output(self.dropout(feats))
        if not return_weights:
            return logits
        att = torch.stack(weights, dim=1) if weights else enc.new_zeros(enc.shape[0], 0, enc.shape[1])
        return logits, att

    def step(self, token: torch.Tensor, state: State, enc: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, State]:
        """Previous tokens ``(B,)`` -> log-probabilities of the next ``(B, V)`` (float32) and the new state."""
        out, state = self._advance(self.dropout(self.embed(token)), state, enc, mask)
        return F.log_softmax(self.output(self.dropout(out)).float(), dim=-1), state

    @staticmethod
    def reorder_state(state: State, index: torch.Tensor) -> State:
        """Rows ``index`` ``(B',)`` of a batch's state (beam search reorders and expands hypotheses with it)."""
        return {k: v.index_select(1 if k in ("h", "c") else 0, index) for k, v in state.items()}


class TransformerAttentionDecoder(nn.Module):
    """Transformer decoder: token embedding + sinusoidal positions, ``layers`` pre-norm blocks
    (causal self-attention, cross-attention over the encoder, feed-forward), output linear.

    The encoder output is projected to ``dim`` when ``enc_dim != dim``.
    ``forward(enc (B, T, D_enc), enc_lengths (B,), ys_in (B, U)) -> logits (B, U, V)``;
    :meth:`step` recomputes the whole prefix each step (simple, and exactly the training computation).
    """

    def __init__(
        self, vocab_size: int, enc_dim: int, dim: int = 256, layers: int = 1, heads: int = 4,
        dropout: float = 0.0, ff_mult: int = 4,
    ):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"decoder dim {dim} is not divisible by heads {heads}")
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = SinusoidalPosition(dim)
        self.memory_proj = nn.Linear(enc_dim, dim) if enc_dim != dim else nn.Identity()
        block = nn.TransformerDecoderLayer(dim, heads, dim * ff_mult, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerDecoder(block, layers, norm=nn.LayerNorm(dim))
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(dim, vocab_size)

    def _logits(self, ys: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, U)``, projected memory ``(B, T, dim)``, mask ``(B, T)`` -> logits ``(B, U, V)``."""
        U = ys.shape[1]
        causal = torch.triu(torch.ones(U, U, dtype=torch.bool, device=ys.device), diagonal=1)
        x = self.dropout(self.pos(self.embed(ys)))
        x = self.blocks(x, memory, tgt_mask=causal, memory_key_padding_mask=~mask)
        return self.output(x)

    def forward(self, enc: torch.Tensor, enc_lengths: torch.Tensor, ys_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: ``(B, T, D_enc)``, ``(B,)``, ``(B, U)`` -> logits ``(B, U, V)``."""
        return self._logits(ys_in, self.memory_proj(enc), length_mask(enc_lengths, enc.shape[1]))

    def init_state(self, enc: torch.Tensor, enc_lengths: torch.Tensor) -> State:
        """The projected memory ``(B, T, dim)`` and an empty prefix ``(B, 0)``."""
        return {"memory": self.memory_proj(enc),
                "prefix": torch.zeros(enc.shape[0], 0, dtype=torch.long, device=enc.device)}

    def step(self, token: torch.Tensor, state: State, enc: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, State]:
        """Previous tokens ``(B,)`` -> log-probabilities of the next ``(B, V)`` (float32) and the new state."""
        prefix = torch.cat([state["prefix"], token.unsqueeze(1)], dim=1)
        logits = self._logits(prefix, state["memory"], mask)[:, -1]
        return F.log_softmax(logits.float(), dim=-1), {"memory": state["memory"], "prefix": prefix}

    @staticmethod
    def reorder_state(state: State, index: torch.Tensor) -> State:
        """Rows ``index`` ``(B',)`` of a batch's state (beam search reorders and expands hypotheses with it)."""
        return {k: v.index_select(0, index) for k, v in state.items()}


def build_decoder(config: AttentionConfig, enc_dim: int, vocab_size: int) -> nn.Module:
    """The decoder named by ``config.decoder`` (``lstm`` or ``transformer``)."""
    c = config
    if c.decoder == "lstm":
        return LSTMAttentionDecoder(vocab_size, enc_dim, c.dim, c.layers, c.att_dim, c.conv_channels,
                                    c.conv_kernel, c.dropout)
    if c.decoder == "transformer":
        return TransformerAttentionDecoder(vocab_size, enc_dim, c.dim, c.layers, c.heads, c.dropout)
    raise ConfigError(f"unknown attention decoder {c.decoder!r} (lstm or transformer)")
