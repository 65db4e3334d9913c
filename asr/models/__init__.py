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
    """A model family: how to build it, its loss, and its greedy decoder.

    ``targets`` says what the batches must carry: ``"tokens"`` (text through a
    tokenizer) or ``"labels"`` (class indices).
    ``build(config, num_outputs) -> nn.Module``;
    ``loss(model, batch) -> LossOutput``;
    ``decode(model, batch) -> list`` of token-id lists (or class ids) for dev error rates;
    ``prepare(model, train_items, targets)``, optional, sets what a new model learns from
    the training set before the first step (the keyword spotter's class weights), where
    ``targets`` is the tokenizer or the list of class labels.
    """

    name: str
    build: Callable[[ModelConfig, int], nn.Module]
    loss: Callable[[nn.Module, dict], LossOutput]
    decode: Callable[[nn.Module, dict], list]
    targets: str = "tokens"
    prepare: Callable[[nn.Module, list, object], None] | None = None


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
