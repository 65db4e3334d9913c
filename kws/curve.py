"""How sure an accuracy is, and how it grows with the number of training speakers.

* :func:`speaker_bootstrap` resamples whole speakers (not clips): the clips of one speaker are
  not independent, so a clip-level binomial interval is too narrow when a few speakers
  contribute many clips each (as in the real Speech Commands clips in ``../shared/data``).
* :func:`count_speakers` counts the people in a manifest (``_silence_`` clips are noise, not
  speakers).
* :func:`fit_log_curve` fits ``accuracy = a + b * log2(speakers)`` and says where it would
  reach a target; :func:`save_curve_plot` draws the points, their intervals and the fit.

Example:
    >>> import numpy as np
    >>> correct = np.array([1, 1, 1, 0, 1, 0])
    >>> lo, hi = speaker_bootstrap(correct, ["a", "a", "a", "b", "b", "c"], n_resamples=2000)
    >>> bool(lo < correct.mean() < hi)
    True
    >>> fit = fit_log_curve([8, 16, 32], [0.7, 0.75, 0.8])
    >>> round(fit.per_doubling, 3), round(fit.speakers_for(0.9))
    (0.05, 128)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from asr.constants import SILENCE
from asr.errors import MissingFileError, UsageError
from asr.utils import atomic_open
from kws.data import speaker_of_item

__all__ = ["speaker_bootstrap", "bootstrap_accuracies", "count_speakers", "LogFit", "fit_log_curve",
           "save_curve_plot", "CurveReport", "speaker_curve"]


def _groups(correct: np.ndarray, speakers: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-speaker ``(clips right, clips)``."""
    correct = np.asarray(correct, dtype=np.float64).reshape(-1)
    if len(correct) != len(speakers):
        raise ValueError(f"{len(correct)} results but {len(speakers)} speakers")
    if len(correct) == 0:
        raise UsageError("no clips to resample")
    _, idx = np.unique(np.asarray(speakers, dtype=str), return_inverse=True)
    return np.bincount(idx, weights=correct), np.bincount(idx).astype(np.float64)


def bootstrap_accuracies(correct: np.ndarray, speakers: Sequence[str], n_resamples: int = 2000,
                         seed: int = 0) -> np.ndarray:
    """Accuracies of ``n_resamples`` resamples, each drawing as many speakers as there are, with
    replacement, and taking all the clips of every speaker drawn; ``(n_resamples,)``."""
    right, clips = _groups(correct, speakers)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(clips), np.full(len(clips), 1.0 / len(clips)), size=n_resamples)  # (R, G)
    return (draws @ right) / (draws @ clips)


