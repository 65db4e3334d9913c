"""The wire protocol of ``asr serve`` / ``kws serve``: messages, close codes, limits.

One WebSocket connection carries one audio stream:

1. The client's first message is a **text** message holding a JSON config::

       {"sample_rate": 16000,          # Hz of the audio that follows (8000-192000; resampled as needed)
        "format": "pcm16",             # "pcm16" (int16 little-endian) or "float32" (little-endian, -1..1)
        "token": "...",                # required when the server was started with --token
        ...engine options}             # asr: {"partial": true}
                                       # kws: {"keywords": ["yes", "no"], "threshold": 0.6}

   Every field has a default (16000, "pcm16", no token, the engine's defaults); an unknown
   field is an error (a misspelt option must not be silently ignored). The server answers
   ``{"type": "ready", "engine": "asr"|"kws", "sample_rate": <the model's rate>}``.
2. Then **binary** messages of audio in that format, of any size (a whole number of samples).
3. Then a **text** message ``{"eos": true}`` (or the bare text ``EOS``): the end of the stream.
   The server flushes the stream, sends its final message and closes with 1000.

Server messages (text, JSON), in order:

* asr: ``{"type": "partial", "text", "words", "first_word", "audio_seconds"}`` whenever the
  transcript so far changed (unless the config says ``"partial": false``); the text only grows.
  Words are ``{"word", "start", "end", "confidence"}`` (seconds from the start of the stream); a
  partial carries the words from index ``first_word`` on (``words[first_word:] = message["words"]``
  rebuilds the list: the earlier ones were sent before and no longer change, only the last word
  may still grow), so that messages do not grow with the stream. ``audio_seconds`` is how much of
  the stream the transcript covers. At the end ``{"type": "final", "text", "words",
  "audio_seconds"}`` with all the words.
* kws: ``{"type": "event", "keyword", "start", "end", "score"}`` as soon as a detection is
  complete, and at the end ``{"type": "final", "events": <count>, "audio_seconds"}``.

Close codes (the reason says what happened, in words):

======  ==========================================================================
1000    normal: the final message was sent
1001    the server is shutting down
1003    unsupported data: audio before the config, or a config that is not text
1007    invalid data: malformed JSON, a bad config value, audio that is not a whole
        number of samples, non-finite float samples, text that is not end-of-stream
1008    policy violation: missing or wrong token
1009    message too big (over ``--max-message-bytes``)
1011    the server failed on this stream (the others go on)
1013    try again later: the server already serves ``--max-connections`` streams
4000    stream too long: more than ``--max-stream-seconds`` of audio (the audio up
        to the limit is still recognised and its final message sent first)
4001    idle timeout: nothing received for ``--idle-timeout`` seconds
======  ==========================================================================

Example:
    >>> cfg = parse_config('{"sample_rate": 8000, "format": "float32", "partial": false}')
    >>> cfg.sample_rate, cfg.format, cfg.options
    (8000, 'float32', {'partial': False})
    >>> decode_audio(b"\\x00\\x40\\x00\\xc0", "pcm16").tolist()
    [0.5, -0.5]
    >>> parse_config('{"sample_rate": "fast"}')
    Traceback (most recent call last):
    ...
    asr.serve.protocol.ProtocolError: (1007) config: sample_rate must be an integer (Hz), got 'fast'
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from asr.errors import ToolkitError

__all__ = ["ProtocolError", "StreamConfig", "ServerLimits", "parse_config", "parse_control", "decode_audio",
           "close_reason", "NORMAL", "GOING_AWAY", "UNSUPPORTED_DATA", "INVALID_DATA", "POLICY", "TOO_BIG",
           "INTERNAL_ERROR", "TRY_AGAIN_LATER", "STREAM_TOO_LONG", "IDLE_TIMEOUT"]

NORMAL = 1000
GOING_AWAY = 1001
UNSUPPORTED_DATA = 1003
INVALID_DATA = 1007
POLICY = 1008
TOO_BIG = 1009
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013
STREAM_TOO_LONG = 4000
IDLE_TIMEOUT = 4001

FORMATS = {"pcm16": np.dtype("<i2"), "float32": np.dtype("<f4")}
MIN_RATE, MAX_RATE = 8000, 192000
COMMON_FIELDS = ("sample_rate", "format", "token")
MAX_CONFIG_CHARS = 4096


class ProtocolError(ToolkitError, ValueError):
    """A client broke the protocol: the connection is closed with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str):
        self.code, self.reason = code, close_reason(reason)
        super().__init__(f"({code}) {self.reason}")


