"""Keyword-spotter evaluation: clip accuracy, confusion, and false rejection vs false alarms.

* :func:`classify_items` runs the model on manifest clips (batched) -> posteriors.
* :func:`accuracy_report` gives accuracy, per-class accuracy and the confusion matrix.
* :func:`det_curve` sweeps the detection threshold: false rejection rate on keyword clips
  (the clip's posterior of its own keyword below the threshold) against false alarms per
  hour of the streaming detector on long keyword-free recordings. The detector's posteriors
  are computed once; each threshold only re-runs the event logic.
* :func:`localization` scores detections on a long file with known keyword times.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from asr.audio import iter_audio_blocks
from asr.data.dataset import AudioDataset, collate_batch
from asr.errors import UsageError
from asr.utils import atomic_open
from kws.detect import Detector, DetectorConfig, Event, ScoredAudio, detect_file, score_blocks, sweep_events


@torch.no_grad()
def classify_items(model, labels: Sequence[str], items: Sequence[dict], batch_size: int = 64,
                   progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(posteriors (N, C), true class indices (N,))`` for manifest clips with a ``label``."""
    ds = AudioDataset(items, model.frontend.features.config.sample_rate, labels=labels)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate_batch)
    probs, truth = [], []
    for batch in tqdm(loader, desc="classify", unit="batch", disable=not progress, leave=False):
        probs.append(torch.softmax(model(batch["wav"], batch["wav_lengths"]), -1))
        truth.append(batch["labels"])
    return torch.cat(probs), torch.cat(truth)


@dataclass
class AccuracyReport:
    labels: list[str]
    confusion: np.ndarray  # (C, C): rows true class, columns predicted

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(1, self.confusion.sum()))

    def per_class(self) -> dict[str, tuple[float, int]]:
        """class -> (accuracy, clips) for the classes present."""
        rows = self.confusion.sum(1)
        return {l: (float(self.confusion[i, i] / rows[i]), int(rows[i])) for i, l in enumerate(self.labels) if rows[i]}

    def format(self) -> str:
        lines = [f"accuracy {100 * self.accuracy:.2f}% on {int(self.confusion.sum())} clips", "", "per class:"]
        lines += [f"  {l:<10} {100 * a:6.2f}%  ({n} clips)" for l, (a, n) in self.per_class().items()]
        short = [l.strip("_")[:6] for l in self.labels]
        lines += ["", "confusion (rows: truth, columns: prediction):", "  " + " " * 8 + " ".join(f"{s:>6}" for s in short)]
        for s, row in zip(short, self.confusion):
            lines.append(f"  {s:<8}" + " ".join(f"{int(v):>6}" for v in row))
        return "\n".join(lines)


def accuracy_report(probs: torch.Tensor, truth: torch.Tensor, labels: Sequence[str]) -> AccuracyReport:
    C = len(labels)
    pred = probs.argmax(-1)
    conf = torch.bincount(truth * C + pred, minlength=C * C).reshape(C, C).numpy()
    return AccuracyReport(list(labels), conf)


def stream_scores(detector: Detector, paths: Sequence[str | os.PathLike], progress: bool = True) -> tuple[list[ScoredAudio], float]:
    """Each file scored once (:class:`kws.detect.ScoredAudio`), and the total hours."""
    out = []
    for path in paths:
        blocks = tqdm(iter_audio_blocks(path, detector.sample_rate, 30.0), desc=f"scan {os.path.basename(str(path))}",
                      unit="block", disable=not progress, leave=False)
        out.append(score_blocks(detector, blocks))
    return out, sum(a.seconds for a in out) / 3600.0


def count_events(detector: Detector, scores: Sequence[ScoredAudio | np.ndarray], threshold: float) -> int:
    """Events the detector would emit at ``threshold`` on recordings scored once."""
    return sum(len(sweep_events(detector, s, threshold)) for s in scores)


@dataclass
class DETCurve:
    thresholds: np.ndarray
    frr: np.ndarray  # false rejection rate (fraction of keyword clips)
    fa_per_hour: np.ndarray
    hours: float  # length of the keyword-free audio

    def frr_at(self, fa_per_hour: float = 0.5) -> tuple[float, float]:
        """``(lowest FRR with at most fa_per_hour false alarms per hour, its threshold)``."""
        ok = self.fa_per_hour <= fa_per_hour
        if not ok.any():
            return 1.0, float("nan")
        i = np.flatnonzero(ok)[np.argmin(self.frr[ok])]
        return float(self.frr[i]), float(self.thresholds[i])

    def save_plot(self, path: str | os.PathLike, title: str = "") -> None:
        """This curve alone as a PNG (see :func:`save_det_plot`)."""
        save_det_plot(path, [(self, "keyword-free recordings")], title)


