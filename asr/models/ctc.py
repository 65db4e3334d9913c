"""The CTC family: shared encoder + linear head, ``F.ctc_loss`` with blank = 0.

Example:
    >>> from asr.models.config import ModelConfig, EncoderConfig
    >>> cfg = ModelConfig(family="ctc", encoder=EncoderConfig(dim=16, layers=1))
    >>> model = CTCModel(cfg, vocab_size=30)
    >>> log_probs, lengths = model(torch.randn(2, 16000), torch.tensor([16000, 8000]))
    >>> log_probs.shape, lengths.tolist()
    (torch.Size([2, 23, 30]), [23, 11])
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from asr.constants import BLANK
from asr.models import Family, LossOutput, register_family
from asr.models.config import ModelConfig
from asr.models.encoders import build_encoder
from asr.models.frontend import Frontend



class CTCHead(nn.Module):
    """Encoder output ``(B, T, D)`` -> log-probabilities ``(B, T, V)`` (float32)."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.linear = nn.Linear(dim, vocab_size)

    def forward(self, enc: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.linear(enc).float(), dim=-1)


class CTCModel(nn.Module):
    """Waveforms ``(B, N)`` -> CTC log-probabilities ``(B, T', V)`` and frame counts ``(B,)``."""

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.frontend = Frontend(config)
        self.encoder = build_encoder(config.encoder, self.frontend.dim)
        self.head = CTCHead(self.encoder.output_dim, vocab_size)

    def encode(self, wav: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, lengths = self.frontend(wav, wav_lengths)
        return self.encoder(feats, lengths)

    def forward(self, wav: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc, lengths = self.encode(wav, wav_lengths)
        return self.head(enc), lengths


def ctc_min_frames(tokens: torch.Tensor, token_lengths: torch.Tensor) -> torch.Tensor:
    """Frames CTC needs for each label sequence: its length plus one blank per repeated pair."""
    valid = torch.arange(tokens.shape[1], device=tokens.device) < token_lengths.unsqueeze(1)
    repeats = (tokens[:, 1:] == tokens[:, :-1]) & valid[:, 1:]
    return token_lengths + repeats.sum(1)


def ctc_loss_per_utt(
    log_probs: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor, token_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Per-utterance CTC negative log-likelihood over the usable utterances.

    Utterances with an empty transcript, or too few frames for their labels, are left out
    and counted (``empty``, ``too_short``) instead of producing an infinite loss.
    Returns ``(losses (K,), keep (B,) bool, counts)``.
    """
    keep = (token_lengths > 0) & (lengths >= ctc_min_frames(tokens, token_lengths))
    counts = {"empty": float((token_lengths == 0).sum()),
              "too_short": float(((token_lengths > 0) & ~keep).sum())}
    if not keep.any():
        return log_probs.new_zeros(0), keep, counts
    lp = log_probs[keep].transpose(0, 1)  # (T, K, V)
    losses = F.ctc_loss(lp, tokens[keep], lengths[keep], token_lengths[keep], blank=BLANK,
                        reduction="none", zero_infinity=False)
    return losses, keep, counts


def ctc_loss(model: CTCModel, batch: dict) -> LossOutput:
    log_probs, lengths = model(batch["wav"], batch["wav_lengths"])
    losses, keep, counts = ctc_loss_per_utt(log_probs, lengths, batch["tokens"], batch["token_lengths"])
    return LossOutput(loss=losses.sum(), weight=float(keep.sum()), metrics={"ctc": float(losses.detach().sum()), **counts})


def ctc_greedy(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks. ``(B, T, V)`` -> token-id lists."""
    best = log_probs.argmax(-1)  # (B, T)
    prev = F.pad(best, (1, 0), value=BLANK)[:, :-1]
    keep = (best != BLANK) & (best != prev) & (torch.arange(best.shape[1], device=best.device) < lengths.unsqueeze(1))
    return [row[k].tolist() for row, k in zip(best.cpu(), keep.cpu())]


@torch.no_grad()
def ctc_decode(model: CTCModel, batch: dict) -> list[list[int]]:
    log_probs, lengths = model(batch["wav"], batch["wav_lengths"])
    return ctc_greedy(log_probs, lengths)


def build_ctc(config: ModelConfig, vocab_size: int) -> CTCModel:
    return CTCModel(config, vocab_size)


def ctc_nbest(model: CTCModel, batch: dict, options, nbest: int | None = None, tokenizer=None, lm=None) -> list:
    """Prefix beam search (:mod:`asr.decode.ctc`) with ``options.beam``, the LM and word bonus."""
    from asr.decode.ctc import ctc_decode_nbest

    return ctc_decode_nbest(model, batch, options.beam, lm=lm, lm_weight=options.lm_weight,
                            word_bonus=options.word_bonus, tokenizer=tokenizer)


def _egl_head(model: CTCModel, enc, enc_lengths, tokens, token_lengths) -> tuple[torch.Tensor, ...]:
    return (model.head.linear(enc).float(),)  # pre-softmax logits (R, T, V)


def _egl_losses(inputs, enc_lengths, tokens, token_lengths) -> torch.Tensor:
    from asr.active.adapters import ctc_nll

    return ctc_nll(inputs[0], enc_lengths, tokens, token_lengths)


def ctc_egl_adapter(model: CTCModel):
    """EGL's split: the encoder is the trunk, the output layer (closed-form gradient) the head."""
    from asr.active.adapters import EGLAdapter, encode_trunk, has_rnn

    return EGLAdapter("ctc", encode_trunk, _egl_head, _egl_losses, output_layer="head.linear",
                      rnn_trunk=has_rnn(model.encoder))


def ctc_stream_decoder(model: CTCModel):
    from asr.decode.ctc import CTCStreamDecoder

    return CTCStreamDecoder(model)


@torch.no_grad()
def ctc_align(model: CTCModel, batch: dict, token_seqs: list[list[int]]) -> list:
    """Forced alignment of ``token_seqs`` to the model's CTC posteriors over ``batch``
    (:func:`asr.decode.timestamps.ctc_token_alignment`): token spans and mean posteriors."""
    from asr.decode.timestamps import ctc_token_alignment

    log_probs, lengths = model(batch["wav"], batch["wav_lengths"])
    return ctc_token_alignment(log_probs, lengths, token_seqs)


def ctc_onnx_parts(model: CTCModel):
    """The streaming ONNX export's CTC part: the head gives log-probabilities, decoded greedily."""
    from asr.export import OnnxParts

    return OnnxParts(head=model.head, decoder="ctc_greedy")


FAMILY = register_family(Family(
    "ctc", build_ctc, ctc_loss, ctc_decode, model_type=CTCModel, decoders=("greedy", "beam"), nbest=ctc_nbest,
    egl_adapter=ctc_egl_adapter, stream_decoder=ctc_stream_decoder, onnx_parts=ctc_onnx_parts, align=ctc_align))