def close_reason(text: str) -> str:
    """``text`` cut to the 123 bytes of UTF-8 a WebSocket close reason may hold."""
    data = text.encode("utf-8")
    if len(data) <= 123:
        return text
    return data[:120].decode("utf-8", errors="ignore") + "..."


@dataclass
class ServerLimits:
    """What one client may use of the server (each bound closes the stream with its own code)."""

    max_connections: int = 16  # concurrent streams; one more is closed with 1013
    max_message_bytes: int = 1 << 20  # largest message (config or audio); a bigger one closes with 1009
    max_stream_seconds: float = 3600.0  # audio per stream; past it: final message, then 4000
    idle_timeout: float = 30.0  # seconds without a message from the client (before end-of-stream): 4001
    max_buffered_seconds: float = 10.0  # audio received but not processed yet; the server stops reading past it
    max_tick_seconds: float = 1.0  # audio of one stream processed in one batch (fairness between streams)

    def check(self) -> None:
        from asr.errors import UsageError

        for name in ("max_connections", "max_message_bytes"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("max_stream_seconds", "idle_timeout", "max_buffered_seconds", "max_tick_seconds"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise UsageError(f"{name.replace('_', '-')} must be a positive number of seconds, got {value}")


@dataclass
class StreamConfig:
    """The client's config message: audio rate and format, token, and the engine's options."""

    sample_rate: int = 16000
    format: str = "pcm16"
    token: str | None = None
    options: dict | None = None

    @property
    def bytes_per_sample(self) -> int:
        return FORMATS[self.format].itemsize


def parse_config(text: str | bytes) -> StreamConfig:
    """The first message -> :class:`StreamConfig`; anything unusable raises :class:`ProtocolError`."""
    if not isinstance(text, str):
        raise ProtocolError(UNSUPPORTED_DATA, "expected a JSON config as the first (text) message, got binary data")
    if len(text) > MAX_CONFIG_CHARS:
        raise ProtocolError(INVALID_DATA, f"config longer than {MAX_CONFIG_CHARS} characters")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:  # (RecursionError: nested too deep)
        raise ProtocolError(INVALID_DATA, f"config: malformed JSON ({e})") from None
    if not isinstance(data, dict):
        raise ProtocolError(INVALID_DATA, f"config: expected a JSON object, got {type(data).__name__}")
    rate = data.get("sample_rate", 16000)
    if isinstance(rate, float) and rate.is_integer():
        rate = int(rate)
    if not isinstance(rate, int) or isinstance(rate, bool):
        raise ProtocolError(INVALID_DATA, f"config: sample_rate must be an integer (Hz), got {rate!r:.40}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(INVALID_DATA, f"config: sample_rate must be {MIN_RATE}-{MAX_RATE} Hz, got {rate}")
    fmt = data.get("format", "pcm16")
    if fmt not in FORMATS:
        raise ProtocolError(INVALID_DATA, f"config: format must be {' or '.join(FORMATS)}, got {fmt!r:.40}")
    token = data.get("token")
    if token is not None and not isinstance(token, str):
        raise ProtocolError(INVALID_DATA, "config: token must be a string")
    options = {k: v for k, v in data.items() if k not in COMMON_FIELDS}
    return StreamConfig(rate, fmt, token, options)


def parse_control(text: str) -> bool:
    """A text message after the config: True for end-of-stream; anything else raises :class:`ProtocolError`."""
    if text.strip() == "EOS":
        return True
    try:
        data = json.loads(text) if len(text) <= MAX_CONFIG_CHARS else None
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict) and data.get("eos") is True:
        return True
    raise ProtocolError(INVALID_DATA, 'expected binary audio or the end of stream ({"eos": true} or EOS) '
                                      f"after the config, got text {text[:30]!r}")


def decode_audio(data: bytes, fmt: str) -> np.ndarray:
    """A binary message -> float32 samples ``(n,)`` in [-1, 1]; raises :class:`ProtocolError` on bad data."""
    dtype = FORMATS[fmt]
    if len(data) % dtype.itemsize:
        raise ProtocolError(INVALID_DATA, f"audio message of {len(data)} bytes is not a whole number of "
                                          f"{fmt} samples ({dtype.itemsize} bytes each)")
    x = np.frombuffer(data, dtype=dtype)
    if fmt == "pcm16":
        return x.astype(np.float32) / 32768.0
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ProtocolError(INVALID_DATA, "float32 audio with NaN or infinite samples")
    return x