def default_thresholds() -> np.ndarray:
    """Even steps, then ever closer to 1 where the false alarms per hour get low."""
    return np.unique(np.concatenate([np.linspace(0.02, 0.98, 49), 1 - np.logspace(-1.3, -4, 28)]))


def clip_frr(detector: Detector, probs: torch.Tensor, truth: torch.Tensor, labels: Sequence[str],
             thresholds: np.ndarray) -> np.ndarray:
    """Share of keyword clips whose posterior of their own keyword is below each threshold."""
    kw = [labels.index(k) for k in detector.keywords]
    is_kw = torch.isin(truth, torch.tensor(kw))
    if not is_kw.any():
        raise UsageError("no keyword clips to measure false rejections on")
    own = probs[is_kw, truth[is_kw]].numpy()
    return np.array([(own < t).mean() for t in thresholds])


def save_det_plot(path: str | os.PathLike, curves: Sequence[tuple[DETCurve, str]], title: str = "") -> None:
    """Several DET curves on one log-scale plot; zero false alarms are drawn half a count below one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for curve, name in curves:
        floor = 0.5 / max(curve.hours, 1e-9)
        frr, _ = curve.frr_at(0.5)
        ax.plot(np.maximum(curve.fa_per_hour, floor), 100 * curve.frr, marker=".",
                label=f"{name} ({curve.hours:.2f} h): FRR {100 * frr:.1f}% at 0.5 FA/h")
    ax.set_xscale("log")
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("false alarms per hour")
    ax.set_ylabel("false rejection rate (%)")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def det_curve(detector: Detector, probs: torch.Tensor, truth: torch.Tensor, labels: Sequence[str],
              negatives: Sequence[str | os.PathLike], thresholds: Sequence[float] | None = None,
              progress: bool = True) -> DETCurve:
    """FRR on the keyword clips (``probs``/``truth`` from :func:`classify_items`) against the
    detector's false alarms per hour on the keyword-free ``negatives``."""
    thresholds = np.asarray(default_thresholds() if thresholds is None else thresholds, dtype=float)
    frr = clip_frr(detector, probs, truth, labels, thresholds)
    scores, hours = stream_scores(detector, negatives, progress)
    if hours <= 0:
        raise UsageError("the keyword-free recordings are empty")
    fa = np.array([count_events(detector, scores, float(t)) / hours for t in thresholds])
    return DETCurve(thresholds, frr, fa, hours)


def localization(events: Sequence[Event], truth: Sequence[dict], tolerance: float = 0.5) -> dict:
    """Match detections to reference keywords (``{"keyword", "start", "end"}``) one to one.

    A reference is found when an event of the same keyword has start and end within
    ``tolerance`` seconds of it. Returns ``found``, ``total``, ``recall`` and
    ``false_alarms`` (events matching no reference).
    """
    used = [False] * len(events)
    found = 0
    for ref in truth:
        for i, ev in enumerate(events):
            if (not used[i] and ev.keyword == ref["keyword"] and abs(ev.start - ref["start"]) <= tolerance
                    and abs(ev.end - ref["end"]) <= tolerance):
                used[i] = True
                found += 1
                break
    return {"found": found, "total": len(truth), "recall": found / max(1, len(truth)),
            "false_alarms": used.count(False)}


def format_speech_false_alarms(sp: dict) -> str:
    """One line for :func:`kws.speech.speech_false_alarms`'s summary: count, rate and keywords."""
    per = ", ".join(f"{k} {n}" for k, n in sorted(sp["per_keyword"].items(), key=lambda kv: -kv[1]) if n)
    return (f"running speech ({sp['utterances']} utterances, {60 * sp['hours']:.1f} min): {sp['false_alarms']} "
            f"false alarms at threshold {sp['threshold']:.3f} = {sp['fa_per_hour']:.1f} per hour" + (f" ({per})" if per else ""))


