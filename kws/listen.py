"""Keyword events from live audio: ``kws listen``.

:func:`listen` feeds the blocks of an :class:`asr.serve.sources.AudioSource` (a microphone, or a
file played as if it were one) to a detector and hands each event to a callback as soon as the
detector completes it. It stops when the source ends or on Ctrl-C, and then flushes the
detector, so the events of a file equal those of ``kws detect`` on it (tested).

Example:
    >>> from asr.serve.sources import FileSource  # doctest: +SKIP
    >>> from kws.onnx_detect import OnnxDetector  # doctest: +SKIP
    >>> det = OnnxDetector("kws/pretrained/crnn.onnx", batch_windows=1)  # doctest: +SKIP
    >>> listen(det, FileSource("commands.wav", det.sample_rate), print)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kws.events import Event, StreamEvents

__all__ = ["listen", "ListenSummary"]


@dataclass
class ListenSummary:
    """What a listening session did: events reported, seconds of audio heard, whether Ctrl-C ended it."""

    events: int
    seconds: float
    interrupted: bool


def listen(detector: StreamEvents, source, on_event: Callable[[Event], None]) -> ListenSummary:
    """Run ``detector`` over ``source`` until it ends or Ctrl-C; call ``on_event`` for every event.

    The detector should classify every window as soon as it is ready (``batch_windows=1``), so
    that an event is reported about ``patience`` hops after the word (plus the isolation rule's
    after-context when that is on), not when a large batch of windows has filled.
    """
    if source.sample_rate != detector.sample_rate:
        raise ValueError(f"the source delivers {source.sample_rate} Hz, the detector needs {detector.sample_rate} Hz")
    detector.reset()
    count, interrupted = 0, False
    name = getattr(source, "name", "")
    try:
        for block in source:
            for event in detector.process(block):
                event.file = name
                on_event(event)
                count += 1
    except KeyboardInterrupt:
        interrupted = True
    finally:
        source.close()
    for event in detector.flush():
        event.file = name
        on_event(event)
        count += 1
    return ListenSummary(count, detector.seconds_processed, interrupted)
