"""How each model family splits into a trunk that sees only the audio and a head that sees the labels.

Expected Gradient Length needs ``||grad L(x, y_k)||^2`` for every utterance ``x`` and every
hypothesis ``y_k`` of its N-best list. The trunk (front-end + encoder) is the same for all
hypotheses of one utterance; only the head and the loss depend on ``y_k``. An
:class:`EGLAdapter` exposes that split for one model:

- ``encode(model, wav (B, N), wav_lengths (B,)) -> enc (B, T, D), enc_lengths (B,)``;
- ``head(model, enc (R, T, D), enc_lengths (R,), tokens (R, U), token_lengths (R,))`` -> the
  tensors the loss reads ("loss inputs", e.g. CTC logits ``(R, T, V)``), each with the row
  dimension first;
- ``losses(loss_inputs, enc_lengths, tokens, token_lengths) -> (R,)``: the per-row negative
  log-likelihood, a function of the loss inputs only, so its gradient with respect to them can be
  taken batched and the rest of the model is a plain vector-Jacobian product.

The per-row loss is the family's training loss of that pair (``family.loss`` on a batch of one
gives the same number, tested), except that CTC terms keep an empty hypothesis (its loss is
``-log P(blank...blank | x)``, where training drops empty transcripts) and an infeasible
one costs 0 (``zero_infinity``), as training skips it.

Example:
    >>> from asr.models.config import ModelConfig, EncoderConfig
    >>> from asr.models import get_family
    >>> model = get_family("ctc").build(ModelConfig(encoder=EncoderConfig(dim=8, layers=1)), 6).eval()
    >>> ad = adapter_for(model, "ctc")
    >>> enc, el = ad.encode(model, torch.randn(1, 8000), torch.tensor([8000]))
    >>> ins = ad.head(model, enc.expand(2, -1, -1), el.expand(2), torch.tensor([[3, 4], [5, 0]]), torch.tensor([2, 1]))
    >>> ad.losses(ins, el.expand(2), torch.tensor([[3, 4], [5, 0]]), torch.tensor([2, 1])).shape
    torch.Size([2])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from asr.errors import UsageError

Tensors = tuple[torch.Tensor, ...]


@dataclass
class EGLAdapter:
    """The trunk/head split of one model (see the module docstring).

    ``trunk_prefixes``: parameter-name prefixes of the trunk (everything else is head).
    ``output_layer``: the name of a final ``nn.Linear`` whose per-sample gradient has a closed
    form from the gradient of the loss with respect to its output (the first loss input) and its
    input (the encoder output); empty when the head has no such layer.
    ``rnn_trunk``: the trunk holds recurrent layers over packed sequences, which ``torch.func.vmap``
    cannot batch over utterances (the engine then runs one utterance at a time).
    """

    family: str
    encode: Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    head: Callable[..., Tensors]
    losses: Callable[..., torch.Tensor]
    trunk_prefixes: tuple[str, ...] = ("frontend.", "encoder.")
    output_layer: str = ""
    rnn_trunk: bool = False

    def row_losses(self, model: nn.Module, wav: torch.Tensor, wav_lengths: torch.Tensor, tokens: torch.Tensor,
                   token_lengths: torch.Tensor) -> torch.Tensor:
        """The whole computation for rows of (utterance, hypothesis): ``(R, N)`` audio -> ``(R,)`` losses."""
        enc, el = self.encode(model, wav, wav_lengths)
        return self.losses(self.head(model, enc, el, tokens, token_lengths), el, tokens, token_lengths)


def _encode(model: nn.Module, wav: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return model.encode(wav, wav_lengths)


def _ctc_nll(logits: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor, token_lengths: torch.Tensor
             ) -> torch.Tensor:
    """Per-row CTC loss from pre-softmax logits ``(R, T, V)`` (blank 0; infeasible rows cost 0)."""
    lp = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
    if tokens.shape[1] == 0:
        tokens = tokens.new_zeros(tokens.shape[0], 1)
    return F.ctc_loss(lp, tokens, lengths, token_lengths, blank=0, reduction="none", zero_infinity=True)


# -- CTC ----------------------------------------------------------------------------------------


def _ctc_head(model, enc, enc_lengths, tokens, token_lengths) -> Tensors:
    return (model.head.linear(enc).float(),)


def _ctc_losses(inputs: Tensors, enc_lengths, tokens, token_lengths) -> torch.Tensor:
    return _ctc_nll(inputs[0], enc_lengths, tokens, token_lengths)


# -- RNN-T ----------------------------------------------------------------------------------------


def _transducer_head(model, enc, enc_lengths, tokens, token_lengths) -> Tensors:
    pred = model.predictor(tokens, token_lengths)  # (R, U+1, H)
    return (model.joiner(enc, pred).float(),)  # (R, T, U+1, V)


def _transducer_losses(inputs: Tensors, enc_lengths, tokens, token_lengths) -> torch.Tensor:
    import torchaudio.functional as AF

    return AF.rnnt_loss(inputs[0], tokens.int(), enc_lengths.int(), token_lengths.int(), blank=0,
                        reduction="none", fused_log_softmax=True)


# -- attention encoder-decoder --------------------------------------------------------------------


def _attention_head(model, enc, enc_lengths, tokens, token_lengths) -> Tensors:
    from asr.models.seq2seq import _attendable, decoder_io

    ys_in, _, _ = decoder_io(tokens, token_lengths)
    out = (model.decoder(*_attendable(enc, enc_lengths), ys_in).float(),)  # (R, U+1, V)
    if model.ctc_head is not None:
        out += (model.ctc_head.linear(enc).float(),)  # (R, T, V)
    return out


def _attention_losses(model) -> Callable[..., torch.Tensor]:
    w, smoothing = float(model.ctc_weight), float(model.label_smoothing)

    def losses(inputs: Tensors, enc_lengths, tokens, token_lengths) -> torch.Tensor:
        from asr.models.seq2seq import decoder_io

        _, ys_out, valid = decoder_io(tokens, token_lengths)
        ce = F.cross_entropy(inputs[0].transpose(1, 2), ys_out, reduction="none", label_smoothing=smoothing)
        att = (ce * valid).sum(1)
        if len(inputs) == 1:
            return att
        return w * _ctc_nll(inputs[1], enc_lengths, tokens, token_lengths) + (1.0 - w) * att

    return losses


def _has_rnn(module: nn.Module) -> bool:
    return any(isinstance(m, nn.RNNBase) for m in module.modules())


def adapter_for(model: nn.Module, family: str) -> EGLAdapter:
    """The :class:`EGLAdapter` of ``model`` (a ``ctc``, ``transducer`` or ``attention`` model)."""
    rnn = _has_rnn(model.encoder)
    if family == "ctc":
        return EGLAdapter("ctc", _encode, _ctc_head, _ctc_losses, output_layer="head.linear", rnn_trunk=rnn)
    if family == "transducer":
        return EGLAdapter("transducer", _encode, _transducer_head, _transducer_losses, rnn_trunk=rnn)
    if family == "attention":
        return EGLAdapter("attention", _encode, _attention_head, _attention_losses(model), rnn_trunk=rnn)
    raise ValueError(f"EGL has no adapter for model family {family!r} (ctc, transducer or attention)")


def select_parameters(model: nn.Module, prefixes: Sequence[str] | None = None) -> list[str]:
    """Names of the trainable parameters whose gradient EGL measures: all of them by default,
    else those whose name starts with one of ``prefixes`` (``"encoder."``, ``"head.linear"``...).

    Raises:
        ValueError: when no trainable parameter matches.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if prefixes:
        names = [n for n in names if any(n.startswith(p) for p in prefixes)]
    if not names:
        raise UsageError(f"no trainable parameter matches {list(prefixes or [])}")
    return names