@dataclass
class EvaluationReport:
    """Everything ``kws evaluate`` measures, built by :func:`evaluate_detector`.

    ``format()`` is what the command prints; ``to_json()`` what ``--json`` writes.
    """

    accuracy: AccuracyReport
    ci95: tuple[float, float]
    speakers: int
    clips: int
    det: DETCurve | None = None
    stream: dict | None = None
    stream_path: str = ""
    tolerance: float = 0.5
    speech: dict | None = None  # false alarms on transcribed running speech (see kws.speech)
    speech_det: DETCurve | None = None  # FRR on the keyword clips against false alarms per hour of that speech

    def format(self) -> str:
        lines = [self.accuracy.format(), "",
                 f"95% interval of the accuracy, resampling the {self.speakers} speakers (a _silence_ clip is its own): "
                 f"{100 * self.ci95[0]:.1f}% to {100 * self.ci95[1]:.1f}%"]
        if self.det is not None:
            frr, thr = self.det.frr_at(0.5)
            lines += ["", f"false rejection rate at 0.5 false alarms per hour: {100 * frr:.2f}% (threshold {thr:.3f}; "
                          f"{self.det.hours:.2f} h keyword-free audio)"]
        if self.speech is not None:
            lines += ["", format_speech_false_alarms(self.speech)]
            for target in (0.5, 2.0):
                frr, thr = self.speech_det.frr_at(target)
                lines.append(f"false rejection rate at {target:g} false alarms per hour of running speech: {100 * frr:.2f}% "
                             f"(threshold {thr:.4f})")
        if self.stream is not None:
            st = self.stream
            lines += ["", f"{self.stream_path}: found {st['found']}/{st['total']} keywords ({100 * st['recall']:.1f}%) "
                          f"within {self.tolerance} s at threshold {st['threshold']:.3f}; {st['false_alarms']} other "
                          f"detections in {st['minutes']:.1f} min"]
        return "\n".join(lines)

    def to_json(self) -> dict:
        out: dict = {"accuracy": self.accuracy.accuracy, "accuracy_ci95": list(self.ci95), "speakers": self.speakers,
                     "clips": self.clips, "per_class": {k: v[0] for k, v in self.accuracy.per_class().items()},
                     "confusion": self.accuracy.confusion.tolist(), "labels": self.accuracy.labels}
        if self.det is not None:
            frr, thr = self.det.frr_at(0.5)
            out.update(frr_at_0_5_fa_per_hour=frr, threshold_at_0_5_fa_per_hour=thr, negative_hours=self.det.hours,
                       det={"threshold": self.det.thresholds.tolist(), "frr": self.det.frr.tolist(),
                            "fa_per_hour": self.det.fa_per_hour.tolist()})
        if self.speech is not None:
            out["speech"] = dict(self.speech)
            for target, key in ((0.5, "0_5"), (2.0, "2")):
                frr, thr = self.speech_det.frr_at(target)
                out["speech"][f"frr_at_{key}_fa_per_hour"], out["speech"][f"threshold_at_{key}_fa_per_hour"] = frr, thr
            out["speech"]["det"] = {"threshold": self.speech_det.thresholds.tolist(), "frr": self.speech_det.frr.tolist(),
                                    "fa_per_hour": self.speech_det.fa_per_hour.tolist()}
        if self.stream is not None:
            out["stream"] = dict(self.stream)
        return out

    def save_plot(self, path: str | os.PathLike) -> None:
        """The DET curves (keyword-free recordings and running speech, whichever were measured) in one PNG."""
        curves = [(c, name) for c, name in ((self.det, "keyword-free recordings"), (self.speech_det, "running speech"))
                  if c is not None]
        save_det_plot(path, curves)


def read_truth(path: str | os.PathLike) -> list[dict]:
    """The keyword times of a stream (JSON lines ``{"keyword", "start", "end"}``, as ``kws make-stream`` writes)."""
    import json

    from asr.errors import MissingFileError, UsageError

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: truth file not found (kws make-stream writes it beside the stream)")
    refs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            ref = json.loads(line)
            refs.append({"keyword": str(ref["keyword"]), "start": float(ref["start"]), "end": float(ref["end"])})
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{path}:{n}: not a keyword time ({type(e).__name__}: {e})") from None
    return refs


