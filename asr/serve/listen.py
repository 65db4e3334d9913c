"""Transcripts from live audio: ``asr listen``.

:func:`listen` feeds the blocks of an :class:`asr.serve.sources.AudioSource` to a streaming
recognizer (:class:`asr.decode.streaming.Recognizer`, or the torch-free
:class:`asr.runtime.recognizer.OnnxRecognizer`), reports the partial transcript whenever it
grows, and cuts the endless live stream into utterances with an endpoint rule: once some text
has been recognised, ``endpoint_silence`` seconds without a new token (or ``max_utterance``
seconds of audio) end the utterance: the recognizer is flushed, the final transcript reported
with its start and end in seconds since listening began, and a new stream starts. With
``endpoint_silence=0`` the whole source is one utterance, and its final text equals
``asr transcribe --streaming`` on the same file (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["listen", "Utterance", "ListenSummary"]


@dataclass
class Utterance:
    """A partial or final transcript; ``start``/``end`` in seconds since listening began, ``words``
    (finals of recognizers that time words) as :class:`asr.decode.timestamps.WordTiming` dicts with
    times on the same clock."""

    text: str
    start: float
    end: float
    final: bool
    words: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {"type": "final" if self.final else "partial", "text": self.text,
               "start": round(self.start, 2), "end": round(self.end, 2)}
        if self.final:
            out["words"] = self.words
        return out


@dataclass
class ListenSummary:
    """What a listening session did."""

    utterances: int
    seconds: float
    interrupted: bool


def _words(recognizer, state, offset: float) -> list[dict]:
    words = getattr(recognizer, "words", None)  # the ONNX recognizer transcribes without word times
    if words is None:
        return []
    out = []
    for w in words(state):
        d = w.to_json()
        d["start"], d["end"] = round(w.start + offset, 2), round(w.end + offset, 2)
        out.append(d)
    return out


def listen(recognizer, source, on_result: Callable[[Utterance], None], endpoint_silence: float = 1.0,
           max_utterance: float = 30.0) -> ListenSummary:
    """Recognise ``source`` until it ends or Ctrl-C, calling ``on_result`` with each partial (when the
    text grows) and each final :class:`Utterance`.

    ``endpoint_silence``: seconds without a new token that end an utterance with text (0: never);
    ``max_utterance``: seconds of audio after which an utterance ends regardless (0: never).
    """
    sr = int(source.sample_rate)
    state, text = None, ""
    heard = 0  # samples since listening began
    utt_start = 0  # sample where the current utterance began
    last_change = 0  # sample at which its text last grew
    finals, interrupted = 0, False

    def finish() -> None:
        nonlocal state, text, utt_start, finals
        if state is not None:
            final_text, state = recognizer.infer(np.zeros(0, np.float32), state, final=True)
            if final_text:
                on_result(Utterance(final_text, utt_start / sr, heard / sr, True,
                                    _words(recognizer, state, utt_start / sr)))
                finals += 1
        state, text, utt_start = None, "", heard

    try:
        for block in source:
            new_text, state = recognizer.infer(block, state)
            heard += block.size
            if new_text != text:
                text, last_change = new_text, heard
                on_result(Utterance(text, utt_start / sr, heard / sr, False))
            silent = (heard - last_change) / sr
            long = (heard - utt_start) / sr
            if (text and endpoint_silence > 0 and silent >= endpoint_silence) or (max_utterance > 0 and long >= max_utterance):
                finish()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        source.close()
    finish()
    return ListenSummary(finals, heard / sr, interrupted)