def speaker_bootstrap(correct: np.ndarray, speakers: Sequence[str], level: float = 0.95,
                      n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the accuracy over speaker resamples (:func:`bootstrap_accuracies`).

    Args:
        correct: ``(N,)`` 1 where a clip was classified right, else 0.
        speakers: ``N`` speaker ids; a clip with an id of its own is resampled alone.
        level: coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
    """
    acc = bootstrap_accuracies(correct, speakers, n_resamples, seed)
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(acc, [tail, 100.0 - tail])
    return float(lo), float(hi)


def count_speakers(items: Sequence[dict]) -> int:
    """Distinct ``speaker`` values of the items that are not ``_silence_`` (noise is no speaker)."""
    return len({speaker_of_item(it) for it in items if it.get("label") != SILENCE})


@dataclass(frozen=True)
class LogFit:
    """``accuracy = intercept + per_doubling * log2(speakers)`` (least squares)."""

    intercept: float
    per_doubling: float

    def __call__(self, speakers: np.ndarray | float) -> np.ndarray | float:
        return self.intercept + self.per_doubling * np.log2(speakers)

    def speakers_for(self, accuracy: float) -> float:
        """Speakers at which the fit reaches ``accuracy`` (``inf`` when it does not grow)."""
        if self.per_doubling <= 0:
            return math.inf
        return float(2.0 ** ((accuracy - self.intercept) / self.per_doubling))


def fit_log_curve(speakers: Sequence[float], accuracy: Sequence[float]) -> LogFit:
    """Fit :class:`LogFit` to the points with at least one speaker (two or more needed)."""
    x = np.asarray(speakers, dtype=np.float64)
    y = np.asarray(accuracy, dtype=np.float64)
    keep = x > 0
    if keep.sum() < 2 or len(np.unique(x[keep])) < 2:
        raise UsageError("a log-linear fit needs runs with at least two different speaker counts above zero")
    slope, intercept = np.polyfit(np.log2(x[keep]), y[keep], 1)
    return LogFit(float(intercept), float(slope))


def save_curve_plot(path: str | os.PathLike, speakers: Sequence[int], accuracy: Sequence[float],
                    intervals: Sequence[tuple[float, float]], fit: LogFit | None = None,
                    target: float | None = None, title: str = "") -> None:
    """Accuracy (%) with its intervals against training speakers (log axis); a run with no real
    speakers is drawn as a dotted line, the fit as a dashed one out to the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    x = np.asarray(speakers, dtype=np.float64)
    y = 100 * np.asarray(accuracy, dtype=np.float64)
    ci = 100 * np.asarray(intervals, dtype=np.float64).reshape(-1, 2)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    some = x > 0
    ax.errorbar(x[some], y[some], yerr=[y[some] - ci[some, 0], ci[some, 1] - y[some]], fmt="o", capsize=4,
                label="held-out accuracy (95% speaker bootstrap)")
    for yi in y[~some]:
        ax.axhline(yi, color="tab:orange", linestyle=":", label=f"no real speakers ({yi:.1f}%)")
    right = max(x[some].max() if some.any() else 1.0, 1.0) * 1.5
    if fit is not None:
        if target is not None and math.isfinite(fit.speakers_for(target)):
            right = max(right, 1.2 * fit.speakers_for(target))
        xs = np.geomspace(max(1.0, x[some].min() / 1.5) if some.any() else 1.0, right, 100)
        ax.plot(xs, 100 * fit(xs), "--", color="grey",
                label=f"fit: {100 * fit.per_doubling:+.1f} points per doubling")
    if target is not None:
        ax.axhline(100 * target, color="tab:green", linewidth=1, label=f"target {100 * target:.0f}%")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("real speakers in training")
    ax.set_ylabel("accuracy on held-out real speakers (%)")
    ax.set_title(title or "Accuracy against real training speakers")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


@dataclass
class CurveReport:
    """Held-out accuracy of several training runs against their real training speakers.

    ``rows``: one dict per run (``run``, ``speakers``, ``clips``, ``accuracy``, ``ci_low``,
    ``ci_high``), fewest speakers first; ``fit`` the log-linear fit (``None`` with fewer than two
    speaker counts above zero); ``target`` the accuracy asked about.
    """

    rows: list[dict]
    fit: LogFit | None = None
    target: float | None = None

    def format(self) -> str:
        lines = ["run\tspeakers\tclips\taccuracy\t95% interval"]
        lines += [f"{r['run']}\t{r['speakers']}\t{r['clips']}\t{100 * r['accuracy']:.1f}%\t"
                  f"{100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f}%" for r in self.rows]
        if self.fit is not None:
            lines.append(f"fit: accuracy = {100 * self.fit.intercept:.1f}% + {100 * self.fit.per_doubling:.1f} "
                         "points * log2(speakers)")
            if self.target is not None:
                need = self.fit.speakers_for(self.target)
                lines.append(f"the fit reaches {100 * self.target:.0f}% at about {need:.0f} real training speakers"
                             if need != math.inf else "the fit does not grow with more speakers")
        return "\n".join(lines)

    def to_json(self) -> dict:
        fit = None if self.fit is None else {"intercept": self.fit.intercept, "per_doubling": self.fit.per_doubling}
        return {"rows": self.rows, "fit": fit, "target": self.target}

    def save(self, out: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``OUT.csv`` and ``OUT.png``; returns both paths."""
        import csv

        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        table, plot = out.with_suffix(".csv"), out.with_suffix(".png")
        with atomic_open(table, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["run", "speakers", "clips", "accuracy", "ci_low", "ci_high"])
            w.writeheader()
            w.writerows(self.rows)
        save_curve_plot(plot, [r["speakers"] for r in self.rows], [r["accuracy"] for r in self.rows],
                        [(r["ci_low"], r["ci_high"]) for r in self.rows], self.fit, self.target)
        return table, plot


def speaker_curve(runs: Sequence[tuple[str | os.PathLike, str | os.PathLike]], target: float | None = None
                  ) -> CurveReport:
    """``runs``: ``(real training manifest, kws evaluate --json file)`` per run (an empty manifest
    file for a run without real clips) -> :class:`CurveReport`."""
    import json

    from asr.data.manifest import read_manifest

    rows = []
    for manifest, result in runs:
        manifest, result = Path(manifest), Path(result)
        if not manifest.is_file():
            raise MissingFileError(f"{manifest}: manifest not found")
        items = read_manifest(manifest) if manifest.stat().st_size else []
        try:
            ev = json.loads(result.read_text())
            acc, (lo, hi) = float(ev["accuracy"]), ev.get("accuracy_ci95", (float("nan"), float("nan")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{result}: not a `kws evaluate --json` file ({type(e).__name__}: {e})") from None
        rows.append({"run": result.parent.name, "speakers": count_speakers(items),
                     "clips": sum(it.get("label") != SILENCE for it in items), "accuracy": acc,
                     "ci_low": float(lo), "ci_high": float(hi)})
    rows.sort(key=lambda r: r["speakers"])
    fit = None
    if len({r["speakers"] for r in rows if r["speakers"] > 0}) >= 2:
        fit = fit_log_curve([r["speakers"] for r in rows], [r["accuracy"] for r in rows])
    return CurveReport(rows, fit, target)
