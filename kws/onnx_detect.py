"""The keyword detector on ONNX Runtime and numpy: no torch at run time.

:class:`OnnxDetector` has the interface of :class:`kws.detect.Detector` (``process``,
``flush``, ``reset``, ``scores``, the same :class:`kws.events.DetectorConfig`) and gives
the same events: the front-end is :class:`asr.runtime.features.LogMel` (equal to
:mod:`asr.features`), the model part is the graph written by :func:`kws.onnx_export.export_onnx`,
and everything after the posteriors is :class:`kws.events.StreamEvents`, shared with the
PyTorch detector.

Example:
    >>> det = OnnxDetector.from_file("kws/pretrained/crnn.onnx")  # doctest: +SKIP
    >>> events = det.process(samples_16k) + det.flush()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from asr.errors import ToolkitError
from asr.runtime import onnx_session as runtime_session
from asr.runtime.features import LogMel
from kws.events import DetectorConfig, StreamEvents, end_padding


class ModelFileError(ToolkitError, ValueError):
    """An ONNX file that is not a keyword spotter exported by this toolkit."""


def onnx_session(path: str | os.PathLike, threads: int = 1):
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads, and its
    ``kws`` metadata (dict)."""
    path = Path(path)
    sess = runtime_session(path, threads, ModelFileError)
    raw = sess.get_modelmeta().custom_metadata_map.get("kws")
    if raw is None:
        raise ModelFileError(f"{path}: an ONNX model without the 'kws' metadata (export it with `kws export CKPT OUT.onnx`)")
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise ModelFileError(f"{path}: unreadable 'kws' metadata ({e})") from None
    return sess, meta


class OnnxDetector(StreamEvents):
    """Keyword events from a stream of samples, on ONNX Runtime (see the module docstring).

    Args:
        path: an ONNX file written by ``kws export CKPT OUT.onnx``.
        keywords: which classes to report (default: all but ``_silence_`` / ``_unknown_``).
        config: thresholds and timing; default the settings stored in the file; keyword
            arguments override fields.
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(self, path: str | os.PathLike, keywords: Sequence[str] | None = None,
                 config: DetectorConfig | None = None, threads: int = 1, batch_windows: int = 256, **overrides):
        self.path = Path(path)
        self.session, meta = onnx_session(path, threads)
        try:
            cfg = config or DetectorConfig.from_dict(meta.get("detector"))
            for key, value in overrides.items():
                if not hasattr(cfg, key):
                    raise TypeError(f"unknown detector setting {key!r}")
                setattr(cfg, key, value)
            self.frontend = LogMel(meta["features"])
            self.kernel_frames, self.proj_dim = int(meta["kernel_frames"]), int(meta["proj_dim"])
            self.int8 = bool(meta.get("int8", False))
            self._setup(meta["labels"], keywords, cfg, sample_rate=self.frontend.sample_rate,
                        frame_seconds=self.frontend.hop_length / self.frontend.sample_rate,
                        stride_frames=int(meta["stride_frames"]), window_frames=int(meta["window_frames"]),
                        window=float(meta["window"]), batch_windows=batch_windows)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ToolkitError):
                raise
            raise ModelFileError(f"{self.path}: bad 'kws' metadata ({type(e).__name__}: {e})") from None
        self.reset()

    @classmethod
    def from_file(cls, path: str | os.PathLike, keywords: Sequence[str] | None = None, **overrides) -> "OnnxDetector":
        return cls(path, keywords, **overrides)

    def reset(self) -> None:
        """Start a new stream."""
        self._feat_state = None
        self._feats = np.zeros((0, self.frontend.dim), dtype=np.float32)  # log-mel frames not yet convolved
        self._cache = np.zeros((0, self.proj_dim), dtype=np.float32)  # projected convolution frames
        self._cache_offset = 0  # index of self._cache[0] among all convolution frames
        self._reset_events()

    def classify_clips(self, clips: Sequence[np.ndarray], batch: int = 64) -> np.ndarray:
        """Class posteriors ``(N, C)`` of clips at the model's rate, each cut or zero-padded to the
        window (1 s): the model's output on that window, as :class:`kws.detect.Detector` sees it."""
        n = int(round(self.window_seconds * self.sample_rate))
        kt, st, W = self.kernel_frames, self.stride_frames, self.window_frames
        need = (W - 1) * st + kt  # feature frames of one window
        block = -(-need // st) * st  # a whole number of convolution strides per clip
        out = []
        for i in range(0, len(clips), batch):
            feats = []
            for clip in clips[i:i + batch]:
                x = np.zeros(n, np.float32)
                clip = np.asarray(clip, np.float32).reshape(-1)[:n]
                x[: clip.size] = clip
                f = self.frontend(x)[:need]
                feats.append(np.concatenate([f, np.zeros((block - f.shape[0], f.shape[1]), np.float32)]))
            starts = np.arange(len(feats), dtype=np.int64) * (block // st)
            probs, _ = self.session.run(None, {"feats": np.concatenate(feats)[None],
                                               "cache": np.zeros((0, self.proj_dim), np.float32), "starts": starts})
            out.append(probs)
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def scores(self, chunk, final: bool = False) -> tuple[int, np.ndarray]:
        """As :meth:`kws.detect.Detector.scores`: ``(first new window, smoothed posteriors (N, K))``."""
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        self.samples += chunk.size
        if final and self.cfg.end_pad > 0 and self.samples > 0:
            chunk = np.concatenate([chunk, end_padding(self.cfg, self.sample_rate)])
        frames, energy, self._feat_state = self.frontend.infer(chunk, self._feat_state, energy=True)
        if frames.shape[0]:
            self._add_energy(energy)
            self._feats = np.concatenate([self._feats, frames])
        kt, st, W, h = self.kernel_frames, self.stride_frames, self.window_frames, self.hop
        n_conv = (self._feats.shape[0] - kt) // st + 1 if self._feats.shape[0] >= kt else 0
        available = self._cache_offset + self._cache.shape[0] + n_conv
        last = (available - W) // h  # index of the last complete window
        ready = last - self._next_window + 1
        empty = np.zeros((0, len(self.keywords)), dtype=np.float32)
        if ready <= 0 or (ready < self.batch_windows and not final):
            return self._next_window, empty
        # (n_conv >= 1 here: frames are projected only in calls that classify, so new windows need new frames)
        starts = np.arange(self._next_window, last + 1, dtype=np.int64) * h - self._cache_offset
        probs, new = self.session.run(None, {"feats": self._feats[None, : (n_conv - 1) * st + kt],
                                             "cache": self._cache, "starts": starts})
        self._feats = self._feats[n_conv * st:]
        first = self._next_window
        self._next_window = last + 1
        allf = np.concatenate([self._cache, new])
        keep_from = self._next_window * h - self._cache_offset
        self._cache = allf[keep_from:]
        self._cache_offset += keep_from
        return first, self._smooth(probs[:, self.keyword_index])
