"""Turning scores into a selection: budgets, a per-speaker cap and k-center diversity.

:func:`select` ranks the pool by score (highest first; ties by id) and takes utterances until the
budget is spent: a count of utterances, or hours of audio (an utterance that would overflow
the hour budget is passed over and later, shorter ones may still fit). ``max_per_speaker``
passes over utterances of a speaker (the item's ``"speaker"`` field; items without one are
not capped) who already has that many. With ``diversity="kcenter"`` the ranking only proposes
candidates: the best ``candidates`` times the budget; among them, after the best-scored one,
the next pick is always the candidate farthest (Euclidean) from everything picked so far
(greedy k-center, Sener & Savarese 2018) on the utterances' embeddings (mean-pooled encoder
outputs), so near-duplicates of a picked utterance wait their turn.

Example:
    >>> pool = [{"id": "a", "duration": 2.0, "score": 0.9}, {"id": "b", "duration": 1.0, "score": 0.5},
    ...         {"id": "c", "duration": 3.0, "score": 0.7}]
    >>> [it["id"] for it in select(pool, parse_budget("2"))]
    ['a', 'c']
    >>> [it["id"] for it in select(pool, Budget(4.0 / 3600, "hours"))]
    ['a', 'b']
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch

from asr.errors import UsageError

log = logging.getLogger("asr.active")


@dataclass(frozen=True)
class Budget:
    """``amount`` of ``unit`` (``"utterances"`` or ``"hours"``)."""

    amount: float
    unit: str = "utterances"

    def cost(self, item: dict) -> float:
        return 1.0 if self.unit == "utterances" else float(item.get("duration", 0.0)) / 3600.0


def parse_budget(text: str) -> Budget:
    """``"500"`` -> 500 utterances; ``"2.5h"`` -> 2.5 hours.

    >>> parse_budget("500"), parse_budget("2.5h")
    (Budget(amount=500.0, unit='utterances'), Budget(amount=2.5, unit='hours'))
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(h?)\s*", str(text))
    if not m:
        raise UsageError(f"budget must be a number of utterances (500) or hours (2.5h), got {text!r}")
    amount, unit = float(m.group(1)), "hours" if m.group(2) else "utterances"
    if unit == "utterances" and amount != int(amount):
        raise UsageError(f"a budget in utterances must be a whole number, got {text!r}")
    if amount <= 0:
        raise UsageError(f"budget must be positive, got {text!r}")
    return Budget(amount, unit)


def rank(items: Sequence[dict]) -> list[dict]:
    """Items by ``score`` descending, ties (and NaN, last) by id."""
    def key(it: dict):
        s = float(it["score"])
        return (math.isnan(s), -s if not math.isnan(s) else 0.0, str(it["id"]))

    return sorted(items, key=key)


class _Picker:
    """Budget and speaker-cap bookkeeping of one selection."""

    def __init__(self, budget: Budget, max_per_speaker: int):
        self.budget, self.cap = budget, max_per_speaker
        self.spent, self.per_speaker, self.picked = 0.0, {}, []

    def fits(self, item: dict) -> bool:
        if self.cap > 0 and "speaker" in item and self.per_speaker.get(str(item["speaker"]), 0) >= self.cap:
            return False
        return self.spent + self.budget.cost(item) <= self.budget.amount * (1 + 1e-12)

    def take(self, item: dict) -> None:
        self.spent += self.budget.cost(item)
        if "speaker" in item:
            spk = str(item["speaker"])
            self.per_speaker[spk] = self.per_speaker.get(spk, 0) + 1
        self.picked.append(item)

    @property
    def full(self) -> bool:
        return self.spent >= self.budget.amount - 1e-12


def select(items: Sequence[dict], budget: Budget, max_per_speaker: int = 0, diversity: str = "none",
           embeddings: torch.Tensor | None = None, candidates: float = 3.0) -> list[dict]:
    """The selected items, in the order they were picked.

    Args:
        items: pool items with ``id``, ``duration``, ``score`` (and optionally ``speaker``).
        budget: how much to select; more than the pool selects everything (with a warning).
        max_per_speaker: at most this many utterances per speaker (0 = no cap).
        diversity: ``none`` or ``kcenter`` (needs ``embeddings`` ``(len(items), D)``, row-aligned).
        candidates: with ``kcenter``, the candidate set is this many budgets of the best-ranked items.
    """
    if diversity not in ("none", "kcenter"):
        raise UsageError(f"diversity must be none or kcenter, got {diversity!r}")
    total = sum(budget.cost(it) for it in items)
    if total <= budget.amount:
        log.warning("the budget (%g %s) covers the whole pool (%g %s): selecting everything",
                    budget.amount, budget.unit, total, budget.unit)
    index = {id(it): i for i, it in enumerate(items)}
    ranked = rank(items)
    if diversity == "none":
        picker = _Picker(budget, max_per_speaker)
        for it in ranked:
            if picker.full:
                break
            if picker.fits(it):
                picker.take(it)
        return picker.picked
    if embeddings is None or len(embeddings) != len(items):
        raise ValueError("diversity=kcenter needs one embedding per pool item")
    return _kcenter(ranked, [index[id(it)] for it in ranked], embeddings.double(), budget, max_per_speaker, candidates)


def _kcenter(ranked: list[dict], rows: list[int], emb: torch.Tensor, budget: Budget, cap: int,
             candidates: float) -> list[dict]:
    """Greedy k-center over the best ``candidates`` budgets of ``ranked`` (embedding rows ``rows``)."""
    pool, spent = [], 0.0
    for it, r in zip(ranked, rows):  # the candidate set
        if spent >= candidates * budget.amount:
            break
        pool.append((it, r))
        spent += budget.cost(it)
    picker = _Picker(budget, cap)
    x = emb[[r for _, r in pool]]
    dist = torch.full((len(pool),), math.inf, dtype=torch.float64)
    open_ = torch.ones(len(pool), dtype=torch.bool)
    while not picker.full and bool(open_.any()):
        for j in open_.nonzero().flatten().tolist():  # close candidates that can no longer fit
            if not picker.fits(pool[j][0]):
                open_[j] = False
        if not bool(open_.any()):
            break
        # farthest open candidate; the first pick (all distances inf) is the best-ranked one
        j = int(torch.where(open_, dist, torch.tensor(-1.0, dtype=torch.float64)).argmax())
        picker.take(pool[j][0])
        open_[j] = False
        dist = torch.minimum(dist, (x - x[j]).norm(dim=1))
    return picker.picked
