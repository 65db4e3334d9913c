"""The RNN-Transducer family (Graves 2012): shared encoder, predictor, joiner, ``rnnt_loss``.

The predictor is an LSTM language model over the emitted tokens or a stateless one
(an embedding of the last ``context`` tokens, Ghodsi et al. 2020); the joiner adds the
projected encoder and predictor outputs, applies ``tanh`` and maps to the vocabulary.
Blank is token 0 and doubles as the predictor's start symbol.

The joint tensor ``(B, T, U+1, V)`` dominates training memory. The loss trims it to the
batch maxima and, with ``joint_chunk > 0``, computes it a few utterances at a time (sorted
by ``T * U`` so each chunk is trimmed tightly) under activation checkpointing, so only one
chunk's joint is alive at a time and it is recomputed in backward.

Example:
    >>> from asr.models.config import ModelConfig, EncoderConfig, TransducerConfig
    >>> cfg = ModelConfig(family="transducer", encoder=EncoderConfig(dim=16, layers=1),
    ...                   transducer=TransducerConfig(pred_dim=16, joint_dim=16))
    >>> model = TransducerModel(cfg, vocab_size=30)
    >>> enc, lengths = model.encode(torch.randn(2, 16000), torch.tensor([16000, 8000]))
    >>> enc.shape, lengths.tolist()
    (torch.Size([2, 23, 32]), [23, 11])
    >>> logits = model.joiner(enc, model.predictor(torch.tensor([[5, 6, 7], [8, 0, 0]])))
    >>> logits.shape
    torch.Size([2, 23, 4, 30])
    >>> len(transducer_greedy(model.eval(), enc, lengths))
    2
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.functional as AF
from torch.utils.checkpoint import checkpoint

from asr.config import ConfigError
from asr.constants import BLANK
from asr.models import Family, LossOutput, register_family
from asr.models.config import ModelConfig, TransducerConfig
from asr.models.encoders import build_encoder
from asr.models.frontend import Frontend
from asr.models.rnn import run_rnn


# A predictor state is a tuple of tensors whose FIRST dimension is the batch, so the
# decoders can select, merge and reorder the states of any predictor the same way.
State = tuple[torch.Tensor, ...]


class Predictor(nn.Module):
    """LSTM prediction network: a language model over the non-blank tokens emitted so far.

    Args:
        vocab_size: tokens, blank (0) included; blank is the start symbol.
        dim: embedding and LSTM hidden size.
        layers: LSTM layers.
    """

    def __init__(self, vocab_size: int, dim: int, layers: int = 1):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.lstm = nn.LSTM(dim, dim, num_layers=layers, batch_first=True)
        self.output_dim = dim
        self.layers = layers

    def forward(self, tokens: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Targets ``(B, U)`` (padding anywhere past ``lengths``) -> outputs ``(B, U+1, D)``.

        Output ``u`` has seen the start symbol and ``tokens[:, :u]``; the LSTM only looks
        back, so padding never reaches a valid position and ``lengths`` is not needed.
        """
        x = F.pad(tokens, (1, 0), value=BLANK)
        out, _ = run_rnn(self.lstm, self.embedding(x))
        return out

    def init_state(self, batch_size: int, device: torch.device | None = None) -> State:
        """Zero state ``(h, c)``, each ``(B, layers, D)``."""
        h = torch.zeros(batch_size, self.layers, self.output_dim, device=device, dtype=self.embedding.weight.dtype)
        return h, h.clone()

    def step(self, token: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token ``(B,)`` and state -> output ``(B, D)`` and the new state."""
        h, c = (s.transpose(0, 1).contiguous() for s in state)
        out, (h, c) = run_rnn(self.lstm, self.embedding(token).unsqueeze(1), (h, c))
        return out.squeeze(1), (h.transpose(0, 1), c.transpose(0, 1))


class StatelessPredictor(nn.Module):
    """Stateless prediction network: embeddings of the last ``context`` tokens, no recurrence.

    The embeddings of the window are combined by a depthwise convolution of width
    ``context`` (one weight per channel and position), then ReLU and a linear layer.
    The window before the first tokens is filled with blanks (the start symbol).

    Args:
        vocab_size: tokens, blank (0) included.
        dim: embedding and output size.
        context: tokens of history, at least 1 (1 = a bigram-like predictor).
    """

    def __init__(self, vocab_size: int, dim: int, context: int = 2):
        super().__init__()
        if context < 1:
            raise ConfigError(f"context must be >= 1, got {context}")
        self.embedding = nn.Embedding(vocab_size, dim)
        self.conv = nn.Conv1d(dim, dim, context, groups=dim, bias=False) if context > 1 else None
        self.linear = nn.Linear(dim, dim)
        self.output_dim = dim
        self.context = context

    def _combine(self, windows: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, L)`` -> outputs ``(B, L - context + 1, D)``, one per full window."""
        x = self.embedding(windows)
        if self.conv is not None:
            x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.linear(F.relu(x))

    def forward(self, tokens: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Targets ``(B, U)`` -> outputs ``(B, U+1, D)``; output ``u`` sees ``tokens[:, u-context:u]``."""
        return self._combine(F.pad(tokens, (self.context, 0), value=BLANK))

    def init_state(self, batch_size: int, device: torch.device | None = None) -> State:
        """The last ``context - 1`` tokens, ``(B, context - 1)``, all blank."""
        return (torch.full((batch_size, self.context - 1), BLANK, dtype=torch.long, device=device),)

    def step(self, token: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token ``(B,)`` and state -> output ``(B, D)`` and the new state."""
        window = torch.cat([state[0], token.unsqueeze(1)], dim=1)  # (B, context)
        return self._combine(window).squeeze(1), (window[:, 1:],)


class Joiner(nn.Module):
    """Joint network: ``out(tanh(W_enc enc + W_pred pred))`` on every (frame, label) pair.

    Args:
        enc_dim: encoder output size ``H_enc``.
        pred_dim: predictor output size ``H_pred``.
        joint_dim: hidden size of the joint.
        vocab_size: output tokens ``V``, blank included.
    """

    def __init__(self, enc_dim: int, pred_dim: int, joint_dim: int, vocab_size: int):
        super().__init__()
        self.enc_proj = nn.Linear(enc_dim, joint_dim)
        self.pred_proj = nn.Linear(pred_dim, joint_dim, bias=False)
        self.out = nn.Linear(joint_dim, vocab_size)

    def project_encoder(self, enc: torch.Tensor) -> torch.Tensor:
        """``(..., H_enc)`` -> ``(..., joint_dim)``."""
        return self.enc_proj(enc)

    def project_predictor(self, pred: torch.Tensor) -> torch.Tensor:
        """``(..., H_pred)`` -> ``(..., joint_dim)``."""
        return self.pred_proj(pred)

    def joint(self, enc_proj: torch.Tensor, pred_proj: torch.Tensor) -> torch.Tensor:
        """Projected inputs of broadcastable shapes ``(..., joint_dim)`` -> logits ``(..., V)``."""
        return self.out(torch.tanh(enc_proj + pred_proj))

    def forward(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """``enc (B, T, H_enc)``, ``pred (B, U+1, H_pred)`` -> logits ``(B, T, U+1, V)``."""
        return self.joint(self.project_encoder(enc).unsqueeze(2), self.project_predictor(pred).unsqueeze(1))

    def step(self, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """One frame and one predictor output per utterance: ``(B, H_enc)``, ``(B, H_pred)`` -> ``(B, V)``."""
        return self.joint(self.project_encoder(enc), self.project_predictor(pred))


def build_predictor(config: TransducerConfig, vocab_size: int) -> nn.Module:
    """The predictor named by ``config.predictor`` (``lstm`` or ``stateless``)."""
    if config.predictor == "lstm":
        return Predictor(vocab_size, config.pred_dim, config.pred_layers)
    if config.predictor == "stateless":
        return StatelessPredictor(vocab_size, config.pred_dim, config.context)
    raise ConfigError(f"unknown predictor {config.predictor!r} (lstm or stateless)")


class TransducerModel(nn.Module):
    """Front-end + encoder + predictor + joiner.

    ``forward(wav (B, N), wav_lengths (B,), tokens (B, U))`` -> encoder output, frame counts and
    predictor output; :meth:`logits` gives the full joint ``(B, T', U+1, V)``. Training goes
    through :func:`transducer_loss`, which never builds the joint over more padding than it needs.
    """

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        tc = config.transducer
        self.frontend = Frontend(config)
        self.encoder = build_encoder(config.encoder, self.frontend.dim)
        self.predictor = build_predictor(tc, vocab_size)
        self.joiner = Joiner(self.encoder.output_dim, self.predictor.output_dim, tc.joint_dim, vocab_size)
        self.vocab_size = vocab_size
        self.joint_chunk = tc.joint_chunk

    def encode(self, wav: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms ``(B, N)`` + lengths -> encoder output ``(B, T', H_enc)`` + frame counts ``(B,)``."""
        feats, lengths = self.frontend(wav, wav_lengths)
        return self.encoder(feats, lengths)

    def forward(
        self, wav: torch.Tensor, wav_lengths: torch.Tensor, tokens: torch.Tensor, token_lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder output ``(B, T', H_enc)``, frame counts ``(B,)`` and predictor output ``(B, U+1, H_pred)``.

        The joint is left to the loss (which trims and chunks it) or to :meth:`logits`.
        Training calls this through ``model(...)`` so that a DistributedDataParallel wrapper
        synchronises the gradients.
        """
        enc, lengths = self.encode(wav, wav_lengths)
        return enc, lengths, self.predictor(tokens, token_lengths)

    def logits(
        self, wav: torch.Tensor, wav_lengths: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The full joint ``(B, T', U+1, V)`` and frame counts ``(B,)`` (for inspection and tests)."""
        enc, lengths, pred = self(wav, wav_lengths, tokens)
        return self.joiner(enc, pred), lengths


# ---------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------
def _joint_rnnt(
    joiner: Joiner, enc_proj: torch.Tensor, pred_proj: torch.Tensor, targets: torch.Tensor,
    lengths: torch.Tensor, target_lengths: torch.Tensor,
) -> torch.Tensor:
    """Joint + RNN-T loss of one trimmed chunk.

    ``enc_proj (C, T, J)`` with ``T = max(lengths)``, ``pred_proj (C, U+1, J)`` and
    ``targets (C, U)`` with ``U = max(target_lengths)`` -> per-utterance losses ``(C,)``.
    """
    logits = joiner.joint(enc_proj.unsqueeze(2), pred_proj.unsqueeze(1)).float()  # (C, T, U+1, V)
    return AF.rnnt_loss(logits, targets.int(), lengths.int(), target_lengths.int(), blank=BLANK,
                        reduction="none", fused_log_softmax=True)


def transducer_loss_per_utt(
    model: TransducerModel, enc: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor,
    token_lengths: torch.Tensor, joint_chunk: Optional[int] = None, pred: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Per-utterance RNN-T negative log-likelihood over the usable utterances.

    Args:
        enc: encoder output ``(B, T, H_enc)`` with frame counts ``lengths (B,)``.
        tokens: targets ``(B, U)`` with ``token_lengths (B,)``.
        joint_chunk: utterances per joint chunk (default: the model's); 0 = whole batch.
        pred: the predictor output ``(B, U+1, H_pred)`` when already computed (else computed here).

    Utterances with an empty transcript (``empty``) or no encoder frames (``too_short``)
    are left out and counted. Returns ``(losses (K,), keep (B,) bool, counts)``, the losses
    in batch order of the kept utterances.
    """
    chunk = model.joint_chunk if joint_chunk is None else joint_chunk
    keep = (token_lengths > 0) & (lengths > 0)
    counts = {"empty": float((token_lengths == 0).sum()),
              "too_short": float(((token_lengths > 0) & (lengths == 0)).sum())}
    if not keep.any():
        return enc.new_zeros(0, dtype=torch.float32), keep, counts
    enc, lengths, tokens, token_lengths = enc[keep], lengths[keep], tokens[keep], token_lengths[keep]
    T, U = int(lengths.max()), int(token_lengths.max())
    pred = model.predictor(tokens[:, :U], token_lengths) if pred is None else pred[keep][:, : U + 1]
    enc_proj = model.joiner.project_encoder(enc[:, :T])  # (K, T, J)
    pred_proj = model.joiner.project_predictor(pred)  # (K, U+1, J)
    tokens = tokens[:, :U]
    K = enc.shape[0]
    if chunk <= 0 or chunk >= K:  # one chunk: checkpointing would only add the recomputation
        losses = _joint_rnnt(model.joiner, enc_proj, pred_proj, tokens, lengths, token_lengths)
        return losses, keep, counts
    order = torch.argsort(lengths * (token_lengths + 1), descending=True)
    sizes = (lengths[order].cpu(), token_lengths[order].cpu())
    parts = []
    for start in range(0, K, chunk):
        idx = order[start : start + chunk]
        t, u = int(sizes[0][start : start + chunk].max()), int(sizes[1][start : start + chunk].max())
        parts.append(checkpoint(_joint_rnnt, model.joiner, enc_proj[idx, :t], pred_proj[idx, : u + 1],
                                tokens[idx, :u], lengths[idx], token_lengths[idx], use_reentrant=False))
    losses = torch.cat(parts)[torch.argsort(order)]  # back to batch order
    return losses, keep, counts


def transducer_loss(model: TransducerModel, batch: dict) -> LossOutput:
    """Sum of per-utterance RNN-T losses; ``weight`` = utterances used."""
    enc, lengths, pred = model(batch["wav"], batch["wav_lengths"], batch["tokens"], batch["token_lengths"])
    losses, keep, counts = transducer_loss_per_utt(model, enc, lengths, batch["tokens"], batch["token_lengths"],
                                                   pred=pred)
    loss = losses.sum() if losses.numel() else enc.float().sum() * 0.0  # keeps backward() valid
    return LossOutput(loss=loss, weight=float(keep.sum()), metrics={"rnnt": float(losses.detach().sum()), **counts})


# ---------------------------------------------------------------------------
# greedy decoding
# ---------------------------------------------------------------------------
@torch.no_grad()
def transducer_greedy(
    model: TransducerModel, enc: torch.Tensor, lengths: torch.Tensor, max_symbols: int = 5
) -> list[list[int]]:
    """Batched greedy search. ``enc (B, T, H_enc)``, ``lengths (B,)`` -> token-id lists.

    At each frame every utterance emits its best token until it picks blank (or has
    emitted ``max_symbols`` tokens on that frame); the predictor runs only for the
    utterances that emitted, and only their states change.
    """
    B, T, _ = enc.shape
    device = enc.device
    predictor, joiner = model.predictor, model.joiner
    enc_proj = joiner.project_encoder(enc)  # (B, T, J)
    out, state = predictor.step(torch.full((B,), BLANK, dtype=torch.long, device=device),
                                predictor.init_state(B, device))
    pred_proj = joiner.project_predictor(out)  # (B, J)
    emitted_tokens, emitted_masks = [], []
    for t in range(min(T, int(lengths.max()) if B else 0)):
        active = lengths > t
        for _ in range(max_symbols):
            best = joiner.joint(enc_proj[:, t], pred_proj).argmax(-1)  # (B,)
            emit = active & (best != BLANK)
            idx = emit.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            emitted_tokens.append(best)
            emitted_masks.append(emit)
            out, new = predictor.step(best[idx], tuple(s[idx] for s in state))
            pred_proj = pred_proj.index_copy(0, idx, joiner.project_predictor(out).to(pred_proj.dtype))
            state = tuple(s.index_copy(0, idx, n.to(s.dtype)) for s, n in zip(state, new))
            active = emit
    if not emitted_tokens:
        return [[] for _ in range(B)]
    tokens = torch.stack(emitted_tokens, 1).cpu()  # (B, steps)
    masks = torch.stack(emitted_masks, 1).cpu()
    return [row[m].tolist() for row, m in zip(tokens, masks)]


@torch.no_grad()
def transducer_decode(model: TransducerModel, batch: dict) -> list[list[int]]:
    enc, lengths = model.encode(batch["wav"], batch["wav_lengths"])
    return transducer_greedy(model, enc, lengths)


def build_transducer(config: ModelConfig, vocab_size: int) -> TransducerModel:
    return TransducerModel(config, vocab_size)


def transducer_nbest(model: TransducerModel, batch: dict, options, nbest: int | None = None, tokenizer=None,
                     lm=None) -> list:
    """``options.decoder`` ``beam`` (Graves 2012) or ``modified_beam`` (one symbol per frame, batched)."""
    from asr.decode.transducer import transducer_decode_nbest

    return transducer_decode_nbest(model, batch, decoder=options.decoder, beam=options.beam, nbest=nbest)


def _egl_head(model: TransducerModel, enc, enc_lengths, tokens, token_lengths) -> tuple[torch.Tensor, ...]:
    pred = model.predictor(tokens, token_lengths)  # (R, U+1, H)
    return (model.joiner(enc, pred).float(),)  # (R, T, U+1, V)


def _egl_losses(inputs, enc_lengths, tokens, token_lengths) -> torch.Tensor:
    return AF.rnnt_loss(inputs[0], tokens.int(), enc_lengths.int(), token_lengths.int(), blank=BLANK,
                        reduction="none", fused_log_softmax=True)


def transducer_egl_adapter(model: TransducerModel):
    """EGL's split: the encoder is the trunk; predictor and joiner see the hypothesis."""
    from asr.active.adapters import EGLAdapter, encode_trunk, has_rnn

    return EGLAdapter("transducer", encode_trunk, _egl_head, _egl_losses, rnn_trunk=has_rnn(model.encoder))


def transducer_stream_decoder(model: TransducerModel):
    from asr.decode.transducer import TransducerStreamDecoder

    return TransducerStreamDecoder(model)


@torch.no_grad()
def transducer_align(model: TransducerModel, batch: dict, token_seqs: list[list[int]]) -> list:
    """Viterbi alignment of ``token_seqs`` through the RNN-T lattice of ``batch``
    (:func:`asr.decode.transducer.transducer_token_alignment`): emission frames and probabilities."""
    from asr.decode.transducer import transducer_token_alignment

    enc, lengths = model.encode(batch["wav"], batch["wav_lengths"])
    return transducer_token_alignment(model, enc, lengths, token_seqs)


class _PredictorStep(nn.Module):
    """One predictor step with its state explicit, and the joiner's projection of its output."""

    def __init__(self, model: TransducerModel):
        super().__init__()
        self.predictor, self.joiner = model.predictor, model.joiner

    def forward(self, token: torch.Tensor, *state: torch.Tensor):
        out, new = self.predictor.step(token, tuple(state))
        return (self.joiner.project_predictor(out), *new)


class _Joint(nn.Module):
    def __init__(self, joiner: Joiner):
        super().__init__()
        self.joiner = joiner

    def forward(self, enc_proj: torch.Tensor, pred_proj: torch.Tensor) -> torch.Tensor:
        return self.joiner.joint(enc_proj, pred_proj)


def transducer_onnx_parts(model: TransducerModel, max_symbols: int = 5):
    """The streaming ONNX export's transducer part: the joiner's encoder projection as the head,
    the predictor step and the joint as graphs, decoded greedily (at most ``max_symbols`` per frame)."""
    from asr.export import Graph, OnnxParts, state_spec

    init = model.predictor.init_state(1)
    names = [f"s{i}" for i in range(len(init))]
    J = model.joiner.enc_proj.out_features
    predictor = Graph("predictor", _PredictorStep(model).eval(),
                      {"token": torch.zeros(1, dtype=torch.long), **dict(zip(names, init))},
                      ["pred_proj", *[f"{n}_out" for n in names]])
    joiner = Graph("joiner", _Joint(model.joiner).eval(), {"enc_proj": torch.zeros(2, J), "pred_proj": torch.zeros(2, J)},
                   ["logits"], {"enc_proj": {0: "N"}, "pred_proj": {0: "N"}, "logits": {0: "N"}})
    return OnnxParts(head=model.joiner.enc_proj, decoder="transducer_greedy", graphs=[predictor, joiner],
                     meta={"predictor_state": state_spec(dict(zip(names, init))), "max_symbols": max_symbols})


FAMILY = register_family(Family(
    "transducer", build_transducer, transducer_loss, transducer_decode, model_type=TransducerModel,
    decoders=("greedy", "beam", "modified_beam"), nbest=transducer_nbest, egl_adapter=transducer_egl_adapter,
    stream_decoder=transducer_stream_decoder, onnx_parts=transducer_onnx_parts, align=transducer_align))
