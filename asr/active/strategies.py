"""Active-learning scores: random, least confidence, N-best entropy and Expected Gradient Length.

Every strategy gives each unlabeled utterance a score where HIGHER means "label this first".

- ``random``: a uniform number in ``[0, 1)`` from a hash of ``(seed, id)``, so an utterance gets
  the same number whatever the batch, shard or process that scores it.
- ``confidence`` (least confidence): ``-log P(y_1 | x) / max(1, |y_1|)``, minus the
  length-normalised log-probability of the best hypothesis ``y_1`` (its ``am_score`` per token).
- ``entropy``: ``-sum_k p_k log p_k`` over the N-best list, ``p_k`` its model probabilities
  renormalised over the list (a softmax of the ``am_score`` values).
- ``egl`` (Huang et al. 2016): ``sum_k p_k ||grad_theta L(x, y_k)||^2`` with the same ``p_k``;
  the squared norms come batched from :func:`asr.active.gradients.sq_grad_norms`.

:func:`make_scorer` wraps a strategy for a model: ``scorer(batch) -> list of scores``, where a
batch is what :func:`asr.data.dataset.collate_batch` returns (``ids``, ``wav``, ``wav_lengths``).

Example:
    >>> from asr.decode.hypothesis import Hypothesis
    >>> nb = [Hypothesis([5, 6], score=-1.0, am_score=-1.0), Hypothesis([5], score=-2.0, am_score=-2.0)]
    >>> round(confidence_scores([nb])[0], 3), round(entropy_scores([nb])[0], 4)
    (0.5, 0.5822)
    >>> round(egl_scores([nb], torch.tensor([[2.0, 10.0]]))[0], 4)
    4.1515
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable, Sequence

import torch
import torch.nn as nn

from asr.decode.hypothesis import NBest
from asr.models import Family, family_of, get_family
from asr.errors import UsageError

STRATEGIES = ("random", "confidence", "entropy", "egl")

Scorer = Callable[[dict], list]


def nbest_posteriors(nbest: NBest) -> torch.Tensor:
    """``p_k`` of an N-best list: ``softmax(am_score)`` over the list (float64; empty for no hypothesis).

    >>> from asr.decode.hypothesis import Hypothesis
    >>> nbest_posteriors([Hypothesis([1], -1.0, -1.0), Hypothesis([2], -1.0, -1.0)]).tolist()
    [0.5, 0.5]
    """
    scores = torch.tensor([h.am_score for h in nbest], dtype=torch.float64)
    if scores.numel() == 0 or not bool(torch.isfinite(scores).any()):
        return torch.full_like(scores, 1.0 / max(1, scores.numel()))
    return torch.softmax(scores, dim=0)


def random_scores(ids: Sequence[str], seed: int = 0) -> list[float]:
    """A uniform number in ``[0, 1)`` per id, a function of ``(seed, id)`` only.

    >>> random_scores(["a", "b"], 0) == random_scores(["a", "b"], 0) != random_scores(["a", "b"], 1)
    True
    """
    out = []
    for uid in ids:
        digest = hashlib.sha256(f"{seed}\t{uid}".encode()).digest()
        out.append(int.from_bytes(digest[:8], "big") / 2.0**64)
    return out


def confidence_scores(nbests: Sequence[NBest]) -> list[float]:
    """Least confidence: minus the best hypothesis' log-probability per token (no hypothesis: ``inf``)."""
    out = []
    for nb in nbests:
        if not nb or not math.isfinite(nb[0].am_score):
            out.append(math.inf)
        else:
            out.append(-nb[0].am_score / max(1, len(nb[0].tokens)))
    return out


def entropy_scores(nbests: Sequence[NBest]) -> list[float]:
    """Entropy (nats) of the N-best posteriors renormalised over the list."""
    out = []
    for nb in nbests:
        p = nbest_posteriors(nb)
        p = p[p > 0]
        out.append(float(-(p * p.log()).sum()) if p.numel() else 0.0)
    return out


def egl_scores(nbests: Sequence[NBest], sq_norms: torch.Tensor) -> list[float]:
    """``sum_k p_k ||g_k||^2`` per utterance; ``sq_norms`` ``(B, K)`` is row-aligned with the lists."""
    out = []
    for b, nb in enumerate(nbests):
        p = nbest_posteriors(nb)
        out.append(float((p * sq_norms[b, : len(nb)].double()).sum()) if len(nb) else 0.0)
    return out


def _family(model: nn.Module, family: Family | str | None) -> Family:
    if family is None:
        return family_of(model)
    return get_family(family) if isinstance(family, str) else family


def decode_nbest(model: nn.Module, family: Family | str | None, batch: dict, nbest: int) -> list[NBest]:
    """The family's beam search with beam = ``nbest`` (at most ``nbest`` hypotheses per utterance);
    ``family`` by object or name (default: the family that built ``model``)."""
    family = _family(model, family)
    if family.nbest is None:
        raise UsageError(f"model family {family.name!r} has no N-best search")
    from asr.decode import DecodeOptions

    return family.nbest(model, batch, DecodeOptions(decoder="beam", beam=nbest), nbest=nbest)


def make_scorer(strategy: str, model: nn.Module | None = None, family: Family | str | None = None, nbest: int = 4,
                seed: int = 0, params: Sequence[str] | None = None) -> Scorer:
    """``scorer(batch) -> scores`` for ``strategy`` (one of :data:`STRATEGIES`).

    ``family``: the model's family (object or name; default: the family that built ``model``).

    ``params``: parameter-name prefixes EGL differentiates (default: all trainable parameters);
    ``"output"`` stands for the family's output layer (``head.linear`` for CTC: a closed form).
    The model is put in eval mode (no dropout, no SpecAugment).
    """
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
    if strategy == "random":
        return lambda batch: random_scores(batch["ids"], seed)
    if model is None:
        raise UsageError(f"strategy {strategy!r} needs a model")
    if nbest < 1:
        raise UsageError(f"nbest must be >= 1, got {nbest}")
    model.eval()
    family = _family(model, family)
    if strategy in ("confidence", "entropy"):
        fn = confidence_scores if strategy == "confidence" else entropy_scores
        return lambda batch: fn(decode_nbest(model, family, batch, nbest))

    from asr.active.adapters import adapter_for, select_parameters
    from asr.active.gradients import sq_grad_norms

    adapter = adapter_for(model, family)
    if params and "output" in params:  # the family's output layer, whatever its name
        if not adapter.output_layer:
            raise UsageError(f"model family {family.name!r} names no output layer for EGL's 'output'")
        params = [adapter.output_layer if p == "output" else p for p in params]
    names = select_parameters(model, params)

    def egl(batch: dict) -> list[float]:
        nbests = decode_nbest(model, family, batch, nbest)
        sq = sq_grad_norms(model, adapter, batch["wav"], batch["wav_lengths"], [[h.tokens for h in nb] for nb in nbests],
                           params=names)
        return egl_scores(nbests, sq)

    return egl
