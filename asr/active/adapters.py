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

from asr.constants import BLANK
from asr.errors import UsageError
from asr.models import Family, family_of, get_family

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


def encode_trunk(model: nn.Module, wav: torch.Tensor, wav_lengths: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The trunk of every built-in family: front-end + encoder (``model.encode``)."""
    return model.encode(wav, wav_lengths)


def ctc_nll(logits: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor, token_lengths: torch.Tensor
            ) -> torch.Tensor:
    """Per-row CTC loss from pre-softmax logits ``(R, T, V)`` (infeasible rows cost 0)."""
    lp = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
    if tokens.shape[1] == 0:
        tokens = tokens.new_zeros(tokens.shape[0], 1)
    return F.ctc_loss(lp, tokens, lengths, token_lengths, blank=BLANK, reduction="none", zero_infinity=True)


def has_rnn(module: nn.Module) -> bool:
    """Whether ``module`` holds recurrent layers (``torch.func.vmap`` cannot batch over them)."""
    return any(isinstance(m, nn.RNNBase) for m in module.modules())


def adapter_for(model: nn.Module, family: Family | str | None = None) -> EGLAdapter:
    """The :class:`EGLAdapter` of ``model``, from its family's entry in the registry
    (``family`` by name or object; default: the family that built ``model``)."""
    if family is None:
        family = family_of(model)
    elif isinstance(family, str):
        family = get_family(family)
    if family.egl_adapter is None:
        raise UsageError(f"EGL has no adapter for model family {family.name!r}")
    return family.egl_adapter(model)


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
