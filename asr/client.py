"""A small client for ``asr serve`` / ``kws serve`` (the protocol: :mod:`asr.serve.protocol`).

:func:`stream_file` sends an audio file to a server as a stream (at its own sample rate, in
``chunk_ms`` pieces, as fast as possible or at real-time pace) and returns everything the server
said; ``asr transcribe --server ws://HOST:PORT FILE...`` uses it.

Example:
    >>> result = stream_file("ws://127.0.0.1:8765", "a.flac")  # doctest: +SKIP
    >>> result["final"]["text"]  # doctest: +SKIP
    'HELLO WORLD'
    >>> result = stream_file("ws://127.0.0.1:8766", "long.wav", config={"keywords": ["yes", "no"]})  # doctest: +SKIP
    >>> [(m["keyword"], m["start"]) for m in result["messages"] if m["type"] == "event"]  # doctest: +SKIP
    [('yes', 3.2)]

The result dict holds ``ready`` (the server's first message), ``messages`` (every later message
in order: partials or events, then the final), ``final``, ``close_code`` / ``close_reason``, and
``timing`` (``time.monotonic()`` seconds): ``sent`` ``[[audio seconds sent so far, time], ...]``,
``received`` (the arrival time of each message), ``eos`` (when end-of-stream was sent) and
``final`` (when the final message arrived), for latency measurements.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from asr.errors import ToolkitError

__all__ = ["ServerError", "stream_file", "stream_file_async", "stream_audio"]


class ServerError(ToolkitError, RuntimeError):
    """The server closed the stream before its final message (``code`` and ``reason`` say why)."""

    def __init__(self, url: str, code: int | None, reason: str):
        self.code, self.reason = code, reason
        if code is None:
            super().__init__(f"{url}: {reason or 'the connection ended before the final message'}")
        else:
            super().__init__(f"{url}: the server closed the stream with code {code}" + (f": {reason}" if reason else ""))


def _encode(block: np.ndarray, fmt: str) -> bytes:
    if fmt == "pcm16":
        return np.clip(np.round(block * 32768.0), -32768, 32767).astype("<i2").tobytes()
    return np.asarray(block, dtype="<f4").tobytes()


async def stream_audio(url: str, blocks: Iterable[np.ndarray], sample_rate: int, *, token: str | None = None,
                       fmt: str = "float32", realtime: bool = False, config: dict | None = None,
                       on_message: Callable[[dict], None] | None = None, open_timeout: float = 10.0) -> dict:
    """Stream float32 sample ``blocks`` at ``sample_rate`` (one message each) and collect the replies.

    Raises :class:`ServerError` when the connection ends without a final message.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

    first = {"sample_rate": int(sample_rate), "format": fmt, **(config or {})}
    if token is not None:
        first["token"] = token
    result: dict = {"ready": None, "messages": [], "final": None, "close_code": None, "close_reason": "",
                    "timing": {"sent": [], "received": [], "eos": None, "final": None}}
    timing = result["timing"]
    ws = None
    try:
        async with connect(url, max_size=64 << 20, open_timeout=open_timeout, compression=None) as ws:
            await ws.send(json.dumps(first))

            async def send() -> None:
                sent, t0 = 0, time.monotonic()
                try:
                    for block in blocks:
                        if realtime:  # block k leaves when the audio before it has "been spoken"
                            delay = t0 + sent / sample_rate - time.monotonic()
                            if delay > 0:
                                await asyncio.sleep(delay)
                        await ws.send(_encode(block, fmt))
                        sent += len(block)
                        timing["sent"].append([sent / sample_rate, time.monotonic()])
                    if realtime:
                        delay = t0 + sent / sample_rate - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    await ws.send(json.dumps({"eos": True}))
                    timing["eos"] = time.monotonic()
                except ConnectionClosed:
                    pass  # the receiver reports why

            sender = asyncio.create_task(send())
            try:
                async for raw in ws:
                    now = time.monotonic()
                    message = json.loads(raw)
                    if message.get("type") == "ready" and result["ready"] is None:
                        result["ready"] = message
                        continue
                    result["messages"].append(message)
                    timing["received"].append(now)
                    if on_message is not None:
                        on_message(message)
                    if message.get("type") == "final":
                        result["final"] = message
                        timing["final"] = now
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
    except ConnectionClosed:
        pass
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as e:
        raise ServerError(url, None, f"cannot connect ({getattr(e, 'strerror', None) or e})") from None
    result["close_code"], result["close_reason"] = ws.close_code, ws.close_reason or ""
    if result["final"] is None:
        raise ServerError(url, result["close_code"], result["close_reason"])
    return result


async def stream_file_async(url: str, path: str | os.PathLike, *, token: str | None = None, chunk_ms: float = 100.0,
                            realtime: bool = False, config: dict | None = None, format: str = "auto",
                            on_message: Callable[[dict], None] | None = None) -> dict:
    """:func:`stream_file` inside a running event loop (e.g. many streams with ``asyncio.gather``)."""
    import soundfile as sf

    from asr.audio import audio_info, iter_audio_blocks

    path = Path(path)
    rate = audio_info(path).sample_rate  # (raises AudioError naming the file)
    if format == "auto":  # 16-bit sources go as pcm16, losslessly; anything else as float32
        format = "pcm16" if sf.info(str(path)).subtype in ("PCM_16", "PCM_S8", "PCM_U8") else "float32"
    blocks = iter_audio_blocks(path, None, block_seconds=chunk_ms / 1000.0, numpy=True)
    return await stream_audio(url, blocks, rate, token=token, fmt=format, realtime=realtime, config=config,
                              on_message=on_message)


def stream_file(url: str, path: str | os.PathLike, *, token: str | None = None, chunk_ms: float = 100.0,
                realtime: bool = False, config: dict | None = None, format: str = "auto",
                on_message: Callable[[dict], None] | None = None) -> dict:
    """Send ``path`` to the server at ``url`` as one stream and return its replies (see the module
    docstring). ``config`` adds engine options (asr: ``{"partial": False}``; kws: ``{"keywords":
    [...], "threshold": 0.7}``); ``realtime`` paces the chunks like a live source; ``format`` is
    ``pcm16``, ``float32`` or ``auto`` (pcm16 for 16-bit files: no loss). Not inside a running
    event loop: use :func:`stream_file_async` there."""
    return asyncio.run(stream_file_async(url, path, token=token, chunk_ms=chunk_ms, realtime=realtime, config=config,
                                         format=format, on_message=on_message))
