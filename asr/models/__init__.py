"""Model families on one shared encoder family and front-end.

A family is the unit the training loop, the commands and the decoders work with:
it builds its model and computes its loss (outside the model, torchaudio style).
Families register themselves in :data:`FAMILIES`; the keyword spotter registers
its own from the ``kws`` package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from asr.config import ConfigError
from asr.errors import UsageError
from asr.models.config import ModelConfig


@dataclass
class LossOutput:
    """What a family's loss returns for one batch.

    ``loss`` is the SUM over the batch of whatever is averaged (utterances by default),
    ``weight`` the count it is averaged over; the training loop divides by the total
    weight across gradient accumulation and data-parallel ranks, so one process and
    N processes see the same gradient for the same global batch.
    ``metrics`` are batch sums to log (e.g. partial losses, skipped utterances).
    """

    loss: torch.Tensor
    weight: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Family:
    """A model family: everything that differs per family, in one place.

    Callers ask the registry (:func:`get_family`, :func:`family_of`) and never branch on a
    family's name; a new family is one module that registers one of these.

    ``targets`` says what the batches must carry: ``"tokens"`` (text through a tokenizer: a
    speech recognizer) or ``"labels"`` (class indices: a classifier such as the keyword spotter).

    * ``build(config, num_outputs) -> nn.Module``; ``model_type`` is the class it returns, so
      that :func:`family_of` finds the family of a model.
    * ``loss(model, batch) -> LossOutput``.
    * ``decode(model, batch) -> list`` of token-id lists (or class ids): greedy, for dev error rates.
    * ``prepare(model, train_items, targets)``, optional: what a new model learns from the
      training set before the first step (the keyword spotter's class weights); ``targets`` is
      the tokenizer or the list of class labels.
    * ``decoders``: the ``--decoder`` names the family accepts (``greedy`` always).
    * ``nbest(model, batch, options, nbest, tokenizer, lm) -> list of N-best lists`` (best first):
      the family's beam search with :class:`asr.decode.DecodeOptions` ``options``, at most
      ``nbest`` hypotheses per utterance; ``None`` = greedy only.
    * ``egl_adapter(model) -> asr.active.adapters.EGLAdapter``: how Expected Gradient Length
      splits the model into an audio-only trunk and a label-dependent head; ``None`` = no EGL.
    * ``stream_decoder(model)``: greedy decoding carried across the chunks of a stream (see
      :mod:`asr.decode.streaming`): an object with ``init_state(device)``, ``step(enc, state)``
      and ``alignment(state)`` (the emitted tokens' frames and confidences, an
      :class:`asr.decode.timestamps.TokenAlignment`); ``None`` = the family cannot stream.
    * ``align(model, batch, token_seqs) -> list of asr.decode.timestamps.TokenAlignment``: where
      the given token sequences (one per utterance of ``batch``, from any decoder) sit in the
      encoder frames (first and last frame of each token) and the model's confidence in each
      token; it gives word timestamps (:func:`asr.decode.transcribe_items` with
      ``timestamps=True``). ``None`` = no timestamps.
    * ``onnx_parts(model) -> asr.export.OnnxParts``: what the family adds to the streaming ONNX
      export after the shared encoder (its head on the encoder frames, its decoder graphs and
      the name of the torch-free greedy decoder in :mod:`asr.runtime.recognizer`); ``None`` =
      no ONNX export.
    """

    name: str
    build: Callable[[ModelConfig, int], nn.Module]
    loss: Callable[[nn.Module, dict], LossOutput]
    decode: Callable[[nn.Module, dict], list]
    targets: str = "tokens"
    prepare: Callable[[nn.Module, list, object], None] | None = None
    model_type: type | None = None
    decoders: tuple[str, ...] = ("greedy",)
    nbest: Callable[..., list] | None = None
    egl_adapter: Callable[[nn.Module], object] | None = None
    stream_decoder: Callable[[nn.Module], object] | None = None
    onnx_parts: Callable[[nn.Module], object] | None = None
    align: Callable[[nn.Module, dict, list], list] | None = None

    @property
    def recognizer(self) -> bool:
        """Whether the family transcribes speech (token targets) rather than classifying clips."""
        return self.targets == "tokens"


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        _load_builtin()
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r} (known: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[name]


def all_families() -> list[Family]:
    """Every registered family, the built-in ones and those other packages declare."""
    _load_builtin()
    return list(FAMILIES.values())


def family_of(model: nn.Module) -> Family:
    """The family whose ``build`` made ``model`` (by its ``model_type``)."""
    inner = getattr(model, "module", model)  # DDP / FSDP wrappers
    for family in all_families():
        if family.model_type is not None and isinstance(inner, family.model_type):
            return family
    raise UsageError(f"{type(inner).__name__} is not a model of a registered family "
                     f"({', '.join(sorted(FAMILIES))})")


def _load_builtin() -> None:
    """Import the built-in families and those other packages declare under the
    ``asr.families`` entry-point group (the keyword spotter's ``crnn``)."""
    import importlib
    from importlib.metadata import entry_points

    modules = ["asr.models.ctc", "asr.models.transducer", "asr.models.seq2seq"]
    modules += [ep.value.split(":")[0] for ep in entry_points(group="asr.families")]
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
