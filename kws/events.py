"""From window posteriors to keyword events, in numpy only (no torch): shared by the PyTorch
:class:`kws.detect.Detector` and the ONNX Runtime :class:`kws.onnx_detect.OnnxDetector`.

A backend computes, for each analysis window, the keyword posteriors, and for each feature
frame its log energy; :class:`StreamEvents` does the rest, the same way for both:
the causal moving average over ``smooth`` windows, runs above ``threshold``
(:class:`EventLogic`), event bounds trimmed to the loud part of the best window
(:func:`word_bounds`), and the isolation rule (:func:`isolation_margin`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from asr.constants import NON_KEYWORDS
from asr.errors import UsageError


@dataclass
class Event:
    """One detection: ``keyword`` said between ``start`` and ``end`` seconds, with ``score``."""

    keyword: str
    start: float
    end: float
    score: float
    file: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DetectorConfig:
    threshold: float = 0.5  # smoothed posterior a keyword must reach
    hop: float = 0.08  # seconds between window starts (rounded to whole convolution frames)
    smooth: int = 3  # windows in the causal moving average of the posteriors
    patience: int = 2  # windows at or above the threshold before a run counts
    refractory: float = 1.0  # seconds after an event during which nothing fires
    max_event: float = 2.0  # a run longer than this is reported and a new one may start
    trim_db: float = 15.0  # an event spans the frames of its best window within this many dB of the loudest (0 = whole window)
    trim_floor_db: float = 8.0  # ... and at least this many dB over the window's background (0 = no such limit)
    trim_gap: float = 0.1  # ... around its loudest frame, quieter gaps up to this many seconds bridged
    # seconds of quiet noise (-70 dBFS) read after the end of the stream, not counted as audio: without it a
    # keyword in the last second (a 1-s clip, say) is seen by a single window and cannot pass smooth/patience
    end_pad: float = 0.5
    isolation_db: float = 0.0  # > 0: drop events with speech this close in level right before or after (0 = off)
    isolation_gap: float = 0.15  # seconds next to the word not looked at (its own onset and decay)
    isolation_context: float = 0.5  # seconds on each side that must be quieter than the word

    @classmethod
    def from_dict(cls, stored: dict | None) -> "DetectorConfig":
        """The settings of ``stored`` (unknown keys ignored), defaults for the rest."""
        return cls(**{k: v for k, v in (stored or {}).items() if k in cls.__dataclass_fields__})


_LOG_TO_DB = 10.0 / math.log(10.0)  # the features' energies are natural logs of power


def end_padding(config: DetectorConfig, sample_rate: int) -> np.ndarray:
    """The quiet noise (-70 dBFS, fixed seed) read after the end of a stream."""
    n = int(round(config.end_pad * sample_rate))
    return (np.random.default_rng(0).standard_normal(n) * 10 ** (-70 / 20)).astype(np.float32)


def loud_span(db: np.ndarray, below_peak_db: float, above_floor_db: float, max_gap: int) -> tuple[int, int]:
    """``(first, last + 1)`` frames of the run around the loudest frame of ``db`` (levels in dB) whose
    frames are within ``below_peak_db`` of it and, with ``above_floor_db > 0``, at least that much over
    the 10th-percentile frame (the background), bridging quieter gaps of up to ``max_gap`` frames."""
    peak = int(np.argmax(db))
    level = float(db[peak]) - below_peak_db
    if above_floor_db > 0:
        level = min(float(db[peak]), max(level, float(np.quantile(db, 0.1)) + above_floor_db))
    loud = np.flatnonzero(db >= level)
    runs = np.split(loud, np.flatnonzero(np.diff(loud) > max_gap + 1) + 1)
    run = next(r for r in runs if r[0] <= peak <= r[-1])
    return int(run[0]), int(run[-1]) + 1


def word_bounds(energy, offset: int, w: int, window_start: float, window_frames: int,
                frame_seconds: float, frames_per_window_step: int, trim_db: float,
                floor_db: float = 0.0, max_gap: float = math.inf) -> tuple[float, float]:
    """Start and end (seconds) of the word in window ``w``: the frames around its loudest within
    ``trim_db`` of it and ``floor_db`` over the window's background (:func:`loud_span`), quieter
    gaps of up to ``max_gap`` seconds bridged.

    ``energy`` holds the log energy of feature frames ``offset, offset + 1, ...``.
    """
    start, end = window_start, window_start + window_frames * frame_seconds
    if trim_db <= 0:
        return start, end
    energy = np.asarray(energy)
    first = w * frames_per_window_step - offset
    e = energy[max(0, first): max(0, first + window_frames)]
    if first < 0 or e.size == 0:  # (older than the energy buffer: keep the whole window)
        return start, end
    gap = e.size if math.isinf(max_gap) else int(round(max_gap / frame_seconds))
    a, b = loud_span(e * _LOG_TO_DB, trim_db, floor_db, gap)
    return start + a * frame_seconds, start + b * frame_seconds


def moving_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Centred mean over ``k`` frames (``k // 2`` before), fewer at the edges."""
    n = x.size
    c = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    i = np.arange(n)
    lo, hi = np.clip(i - k // 2, 0, n), np.clip(i - k // 2 + k, 0, n)
    return (c[hi] - c[lo]) / (hi - lo)


def isolation_margin(energy, offset: int, start: float, end: float, frame_seconds: float,
                     gap: float, context: float) -> float:
    """dB between the loudest 50 ms of the word ``[start, end)`` and the loudest 50 ms of the
    ``context`` seconds on either side of it (beyond ``gap``); ``inf`` when there is no context
    (the start of a stream)."""
    energy = np.asarray(energy)
    lo = max(0, int(math.floor((start - gap - context) / frame_seconds)) - offset)
    hi = min(energy.size, int(math.ceil((end + gap + context) / frame_seconds)) - offset)
    if hi - lo <= 0:
        return math.inf
    seg = moving_mean(energy[lo:hi], max(1, int(round(0.05 / frame_seconds))))
    t = (np.arange(hi - lo) + lo + offset) * frame_seconds
    word = seg[(t >= start) & (t < end)]
    ctx = seg[(t < start - gap) | (t >= end + gap)]
    if word.size == 0 or ctx.size == 0:
        return math.inf
    return float(word.max() - ctx.max()) * _LOG_TO_DB


class EventLogic:
    """Runs of smoothed posteriors above the threshold -> events (incremental).

    ``update(scores (N, K), window_index_of_first_row) -> [(k, best_window, best_score)]``.
    Only windows where some keyword is at or above the threshold, and the window after
    each, are visited in Python; everything else is array work.
    """

    def __init__(self, num_keywords: int, threshold: float, patience: int, refractory_windows: int, max_windows: int):
        self.threshold, self.patience = threshold, patience
        self.refractory, self.max_windows = refractory_windows, max_windows
        self.runs: dict[int, list] = {}  # keyword -> [first window, length, best window, best score]
        self.quiet_until = -1  # no event may start before this window
        self.K = num_keywords

    def update(self, scores: np.ndarray, first: int) -> list[tuple[int, int, float]]:
        events: list[tuple[int, int, float]] = []
        above = scores >= self.threshold
        rows = np.flatnonzero(above.any(axis=1))
        visit = np.union1d(rows, rows + 1)
        if self.runs:  # a run open from the previous call ends at row 0 unless it continues
            visit = np.union1d(visit, [0])
        visit = visit[visit < len(scores)]
        for r in visit.tolist():
            w = first + r
            for k in list(self.runs):
                run = self.runs[k]
                if above[r, k] and run[1] < self.max_windows:
                    run[1] += 1
                    if scores[r, k] > run[3]:
                        run[2], run[3] = w, float(scores[r, k])
                else:
                    del self.runs[k]
                    if run[1] >= self.patience and run[0] >= self.quiet_until:
                        events.append((k, run[2], run[3]))
                        self.quiet_until = w + self.refractory
            for k in np.flatnonzero(above[r]).tolist():
                if k not in self.runs and w >= self.quiet_until:
                    self.runs[k] = [w, 1, w, float(scores[r, k])]
        return events

    def flush(self) -> list[tuple[int, int, float]]:
        events = [(k, run[2], run[3]) for k, run in self.runs.items()
                  if run[1] >= self.patience and run[0] >= self.quiet_until]
        self.runs.clear()
        return sorted(events, key=lambda e: e[1])


class StreamEvents:
    """The part of a streaming detector after the model: what both backends share.

    A subclass sets the geometry in ``__init__`` (through :meth:`_setup`) and implements
    ``scores(chunk, final) -> (first window, smoothed posteriors (N, K))`` with
    :meth:`_add_energy` and :meth:`_smooth`; ``process``/``flush`` are the same for both.
    """

    def _setup(self, labels: Sequence[str], keywords: Sequence[str] | None, cfg: DetectorConfig, *,
               sample_rate: int, frame_seconds: float, stride_frames: int, window_frames: int,
               window: float, batch_windows: int) -> None:
        self.cfg, self.labels = cfg, list(labels)
        if keywords is None:
            keywords = [l for l in self.labels if l not in NON_KEYWORDS]
        missing = [k for k in keywords if k not in self.labels]
        if missing:
            raise UsageError(f"keyword(s) {', '.join(missing)} not known to the model (it knows {', '.join(self.labels)})")
        self.keywords = list(keywords)
        self.keyword_index = np.array([self.labels.index(k) for k in self.keywords], dtype=np.int64)
        self.sample_rate, self.frame_seconds = sample_rate, frame_seconds
        self.stride_frames = stride_frames
        self.conv_seconds = stride_frames * frame_seconds
        self.window_frames, self.window_seconds = window_frames, window
        self._window_feature_frames = int(round(window / frame_seconds))
        self.hop = max(1, int(round(cfg.hop / self.conv_seconds)))  # in convolution frames
        self.batch_windows = batch_windows
        self.record_energy = False  # keep every frame's energy in energy_log (for threshold sweeps), from the next reset
        # energies kept for event bounds: a batch of windows, the longest run and a margin
        self._keep_frames = int((batch_windows * self.hop * self.conv_seconds + cfg.max_event + window + 5.0) / frame_seconds)

    def _reset_events(self) -> None:
        self._next_window = 0  # index (in windows) of the next window to classify
        self._recent = np.zeros((0, len(self.keywords)), dtype=np.float32)  # last smooth-1 posteriors
        self.samples = 0
        self._energy = np.zeros(0, dtype=np.float32)  # log energy of recent feature frames, for the event bounds
        self._energy_offset = 0
        self._pending: list[Event] = []  # events waiting for the audio after them (isolation rule)
        self.energy_log: list[np.ndarray] | None = [] if self.record_energy else None
        self._logic = EventLogic(len(self.keywords), self.cfg.threshold, self.cfg.patience,
                                 int(np.ceil(self.cfg.refractory / (self.hop * self.conv_seconds))),
                                 max(1, int(round(self.cfg.max_event / (self.hop * self.conv_seconds)))))

    @property
    def seconds_processed(self) -> float:
        return self.samples / self.sample_rate

    def window_start(self, index: int) -> float:
        """Start time in seconds of window ``index``."""
        return index * self.hop * self.conv_seconds

    def _add_energy(self, energy: np.ndarray) -> None:
        """Keep the log energies of a chunk's feature frames (and the margin before them:
        trimming to a fixed length alone cut the start of a long chunk)."""
        energy = np.asarray(energy, dtype=np.float32)
        if self.energy_log is not None:
            self.energy_log.append(energy)
        self._energy = np.concatenate([self._energy, energy])
        excess = self._energy.shape[0] - (self._keep_frames + energy.shape[0])
        if excess > 0:
            self._energy = self._energy[excess:]
            self._energy_offset += excess

    def _smooth(self, probs: np.ndarray) -> np.ndarray:
        """Causal moving average over the last ``smooth`` windows (fewer at the start of the stream)."""
        s = max(1, self.cfg.smooth)
        both = np.concatenate([self._recent, np.asarray(probs, dtype=np.float32)])
        csum = np.concatenate([np.zeros((1, both.shape[1]), dtype=np.float32), both.cumsum(0, dtype=np.float32)])
        hi = np.arange(self._recent.shape[0], both.shape[0]) + 1
        lo = np.clip(hi - s, 0, None)
        smoothed = (csum[hi] - csum[lo]) / (hi - lo)[:, None].astype(np.float32)
        self._recent = both[both.shape[0] - min(s - 1, both.shape[0]):]
        return smoothed

    def _bounds(self, w: int) -> tuple[float, float]:
        """Start and end of the word in window ``w`` (:func:`word_bounds` with the config's trim settings)."""
        return word_bounds(self._energy, self._energy_offset, w, self.window_start(w), self._window_feature_frames,
                           self.frame_seconds, self.hop * self.stride_frames, self.cfg.trim_db,
                           self.cfg.trim_floor_db, self.cfg.trim_gap)

    def _isolated(self, start: float, end: float) -> bool:  # (sweep_events computes the same)
        return isolation_margin(self._energy, self._energy_offset, start, end, self.frame_seconds,
                                self.cfg.isolation_gap, self.cfg.isolation_context) >= self.cfg.isolation_db

    def _events(self, hits: list[tuple[int, int, float]], final: bool = False) -> list[Event]:
        for k, w, score in hits:
            start, end = self._bounds(w)
            self._pending.append(Event(self.keywords[k], round(start, 3), round(end, 3), round(score, 4)))
        if self.cfg.isolation_db <= 0:
            out, self._pending = self._pending, []
            return out
        # the isolation rule needs the audio after the word: decide once it is there (or at the end)
        heard = (self._energy_offset + self._energy.size) * self.frame_seconds
        # (two frames more: the context's last frame is rounded up, and it must be in the buffer as in a sweep)
        wait = self.cfg.isolation_gap + self.cfg.isolation_context + 2 * self.frame_seconds
        out, keep = [], []
        for ev in self._pending:
            if final or ev.end + wait <= heard:
                if self._isolated(ev.start, ev.end):
                    out.append(ev)
            else:
                keep.append(ev)
        self._pending = keep
        return out

    def scores(self, chunk, final: bool = False):  # pragma: no cover - implemented by the backends
        raise NotImplementedError

    def process(self, chunk) -> list[Event]:
        """Feed samples ``(n,)`` (any length, model sample rate); return the events completed so far."""
        first, smoothed = self.scores(chunk)
        hits = self._logic.update(np.asarray(smoothed), first) if len(smoothed) else []
        return self._events(hits)

    def flush(self) -> list[Event]:
        """End of stream: classify what is left and return the remaining events."""
        first, smoothed = self.scores(np.zeros(0, dtype=np.float32), final=True)
        hits = self._logic.update(np.asarray(smoothed), first) if len(smoothed) else []
        return self._events(hits + self._logic.flush(), final=True)


def events_in_file(detector: StreamEvents, path, block_seconds: float = 30.0):
    """Events in one file, read in blocks (any soundfile format and rate; resampled as a stream)."""
    from asr.audio import iter_audio_blocks

    detector.reset()
    for block in iter_audio_blocks(path, detector.sample_rate, block_seconds, numpy=True):
        for event in detector.process(block):
            event.file = str(path)
            yield event
    for event in detector.flush():
        event.file = str(path)
        yield event
