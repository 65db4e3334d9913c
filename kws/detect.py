"""Streaming keyword detection over audio of any length.

:class:`Detector` turns a stream of samples into keyword events:

1. features frame by frame (:meth:`asr.features.FeatureExtractor.infer`) and the global CMVN;
2. the CRNN's convolution once per convolution frame (it is shift-invariant, so windows share it);
3. the recurrent layers and classifier on a sliding window as long as a training clip
   (1 s by default), one window every ``hop`` seconds, all ready windows in one batch;
4. posteriors smoothed by a causal moving average over ``smooth`` windows;
5. per keyword, a run of windows whose smoothed posterior reaches ``threshold`` for at least
   ``patience`` windows becomes one event, reported when the run ends (or reaches
   ``max_event`` seconds) with its best score and the span of its best window's frames
   within ``trim_db`` of their loudest (the word rather than the whole window);
   after an event, nothing fires for ``refractory`` seconds;
6. with ``isolation_db`` set, an event is kept only when the word stands alone: the loudest
   50 ms of the ``isolation_context`` seconds before and after it (beyond a gap of
   ``isolation_gap`` seconds) is at least ``isolation_db`` below the word's loudest 50 ms.
   A command is said on its own; a keyword-like syllable of running speech has speech
   right next to it. The decision waits until the audio after the word has arrived.

At the end of a stream ``end_pad`` seconds of quiet noise are read (and not counted as audio),
so that a keyword in the last second, as in a one-second clip, still passes several windows.

With log-mel features the posterior of a window equals the model's output on the same
samples cut out as a clip (tested). Memory does not grow with the stream: only the
frames the next window needs are kept.

Example:
    >>> import torch
    >>> from asr.models.config import ModelConfig
    >>> from asr.features import FeatureConfig
    >>> from kws.model import CRNN
    >>> model = CRNN(ModelConfig(family="crnn", features=FeatureConfig(n_mels=40)), 12).eval()
    >>> labels = ["_silence_", "_unknown_", "down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes"]
    >>> det = Detector(model, labels, threshold=0.99)
    >>> events = det.process(torch.zeros(16000 * 3)) + det.flush()
    >>> det.seconds_processed
    3.0
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from asr.audio import iter_audio_blocks
from asr.constants import NON_KEYWORDS
from asr.errors import MissingFileError, UsageError



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
    # seconds of quiet noise (-70 dBFS) read after the end of the stream, not counted as audio: without it a
    # keyword in the last second (a 1-s clip, say) is seen by a single window and cannot pass smooth/patience
    end_pad: float = 0.5
    isolation_db: float = 0.0  # > 0: drop events with speech this close in level right before or after (0 = off)
    isolation_gap: float = 0.15  # seconds next to the word not looked at (its own onset and decay)
    isolation_context: float = 0.5  # seconds on each side that must be quieter than the word


_LOG_TO_DB = 10.0 / math.log(10.0)  # the features' energies are natural logs of power


def word_bounds(energy: torch.Tensor, offset: int, w: int, window_start: float, window_frames: int,
                frame_seconds: float, frames_per_window_step: int, trim_db: float) -> tuple[float, float]:
    """Start and end (seconds) of window ``w``'s frames within ``trim_db`` of its loudest.

    ``energy`` holds the log energy of feature frames ``offset, offset + 1, ...``.
    """
    start, end = window_start, window_start + window_frames * frame_seconds
    if trim_db <= 0:
        return start, end
    first = w * frames_per_window_step - offset
    e = energy[max(0, first): max(0, first + window_frames)]
    if first < 0 or e.numel() == 0:  # (older than the energy buffer: keep the whole window)
        return start, end
    loud = torch.nonzero(e >= e.max() - trim_db / _LOG_TO_DB).flatten()
    return start + float(loud[0]) * frame_seconds, start + float(loud[-1] + 1) * frame_seconds


def isolation_margin(energy: torch.Tensor, offset: int, start: float, end: float, frame_seconds: float,
                     gap: float, context: float) -> float:
    """dB between the loudest 50 ms of the word ``[start, end)`` and the loudest 50 ms of the
    ``context`` seconds on either side of it (beyond ``gap``); ``inf`` when there is no context
    (the start of a stream)."""
    lo = max(0, int(math.floor((start - gap - context) / frame_seconds)) - offset)
    hi = min(energy.numel(), int(math.ceil((end + gap + context) / frame_seconds)) - offset)
    if hi - lo <= 0:
        return math.inf
    seg = energy[lo:hi].reshape(1, 1, -1)
    k = max(1, int(round(0.05 / frame_seconds)))
    seg = torch.nn.functional.avg_pool1d(seg, k, 1, padding=k // 2, count_include_pad=False)[0, 0, : hi - lo]
    t = (torch.arange(hi - lo) + lo + offset) * frame_seconds
    word = seg[(t >= start) & (t < end)]
    ctx = seg[(t < start - gap) | (t >= end + gap)]
    if word.numel() == 0 or ctx.numel() == 0:
        return math.inf
    return float(word.max() - ctx.max()) * _LOG_TO_DB


class _EventLogic:
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


class Detector:
    """Keyword events from a stream of samples at the model's sample rate.

    Args:
        model: a trained :class:`kws.model.CRNN` (forward-only recurrent layers for
            exact streaming; a bidirectional one works on each window too).
        labels: the model's class names, in output order.
        keywords: which classes to report (default: all but ``_silence_`` / ``_unknown_``).
        config: thresholds and timing (:class:`DetectorConfig`); keyword arguments override it.
        window: window length in seconds (default 1.0, the Speech Commands clip length).
        batch_windows: windows classified per batch; more windows wait for a full batch.
    """

    def __init__(self, model, labels: Sequence[str], keywords: Sequence[str] | None = None,
                 config: DetectorConfig | None = None, window: float = 1.0, batch_windows: int = 256, **overrides):
        cfg = config or DetectorConfig()
        for key, value in overrides.items():
            if not hasattr(cfg, key):
                raise TypeError(f"unknown detector setting {key!r}")
            setattr(cfg, key, value)
        self.cfg, self.model, self.labels = cfg, model.eval(), list(labels)
        if keywords is None:
            keywords = [l for l in self.labels if l not in NON_KEYWORDS]
        missing = [k for k in keywords if k not in self.labels]
        if missing:
            raise UsageError(f"keyword(s) {', '.join(missing)} not known to the model (it knows {', '.join(self.labels)})")
        self.keywords = list(keywords)
        self.keyword_index = torch.tensor([self.labels.index(k) for k in self.keywords])
        fc = model.frontend.features.config
        self.sample_rate = fc.sample_rate
        self.frame_seconds = fc.hop_length / fc.sample_rate
        st = model.stride_frames
        self.conv_seconds = st * self.frame_seconds
        self.window_frames = int(model.conv_lengths(torch.tensor(fc.num_frames(int(round(window * fc.sample_rate))))))
        self.window_seconds = window
        self._window_feature_frames = int(round(window / self.frame_seconds))
        self.hop = max(1, int(round(cfg.hop / self.conv_seconds)))  # in convolution frames
        self.batch_windows = batch_windows
        self.record_energy = False  # keep every frame's energy in energy_log (for threshold sweeps), from the next reset
        # energies kept for event boundaries: a batch of windows, the longest run and a margin
        self._keep_frames = int((batch_windows * self.hop * self.conv_seconds + cfg.max_event + window + 5.0) / self.frame_seconds)
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self._feat_state = None
        self._feats = torch.zeros(0, self.model.frontend.dim)
        self._feat_offset = 0  # index of self._feats[0] among all feature frames
        self._conv = torch.zeros(0, self.model.rnn.input_size)
        self._conv_offset = 0  # index of self._conv[0] among all convolution frames
        self._next_window = 0  # index (in windows) of the next window to classify
        self._recent = torch.zeros(0, len(self.keywords))  # last smooth-1 posteriors
        self.samples = 0
        self._energy = torch.zeros(0)  # log mel energy of recent feature frames, for the event boundaries
        self._energy_offset = 0
        self._pending: list[Event] = []  # events waiting for the audio after them (isolation rule)
        self.energy_log: list[torch.Tensor] | None = [] if self.record_energy else None
        self._logic = _EventLogic(len(self.keywords), self.cfg.threshold, self.cfg.patience,
                                  int(np.ceil(self.cfg.refractory / (self.hop * self.conv_seconds))),
                                  max(1, int(round(self.cfg.max_event / (self.hop * self.conv_seconds)))))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None, keywords: Sequence[str] | None = None,
                        device: str = "cpu", **overrides) -> "Detector":
        """A ready detector in one line: the model of ``path`` (default: the one shipped with the
        package) with its stored operating point; ``overrides`` change :class:`DetectorConfig` fields.

        >>> det = Detector.from_checkpoint(threshold=0.9)  # doctest: +SKIP
        >>> events = det.process(samples_16k) + det.flush()  # doctest: +SKIP
        """
        model, labels, config = load_detector(path, device)
        return cls(model, labels, keywords, config, **overrides)

    @property
    def seconds_processed(self) -> float:
        return self.samples / self.sample_rate

    def window_start(self, index: int) -> float:
        """Start time in seconds of window ``index``."""
        return index * self.hop * self.conv_seconds

    @torch.no_grad()
    def scores(self, chunk: torch.Tensor, final: bool = False) -> tuple[int, torch.Tensor]:
        """Feed samples; return ``(index of the first new window, smoothed keyword posteriors (N, K))``.

        Windows are held back until ``batch_windows`` are ready unless ``final`` is set; ``final``
        marks the end of the stream and first reads ``end_pad`` seconds of quiet noise (call it once).
        """
        chunk = torch.as_tensor(chunk, dtype=torch.float32).reshape(-1)
        self.samples += chunk.numel()
        if final and self.cfg.end_pad > 0 and self.samples > 0:
            n = int(round(self.cfg.end_pad * self.sample_rate))
            quiet = torch.randn(n, generator=torch.Generator().manual_seed(0)) * 10 ** (-70 / 20)
            chunk = torch.cat([chunk, quiet])
        model = self.model
        frames, self._feat_state = model.frontend.features.infer(chunk.unsqueeze(0), self._feat_state)
        energy = torch.logsumexp(frames[0], dim=1)
        if self.energy_log is not None:
            self.energy_log.append(energy)
        self._energy = torch.cat([self._energy, energy])
        # keep the frames of this chunk (its windows' events are bounded by them after this call) and the
        # margin before them: trimming to a fixed length alone cut the start of a long chunk
        excess = self._energy.shape[0] - (self._keep_frames + energy.shape[0])
        if excess > 0:
            self._energy = self._energy[excess:]
            self._energy_offset += excess
        self._feats = torch.cat([self._feats, model.frontend.cmvn(frames[0].unsqueeze(0))[0]])
        # convolution frames whose whole kernel is available
        kt, st = model.kernel_frames, model.stride_frames
        n_conv = (self._feats.shape[0] - kt) // st + 1 if self._feats.shape[0] >= kt else 0
        if n_conv > 0:
            used = self._feats[: (n_conv - 1) * st + kt]
            self._conv = torch.cat([self._conv, model.conv_frames(used.unsqueeze(0))[0]])
            self._feats = self._feats[n_conv * st:]
            self._feat_offset += n_conv * st
        # windows whose frames are all available
        W, h = self.window_frames, self.hop
        available = self._conv_offset + self._conv.shape[0]
        last = (available - W) // h  # index of the last complete window
        ready = last - self._next_window + 1
        if ready <= 0 or (ready < self.batch_windows and not final):
            return self._next_window, torch.zeros(0, len(self.keywords))
        starts = torch.arange(self._next_window, last + 1) * h - self._conv_offset
        windows = self._conv[starts.unsqueeze(1) + torch.arange(W)]  # (N, W, D)
        lengths = torch.full((windows.shape[0],), W)
        probs = torch.softmax(model.classify(windows, lengths), dim=-1)[:, self.keyword_index]
        first = self._next_window
        self._next_window = last + 1
        keep_from = self._next_window * h - self._conv_offset
        self._conv = self._conv[keep_from:]
        self._conv_offset += keep_from
        # causal moving average over the last `smooth` windows (fewer at the start of the stream)
        s = max(1, self.cfg.smooth)
        both = torch.cat([self._recent, probs])
        csum = torch.cat([torch.zeros(1, both.shape[1]), both.cumsum(0)])
        hi = torch.arange(self._recent.shape[0], both.shape[0]) + 1
        lo = (hi - s).clamp(min=0)
        smoothed = (csum[hi] - csum[lo]) / (hi - lo).unsqueeze(1).float()
        self._recent = both[both.shape[0] - min(s - 1, both.shape[0]):]
        return first, smoothed

    def _bounds(self, w: int) -> tuple[float, float]:
        """Start and end of window ``w``, trimmed to its frames within ``trim_db`` of the loudest."""
        return word_bounds(self._energy, self._energy_offset, w, self.window_start(w), self._window_feature_frames,
                           self.frame_seconds, self.hop * self.model.stride_frames, self.cfg.trim_db)

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
        heard = (self._energy_offset + self._energy.numel()) * self.frame_seconds
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

    def process(self, chunk: torch.Tensor) -> list[Event]:
        """Feed samples ``(n,)`` (any length, model sample rate); return the events completed so far."""
        first, smoothed = self.scores(chunk)
        hits = self._logic.update(smoothed.numpy(), first) if len(smoothed) else []
        return self._events(hits)

    def flush(self) -> list[Event]:
        """End of stream: classify what is left and return the remaining events."""
        first, smoothed = self.scores(torch.zeros(0), final=True)
        hits = self._logic.update(smoothed.numpy(), first) if len(smoothed) else []
        return self._events(hits + self._logic.flush(), final=True)


@dataclass
class ScoredAudio:
    """One recording scored once for any threshold: smoothed keyword posteriors ``(windows, K)``
    and the log energy of every feature frame (for event bounds and the isolation rule)."""

    scores: np.ndarray
    energy: torch.Tensor
    seconds: float
    margins: dict = None  # window -> isolation margin in dB, filled as needed

    def __post_init__(self):
        self.margins = {} if self.margins is None else self.margins


@torch.no_grad()
def score_blocks(detector: "Detector", blocks) -> ScoredAudio:
    """Feed a stream of sample blocks through ``detector`` (after a reset) and keep what
    :func:`sweep_events` needs to emit the events of any threshold."""
    detector.record_energy = True
    try:
        detector.reset()
        parts = [detector.scores(block)[1].numpy() for block in blocks]
        parts.append(detector.scores(torch.zeros(0), final=True)[1].numpy())
        energy = torch.cat(detector.energy_log) if detector.energy_log else torch.zeros(0)
        seconds = detector.seconds_processed
    finally:
        detector.record_energy = False
        detector.reset()
    K = len(detector.keywords)
    return ScoredAudio(np.concatenate([p.reshape(-1, K) for p in parts]), energy, seconds)


def sweep_events(detector: "Detector", audio: ScoredAudio | np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """``(keyword index, best window, score)`` of the events ``detector`` emits on ``audio`` at
    ``threshold``, with its patience, refractory time and (given the energies) isolation rule:
    the same events as streaming, from posteriors computed once."""
    cfg = detector.cfg
    hop_s = detector.hop * detector.conv_seconds
    s = audio.scores if isinstance(audio, ScoredAudio) else audio
    logic = _EventLogic(s.shape[1], threshold, cfg.patience, int(np.ceil(cfg.refractory / hop_s)),
                        max(1, int(round(cfg.max_event / hop_s))))
    hits = logic.update(s, 0) + logic.flush()
    if cfg.isolation_db <= 0 or not isinstance(audio, ScoredAudio):
        return hits
    kept = []
    for k, w, score in hits:
        if w not in audio.margins:
            start, end = word_bounds(audio.energy, 0, w, detector.window_start(w), detector._window_feature_frames,
                                     detector.frame_seconds, detector.hop * detector.model.stride_frames, cfg.trim_db)
            audio.margins[w] = isolation_margin(audio.energy, 0, round(start, 3), round(end, 3), detector.frame_seconds,
                                                cfg.isolation_gap, cfg.isolation_context)
        if audio.margins[w] >= cfg.isolation_db:
            kept.append((k, w, score))
    return kept


def detect_file(detector: Detector, path: str | os.PathLike, block_seconds: float = 30.0) -> Iterator[Event]:
    """Events in one file, read in blocks (any soundfile format and rate; resampled as a stream)."""
    detector.reset()
    for block in iter_audio_blocks(path, detector.sample_rate, block_seconds):
        for event in detector.process(block):
            event.file = str(path)
            yield event
    for event in detector.flush():
        event.file = str(path)
        yield event


DEFAULT_MODEL = Path(__file__).resolve().parent / "pretrained" / "crnn.pt"


def load_detector_model(path: str | os.PathLike | None = None, device: str = "cpu"):
    """``(model, labels)`` from a ``crnn`` checkpoint; ``None`` = the default model in the package."""
    model, labels, _ = load_detector(path, device)
    return model, labels


def load_detector(path: str | os.PathLike | None = None, device: str = "cpu", purpose: str = "kws detect"):
    """``(model, labels, DetectorConfig)``: the detector settings stored with the model by
    ``kws export --threshold`` (its measured operating point), else the defaults."""
    from asr.checkpoint import load_checkpoint, load_model

    path = Path(path) if path is not None else DEFAULT_MODEL
    if not path.is_file():
        hint = " (the package was installed without its default model; pass --model)" if path == DEFAULT_MODEL else ""
        raise MissingFileError(f"{path}: model file not found{hint}")
    model, family, labels, _ = load_model(path, device=device, purpose=purpose, recognizer=False)
    stored = load_checkpoint(path).get("detector") or {}
    cfg = DetectorConfig(**{k: v for k, v in stored.items() if hasattr(DetectorConfig, k)})
    return model, labels, cfg
