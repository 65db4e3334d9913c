"""The result type every search returns: an N-best list of hypotheses, best first."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Hypothesis:
    """One decoded label sequence.

    ``score`` is what the search ranked by (model log-probability plus any LM, bonus and
    length terms); ``am_score`` the model's own log-probability of ``tokens`` (summed over
    alignments where the search does that), ``lm_score`` the language-model log-probability.
    """

    tokens: list[int]
    score: float
    am_score: float = 0.0
    lm_score: float = 0.0
    extra: dict = field(default_factory=dict)


NBest = list[Hypothesis]  # best first