def evaluate_detector(detector: Detector, items: Sequence[dict], negatives: Sequence[str | os.PathLike] = (),
                      stream: str | os.PathLike | None = None, truth: str | os.PathLike | None = None,
                      tolerance: float = 0.5, batch_size: int = 64, use_det_threshold: bool = True,
                      progress: bool = True, speech: Sequence[dict] = ()) -> EvaluationReport:
    """Accuracy of ``detector``'s model on the labelled clips ``items`` (with a speaker-bootstrap
    interval); with ``negatives``, the DET curve against those keyword-free recordings; with
    ``stream``, the share of its keywords (``truth``, default ``<stream>.truth.jsonl``) found within
    ``tolerance`` seconds. With ``use_det_threshold`` the stream is scored at the threshold of 0.5
    false alarms per hour of the DET curve (when there is one), else at the detector's own."""
    from kws.curve import speaker_bootstrap
    from kws.data import speaker_of_item

    model, labels = detector.model, detector.labels
    probs, labels_true = classify_items(model, labels, items, batch_size, progress)
    report = accuracy_report(probs, labels_true, labels)
    speakers = [speaker_of_item(it) for it in items]
    ci = speaker_bootstrap((probs.argmax(-1) == labels_true).numpy(), speakers)
    result = EvaluationReport(report, ci, len(set(speakers)), len(items), tolerance=tolerance)
    if speech:  # at the detector's own threshold, before the keyword-free DET may change it
        from kws.speech import score_speech

        sc = score_speech(detector, speech, progress)
        result.speech = sc.summary(detector.cfg.threshold)
        thresholds = default_thresholds()
        result.speech_det = DETCurve(thresholds, clip_frr(detector, probs, labels_true, labels, thresholds),
                                     sc.fa_per_hour(thresholds), sc.hours)
    if negatives:
        result.det = det_curve(detector, probs, labels_true, labels, negatives, progress=progress)
        _, thr = result.det.frr_at(0.5)
        if use_det_threshold and thr == thr:
            detector.cfg.threshold = thr
            detector.reset()
    if stream is not None:
        refs = read_truth(truth or Path(stream).with_suffix(".truth.jsonl"))
        events = list(detect_file(detector, stream))
        loc = localization(events, refs, tolerance)
        result.stream = {**loc, "minutes": detector.seconds_processed / 60, "threshold": detector.cfg.threshold}
        result.stream_path = str(stream)
    return result


@dataclass
class RecordingsReport:
    """How often the detector fires on recordings that each hold one spoken word or phrase.

    For a recording of one of the model's keywords, a hit is an event of that keyword (recall);
    for a recording of anything else, any event is a false accept. ``curve`` gives both for a
    grid of thresholds (same events as streaming, from posteriors computed once).
    """

    keywords: list[str]
    threshold: float
    counts: dict  # label -> recordings
    curve: dict  # threshold -> {label: recordings with a hit (its keyword) or a false accept (other labels)}

    @property
    def hits(self) -> dict:
        """The curve at the detector's own threshold."""
        return self.curve[round(float(self.threshold), 6)]

    def rate(self, label: str, threshold: float | None = None) -> float:
        hits = self.hits if threshold is None else self.curve[threshold]
        return hits[label] / self.counts[label]

    def format(self) -> str:
        lines = [f"recordings at threshold {self.threshold:.4f}:"]
        for label in sorted(self.counts, key=lambda x: (x not in self.keywords, x)):
            what = "detected" if label in self.keywords else "false accepts (any keyword)"
            lines.append(f"  {label:<16} {self.counts[label]:>5} recordings  {what}: {self.hits[label]} "
                         f"({100 * self.rate(label):.1f}%)")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"threshold": self.threshold, "counts": self.counts, "hits": self.hits,
                "rates": {k: self.rate(k) for k in self.counts},
                "curve": [{"threshold": t, **{k: v / self.counts[k] for k, v in h.items()}} for t, h in self.curve.items()]}


def recordings_report(detector: Detector, items: Sequence[dict], progress: bool = True) -> RecordingsReport:
    """:class:`RecordingsReport` of ``detector`` on ``items`` (manifest items with a ``label``)."""
    from kws.detect import score_blocks, sweep_events
    from kws.speech import item_blocks

    keywords = list(detector.keywords)
    grid = sorted({round(float(t), 4) for t in (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)}
                  | {round(float(detector.cfg.threshold), 6)})
    counts: dict[str, int] = {}
    curve: dict[float, dict[str, int]] = {t: {} for t in grid}
    for it in tqdm(items, desc="recordings", unit="file", disable=not progress):
        label = str(it["label"])
        counts[label] = counts.get(label, 0) + 1
        scored = score_blocks(detector, item_blocks(it, detector.sample_rate))
        for t in grid:
            fired = {keywords[k] for k, _, _ in sweep_events(detector, scored, t)}
            hit = label in fired if label in keywords else bool(fired)
            curve[t][label] = curve[t].get(label, 0) + int(hit)
    return RecordingsReport(keywords, detector.cfg.threshold, counts, curve)


__all__ = ["RecordingsReport", "recordings_report", "format_speech_false_alarms", "classify_items", "accuracy_report", "AccuracyReport", "EvaluationReport", "evaluate_detector", "read_truth", "stream_scores", "count_events", "DETCurve",
           "det_curve", "localization", "DetectorConfig"]
