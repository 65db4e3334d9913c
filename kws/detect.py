"""Streaming keyword detection over audio of any length.

:class:`Detector` turns a stream of samples into keyword events:

1. features frame by frame (:meth:`asr.features.FeatureExtractor.infer`) and the global CMVN;
2. the CRNN's convolution once per convolution frame (it is shift-invariant, so windows share it);
3. the recurrent layers and classifier on a sliding window as long as a training clip
   (1 s by default), one window every ``hop`` seconds, all ready windows in one batch;
4. posteriors smoothed by a causal moving average over ``smooth`` windows;
5. per keyword, a run of windows whose smoothed posterior reaches ``threshold`` for at least
   ``patience`` windows becomes one event, reported when the run ends (or reaches
   ``max_event`` seconds) with its best score and the span of the word in its best window:
   the frames around the loudest within ``trim_db`` of it and ``trim_floor_db`` over the
   window's background, gaps up to ``trim_gap`` seconds bridged (the word rather than the
   whole window, and not the background of a noisy recording);
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

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from asr.errors import MissingFileError
from kws.events import (DetectorConfig, Event, EventLogic, StreamEvents, end_padding, events_in_file,  # noqa: F401
                        isolation_margin, word_bounds)



class Detector(StreamEvents):
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
        self.model = model.eval()
        fc = model.frontend.features.config
        frame_seconds = fc.hop_length / fc.sample_rate
        window_frames = int(model.conv_lengths(torch.tensor(fc.num_frames(int(round(window * fc.sample_rate))))))
        self._setup(labels, keywords, cfg, sample_rate=fc.sample_rate, frame_seconds=frame_seconds,
                    stride_frames=model.stride_frames, window_frames=window_frames, window=window,
                    batch_windows=batch_windows)
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self._feat_state = None
        self._feats = torch.zeros(0, self.model.frontend.dim)
        self._feat_offset = 0  # index of self._feats[0] among all feature frames
        self._conv = torch.zeros(0, self.model.rnn.input_size)
        self._conv_offset = 0  # index of self._conv[0] among all convolution frames
        self._reset_events()

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

    def scores(self, chunk, final: bool = False) -> tuple[int, np.ndarray]:
        """Feed samples; return ``(index of the first new window, smoothed keyword posteriors (N, K))``.

        Windows are held back until ``batch_windows`` are ready unless ``final`` is set; ``final``
        marks the end of the stream and first reads ``end_pad`` seconds of quiet noise (call it once).
        :meth:`windows`, :meth:`classify` and :meth:`accept` in a row (a server classifies the
        windows of many streams in one batch between the first and the last).
        """
        first, windows = self.windows(chunk, final)
        if windows is None:
            return first, np.zeros((0, len(self.keywords)), dtype=np.float32)
        return first, self.accept(self.classify(windows))

    @torch.no_grad()
    def windows(self, chunk, final: bool = False) -> tuple[int, torch.Tensor | None]:
        """Feed samples -> ``(index of the first new window, convolution frames of the windows ready
        now (N, W, D), or None while fewer than ``batch_windows`` are ready and not ``final``)``."""
        chunk = torch.as_tensor(chunk, dtype=torch.float32).reshape(-1)
        self.samples += chunk.numel()
        if final and self.cfg.end_pad > 0 and self.samples > 0:
            chunk = torch.cat([chunk, torch.from_numpy(end_padding(self.cfg, self.sample_rate))])
        model = self.model
        frames, self._feat_state = model.frontend.features.infer(chunk.unsqueeze(0), self._feat_state)
        self._add_energy(torch.logsumexp(frames[0], dim=1).numpy())
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
            return self._next_window, None
        starts = torch.arange(self._next_window, last + 1) * h - self._conv_offset
        windows = self._conv[starts.unsqueeze(1) + torch.arange(W)]  # (N, W, D), a copy
        first = self._next_window
        self._next_window = last + 1
        keep_from = self._next_window * h - self._conv_offset
        self._conv = self._conv[keep_from:]
        self._conv_offset += keep_from
        return first, windows

    @torch.no_grad()
    def classify(self, windows: torch.Tensor) -> torch.Tensor:
        """Classifier outputs ``(N, C)`` for windows ``(N, W, D)`` (of this stream or many)."""
        return self.model.classify(windows, torch.full((windows.shape[0],), windows.shape[1]))

    def accept(self, logits: torch.Tensor) -> np.ndarray:
        """The classifier's outputs ``(N, C)`` for the windows :meth:`windows` gave, in order ->
        smoothed keyword posteriors ``(N, K)``."""
        probs = torch.softmax(logits, dim=-1)[:, torch.from_numpy(self.keyword_index)]
        return self._smooth(probs.numpy())


@dataclass
class ScoredAudio:
    """One recording scored once for any threshold: smoothed keyword posteriors ``(windows, K)``
    and the log energy of every feature frame (for event bounds and the isolation rule)."""

    scores: np.ndarray
    energy: np.ndarray
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
        parts = [np.asarray(detector.scores(block)[1]) for block in blocks]
        parts.append(np.asarray(detector.scores(np.zeros(0, dtype=np.float32), final=True)[1]))
        energy = np.concatenate(detector.energy_log) if detector.energy_log else np.zeros(0, dtype=np.float32)
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
    logic = EventLogic(s.shape[1], threshold, cfg.patience, int(np.ceil(cfg.refractory / hop_s)),
                        max(1, int(round(cfg.max_event / hop_s))))
    hits = logic.update(s, 0) + logic.flush()
    if cfg.isolation_db <= 0 or not isinstance(audio, ScoredAudio):
        return hits
    kept = []
    for k, w, score in hits:
        if w not in audio.margins:
            start, end = word_bounds(audio.energy, 0, w, detector.window_start(w), detector._window_feature_frames,
                                     detector.frame_seconds, detector.hop * detector.stride_frames, cfg.trim_db,
                                     cfg.trim_floor_db, cfg.trim_gap)
            audio.margins[w] = isolation_margin(audio.energy, 0, round(start, 3), round(end, 3), detector.frame_seconds,
                                                cfg.isolation_gap, cfg.isolation_context)
        if audio.margins[w] >= cfg.isolation_db:
            kept.append((k, w, score))
    return kept


def detect_file(detector: StreamEvents, path: str | os.PathLike, block_seconds: float = 30.0) -> Iterator[Event]:
    """Events in one file, read in blocks (any soundfile format and rate; resampled as a stream)."""
    return events_in_file(detector, path, block_seconds)


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
    cfg = DetectorConfig.from_dict(load_checkpoint(path).get("detector"))
    return model, labels, cfg
