"""The keyword spotter as an engine of the streaming server (``kws serve``; the server and the
protocol are :mod:`asr.serve.server` and :mod:`asr.serve.protocol`).

Each stream has its own detector (features, convolution frames, smoothing, event logic and its
own keywords and threshold), all sharing one model. Two backends:

* ``torch`` (:class:`kws.detect.Detector`): the expensive part, the recurrent layers and
  classifier over each 1-s analysis window, runs once per tick for the windows of *all* streams
  together (``Detector.windows`` per stream, one ``Detector.classify`` call, ``Detector.accept``
  per stream); the rest stays per stream. The events equal those of ``Detector.process``.
* ``onnx`` (:class:`kws.onnx_detect.OnnxDetector`, no torch): the exported graph takes one
  stream's frames and cache, so each stream runs on its own.

Both classify a window as soon as its audio is there (``batch_windows=1``), so events come out
as the audio arrives instead of waiting for a batch of 256 windows.

Example:
    >>> engine = KwsEngine.from_model()  # the model shipped with the package  # doctest: +SKIP
    >>> stream = engine.open({"keywords": ["yes", "no"], "threshold": 0.7})  # doctest: +SKIP
    >>> engine.step([Job(stream, samples_16k, final=True)])[0].messages  # doctest: +SKIP
    [{'type': 'event', 'keyword': 'yes', ...}, {'type': 'final', 'events': 1, 'audio_seconds': 3.0}]
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from asr.errors import ToolkitError, UsageError
from asr.serve.engines import Engine, Job, JobResult, check_options
from asr.serve.protocol import INVALID_DATA, ProtocolError
from kws.events import StreamEvents

log = logging.getLogger("kws.serve")

__all__ = ["KwsEngine", "load_kws_engine"]


@dataclass(eq=False)
class _KwsStream:
    detector: StreamEvents
    events: int = 0
    error: str | None = None


def _event(ev) -> dict:
    return {"type": "event", "keyword": ev.keyword, "start": ev.start, "end": ev.end, "score": ev.score}


class KwsEngine(Engine):
    """Keyword events for many streams (see the module docstring).

    Args:
        template: a detector with the server's defaults (keywords, threshold, timing); each
            stream gets a copy sharing its model, with the client's ``keywords``/``threshold``.
        batch: torch backend: classify the windows of all the streams of a tick in one call.
    """

    name = "kws"

    def __init__(self, template: StreamEvents, batch: bool = True):
        self.template = template
        self.sample_rate = int(template.sample_rate)
        self.batch = batch and hasattr(template, "windows")
        self.calls = 0  # classifier calls (torch) or detector calls (onnx)
        self.windows = 0
        self.streams = 0

    @classmethod
    def from_model(cls, model: str | os.PathLike | None = None, backend: str = "auto", keywords: Sequence[str] | None = None,
                   threads: int = 1, batch: bool = True, **overrides) -> "KwsEngine":
        """The engine of ``kws serve``: see :func:`load_kws_engine`."""
        return load_kws_engine(model, backend, keywords, threads, batch, **overrides)

    def open(self, options: dict) -> _KwsStream:
        check_options(options, {"keywords": list, "threshold": (int, float)})
        t = self.template
        keywords = options.get("keywords", t.keywords)
        if not keywords or not all(isinstance(k, str) for k in keywords) or len(keywords) > len(t.labels):
            raise ProtocolError(INVALID_DATA, "config: keywords must be a non-empty list of the model's labels")
        unknown = [k for k in keywords if k not in t.labels]
        if unknown:
            raise ProtocolError(INVALID_DATA, f"config: unknown keyword(s) {', '.join(unknown)[:40]} "
                                              f"(the model knows {', '.join(t.labels)})")
        threshold = options.get("threshold", t.cfg.threshold)
        if not 0.0 < threshold <= 1.0:
            raise ProtocolError(INVALID_DATA, f"config: threshold must be in (0, 1], got {threshold}")
        det = copy.copy(t)  # shares the model / ONNX session; everything per stream is set up again below
        cfg = dataclasses.replace(t.cfg, threshold=float(threshold))
        det._setup(t.labels, list(dict.fromkeys(keywords)), cfg, sample_rate=t.sample_rate,
                   frame_seconds=t.frame_seconds, stride_frames=t.stride_frames, window_frames=t.window_frames,
                   window=t.window_seconds, batch_windows=1)
        det.reset()
        return _KwsStream(det)

    def stats(self) -> dict:
        if not self.batch:
            return {"detector_calls": self.calls}
        return {"classifier_calls": self.calls, "streams_per_classifier_call": round(self.streams / max(self.calls, 1), 2),
                "windows_per_classifier_call": round(self.windows / max(self.calls, 1), 2)}

    def step(self, jobs: Sequence[Job]) -> list[JobResult]:
        out: dict[int, list[dict]] = {id(job): [] for job in jobs}
        plans = []
        for job in jobs:  # a final job is the last audio, then the end of the stream (as process + flush)
            steps = [(job.samples, False)] if job.samples.size or not job.final else []
            plans.append(steps + ([(np.zeros(0, np.float32), True)] if job.final else []))
        for r in range(max((len(p) for p in plans), default=0)):
            items = [(job, *plan[r]) for job, plan in zip(jobs, plans) if r < len(plan) and job.stream.error is None]
            if self.batch:
                self._batched_round(items, out)
            else:
                for job, samples, final in items:
                    self._single(job, samples, final, out)
        results = []
        for job in jobs:
            st = job.stream
            if st.error is not None:
                results.append(JobResult(error=st.error))
                continue
            messages = out[id(job)]
            if job.final:
                messages.append({"type": "final", "events": st.events,
                                 "audio_seconds": round(st.detector.seconds_processed, 3)})
            results.append(JobResult(messages))
        return results

    def _emit(self, job: Job, events, out: dict) -> None:
        job.stream.events += len(events)
        out[id(job)].extend(_event(ev) for ev in events)

    def _single(self, job: Job, samples: np.ndarray, final: bool, out: dict) -> None:
        det = job.stream.detector
        try:
            self._emit(job, det.flush() if final else det.process(samples), out)
            self.calls += 1
        except Exception as e:  # noqa: BLE001 - one stream's failure must not end the others
            log.exception("the detector failed on a stream")
            job.stream.error = f"{type(e).__name__}: {e}"

    def _batched_round(self, items: list, out: dict) -> None:
        """Windows of every stream, one classifier call, then each stream's events."""
        import torch

        ready = []
        for job, samples, final in items:
            try:
                first, windows = job.stream.detector.windows(samples, final)
                ready.append((job, final, first, windows))
            except Exception as e:  # noqa: BLE001
                log.exception("the detector failed on a stream")
                job.stream.error = f"{type(e).__name__}: {e}"
        with_windows = [r for r in ready if r[3] is not None]
        logits = None
        if with_windows:
            try:
                logits = self.template.classify(torch.cat([r[3] for r in with_windows])).split(
                    [r[3].shape[0] for r in with_windows])
                self.calls += 1
                self.streams += len(with_windows)
                self.windows += sum(r[3].shape[0] for r in with_windows)
            except Exception:  # noqa: BLE001 - retried stream by stream below
                log.exception("a batched classifier call failed; retrying its streams one by one")
        got = {}
        for i, (job, final, first, windows) in enumerate(with_windows):
            try:
                got[id(job)] = logits[i] if logits is not None else job.stream.detector.classify(windows)
            except Exception as e:  # noqa: BLE001
                job.stream.error = f"{type(e).__name__}: {e}"
        for job, final, first, windows in ready:
            if job.stream.error is not None:
                continue
            det = job.stream.detector
            try:
                hits = det._logic.update(det.accept(got[id(job)]), first) if windows is not None else []
                if final:
                    hits = hits + det._logic.flush()
                self._emit(job, det._events(hits, final=final), out)
            except Exception as e:  # noqa: BLE001
                log.exception("the event logic failed on a stream")
                job.stream.error = f"{type(e).__name__}: {e}"


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def load_kws_engine(model: str | os.PathLike | None = None, backend: str = "auto", keywords: Sequence[str] | None = None,
                    threads: int = 1, batch: bool = True, **overrides) -> KwsEngine:
    """The engine of ``kws serve``.

    Args:
        model: a ``crnn`` checkpoint (``.pt``) or its ONNX export (``.onnx``); ``None``: the model
            shipped with the package (``crnn.pt`` / ``crnn.onnx``).
        backend: ``torch`` (windows of all streams batched), ``onnx`` (per stream, no torch) or
            ``auto``: onnx for a ``.onnx`` model, or for the shipped model when onnxruntime is
            installed (it serves about twice the streams: ``benchmarks/serve_load.py``), else torch.
        keywords: the keywords of a stream whose config names none (default: all the model knows).
        overrides: :class:`kws.events.DetectorConfig` fields (e.g. ``threshold``), the defaults of
            every stream.
    """
    default = Path(__file__).resolve().parent / "pretrained" / "crnn.pt"  # kws.detect.DEFAULT_MODEL (no torch import)
    path = Path(model) if model is not None else None
    if backend == "auto":
        backend = "onnx" if (path is not None and path.suffix == ".onnx") or (path is None and _has_onnxruntime()) \
            else "torch"
    if backend not in ("torch", "onnx"):
        raise UsageError(f"backend must be torch, onnx or auto, got {backend!r}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        if backend == "onnx":
            from kws.onnx_detect import OnnxDetector

            onnx_path = path if path is not None and path.suffix == ".onnx" else \
                (path or default).with_suffix(".onnx")
            return KwsEngine(OnnxDetector(onnx_path, keywords, threads=threads, batch_windows=1, **overrides), batch)
        if path is not None and path.suffix == ".onnx":
            raise UsageError(f"{path}: the torch backend needs the PyTorch checkpoint (.pt), not its ONNX export")
        import torch

        from kws.detect import Detector, load_detector

        torch.set_num_threads(max(1, threads))
        net, labels, cfg = load_detector(path, purpose="kws serve")
        return KwsEngine(Detector(net, labels, keywords, cfg, batch_windows=1, **overrides), batch)
    except TypeError as e:
        raise UsageError(str(e)) from None
    except ToolkitError:
        raise
