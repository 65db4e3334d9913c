"""The WebSocket server of ``asr serve`` and ``kws serve``: many audio streams, one model, batched.

The wire protocol (config, audio, end-of-stream; partial/final/event messages; close codes)
is described in :mod:`asr.serve.protocol`. This module runs it on :mod:`websockets` (asyncio):

* Each connection is one stream. Its handler reads messages with the idle timeout, checks the
  config and the token, decodes audio into a per-stream buffer and answers in order through a
  per-stream sender task (a partial not yet sent is replaced by a newer one, so a slow reader
  never piles up transcripts).
* One :class:`Scheduler` task feeds the model in *ticks*: it takes the audio buffered for every
  stream (at most ``max_tick_seconds`` each, for fairness), resamples it and calls the engine's
  ``step`` once for all of them in one worker thread, off the event loop; audio arriving during
  a tick waits for the next one. So under load the batches grow by themselves, and an idle
  server answers a single stream at once. The engine batches inside the tick
  (:mod:`asr.serve.engines`).
* Every resource a client controls is bounded: connections, message size, audio per stream,
  audio buffered and not processed yet (past it the server stops reading that connection, so
  TCP pushes back on the client), idle time. A bad message closes only its own connection, with
  the code that says why; a failure inside the model ends only the streams it concerns.

Example (in a thread, as the tests do; ``asr serve`` runs :func:`run_server` in the foreground):
    >>> from asr.serve.engines import AsrEngine  # doctest: +SKIP
    >>> with start_in_thread(AsrEngine.from_checkpoint("best.pt"), port=0) as server:  # doctest: +SKIP
    ...     print(stream_file(server.url, "a.flac")["final"]["text"])
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from asr.errors import UsageError
from asr.serve.engines import Engine, Job, JobResult
from asr.serve.protocol import (INTERNAL_ERROR, NORMAL, POLICY, STREAM_TOO_LONG, TRY_AGAIN_LATER, IDLE_TIMEOUT,
                                ProtocolError, ServerLimits, close_reason, decode_audio, parse_config, parse_control)

log = logging.getLogger("asr.serve")

__all__ = ["StreamServer", "Scheduler", "run_server", "start_in_thread", "RunningServer", "is_loopback"]

_END, _FAILED = object(), object()  # outbox markers: close normally / with 1011


class _Outbox:
    """The messages waiting to be sent to one client, in order; a partial transcript still waiting
    is replaced by a newer one (it holds everything the older one did)."""

    def __init__(self) -> None:
        self._items: deque = deque()
        self._event = asyncio.Event()

    def put(self, item: Any) -> None:
        last = self._items[-1] if self._items else None
        if isinstance(item, dict) and item.get("type") == "partial" and isinstance(last, dict) \
                and last.get("type") == "partial":
            self._items[-1] = item
        else:
            self._items.append(item)
        self._event.set()

    async def get(self) -> Any:
        while not self._items:
            self._event.clear()
            await self._event.wait()
        return self._items.popleft()


class _Stream:
    """The server's side of one stream: audio waiting for the model, flags, the outbox."""

    def __init__(self, engine_stream: Any, sample_rate: int, engine_rate: int, fmt: str, limits: ServerLimits):
        self.engine_stream = engine_stream
        self.rate, self.format = sample_rate, fmt
        self.pending: deque[np.ndarray] = deque()
        self.pending_samples = 0
        self.received = 0  # samples received, at the client's rate
        self.max_samples = int(limits.max_stream_seconds * sample_rate)
        self.max_buffered = max(1, int(limits.max_buffered_seconds * sample_rate))
        self.eos = False  # no more audio will come
        self.final_taken = False  # the job that ends the stream went to the model
        self.closed = False  # the connection is gone: drop results
        self.end: tuple[int, str] = (NORMAL, "end of stream")
        self.space = asyncio.Event()
        self.space.set()
        self.outbox = _Outbox()
        self.resampler = None
        if sample_rate != engine_rate:
            import soxr

            self.resampler = soxr.ResampleStream(sample_rate, engine_rate, 1, dtype="float32")

    def push(self, samples: np.ndarray) -> None:
        if samples.size:
            self.pending.append(samples)
            self.pending_samples += samples.size
            self.received += samples.size
        if self.pending_samples >= self.max_buffered:
            self.space.clear()

    def has_work(self) -> bool:
        return not (self.closed or self.final_taken) and (self.pending_samples > 0 or self.eos)

    def take(self, max_samples: int) -> tuple[np.ndarray, bool] | None:
        """Up to ``max_samples`` of the buffered audio, and whether that ends the stream."""
        if not self.has_work():
            return None
        parts, n = [], 0
        while self.pending and n < max_samples:
            x = self.pending.popleft()
            if n + x.size > max_samples:
                x, rest = x[: max_samples - n], x[max_samples - n:]
                self.pending.appendleft(rest)
            parts.append(x)
            n += x.size
        self.pending_samples -= n
        if self.pending_samples < self.max_buffered:
            self.space.set()
        final = self.eos and not self.pending
        self.final_taken = final
        samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return samples, final


@dataclass
class _Stats:
    started: float = field(default_factory=time.monotonic)
    streams: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0
    ticks: int = 0
    jobs: int = 0
    audio_seconds: float = 0.0
    busy_seconds: float = 0.0  # time the worker spent in ticks


class Scheduler:
    """Feeds the engine in ticks, one worker thread (see the module docstring)."""

    def __init__(self, engine: Engine, limits: ServerLimits, stats: _Stats):
        self.engine, self.limits, self.stats = engine, limits, stats
        self.streams: set[_Stream] = set()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-model")

    def add(self, stream: _Stream) -> None:
        self.streams.add(stream)

    def remove(self, stream: _Stream) -> None:
        stream.closed = True
        self.streams.discard(stream)

    def notify(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = []
            for stream in list(self.streams):
                got = stream.take(max(1, int(self.limits.max_tick_seconds * stream.rate)))
                if got is not None:
                    batch.append((stream, *got))
            if not batch:
                continue
            t0 = time.monotonic()
            results = await loop.run_in_executor(self._executor, self._tick, batch)
            self.stats.busy_seconds += time.monotonic() - t0
            self.stats.ticks += 1
            self.stats.jobs += len(batch)
            for (stream, samples, final), result in zip(batch, results):
                self.stats.audio_seconds += samples.size / stream.rate
                if stream.closed:
                    continue
                for message in result.messages:
                    stream.outbox.put(message)
                if result.error is not None:
                    log.error("stream failed: %s", result.error)
                    stream.end = (INTERNAL_ERROR, close_reason(f"server error on this stream: {result.error}"))
                    stream.final_taken = True
                    stream.space.set()
                    self.stats.failed += 1
                    stream.outbox.put(_FAILED)
                elif final:
                    stream.outbox.put(_END)
            if any(s.has_work() for s in self.streams):
                self._wake.set()

    def _tick(self, batch: list[tuple[_Stream, np.ndarray, bool]]) -> list[JobResult]:
        """Worker thread: resample, then one ``engine.step`` for every stream of the tick."""
        jobs = []
        for stream, samples, final in batch:
            if stream.resampler is not None:
                samples = stream.resampler.resample_chunk(np.ascontiguousarray(samples), last=final)
            jobs.append(Job(stream.engine_stream, np.ascontiguousarray(samples, np.float32), final))
        try:
            results = self.engine.step(jobs)
            if len(results) != len(jobs):
                raise RuntimeError(f"the engine returned {len(results)} results for {len(jobs)} jobs")
            return results
        except Exception as e:  # noqa: BLE001 - a bug in the engine: end this tick's streams, keep serving
            log.exception("the engine failed on a tick of %d streams", len(jobs))
            return [JobResult(error=f"{type(e).__name__}: {e}") for _ in jobs]

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class StreamServer:
    """The connection handler and its shared state (see the module docstring).

    Args:
        engine: what runs on the audio (:class:`asr.serve.engines.Engine`).
        limits: the bounds on what one client may use.
        token: when set, a client's config must carry it (compared in constant time).
    """

    def __init__(self, engine: Engine, limits: ServerLimits | None = None, token: str | None = None):
        self.engine = engine
        self.limits = limits or ServerLimits()
        self.limits.check()
        self.token = token or None
        self.stats = _Stats()
        self.scheduler: Scheduler | None = None
        self.active = 0

    def summary(self) -> dict:
        """What the server did: streams, ticks, streams per tick, the engine's counters."""
        s = self.stats
        return {"streams": s.streams, "completed": s.completed, "failed": s.failed, "rejected": s.rejected,
                "audio_seconds": round(s.audio_seconds, 1), "ticks": s.ticks,
                "streams_per_tick": round(s.jobs / max(s.ticks, 1), 2),
                "model_busy_fraction": round(s.busy_seconds / max(time.monotonic() - s.started, 1e-9), 3),
                **self.engine.stats()}

    async def _recv(self, ws) -> str | bytes:
        try:
            async with asyncio.timeout(self.limits.idle_timeout):
                return await ws.recv()
        except TimeoutError:
            raise ProtocolError(IDLE_TIMEOUT, f"idle timeout: nothing received for {self.limits.idle_timeout:g} s"
                                ) from None

    async def handle(self, ws) -> None:
        """One connection, one stream, from config to close."""
        from websockets.exceptions import ConnectionClosed

        if self.active >= self.limits.max_connections:
            self.stats.rejected += 1
            drain = asyncio.create_task(self._drain(ws))  # (whatever it sends meanwhile is dropped, not queued)
            await ws.close(TRY_AGAIN_LATER, f"server busy: {self.active} streams (max-connections); try again later")
            drain.cancel()
            return
        self.active += 1
        stream: _Stream | None = None
        sender: asyncio.Task | None = None
        drain: asyncio.Task | None = None
        try:
            config = parse_config(await self._recv(ws))
            if self.token is not None and not hmac.compare_digest((config.token or "").encode(), self.token.encode()):
                raise ProtocolError(POLICY, "missing or wrong token")
            engine_stream = self.engine.open(config.options or {})
            stream = _Stream(engine_stream, config.sample_rate, self.engine.sample_rate, config.format, self.limits)
            self.stats.streams += 1
            self.scheduler.add(stream)
            sender = asyncio.create_task(self._send(ws, stream))
            stream.outbox.put({"type": "ready", "engine": self.engine.name, "sample_rate": self.engine.sample_rate})
            await self._receive_audio(ws, stream)
            drain = asyncio.create_task(self._drain(ws))
            await sender  # the final message, then the close
            if stream.end[0] != INTERNAL_ERROR:
                self.stats.completed += 1
        except ProtocolError as e:
            log.info("closing a connection: %s", e)
            drain = asyncio.create_task(self._drain(ws))
            await ws.close(e.code, e.reason)
        except ConnectionClosed:
            log.debug("a client went away mid-stream")
        finally:
            self.active -= 1
            if stream is not None:
                self.scheduler.remove(stream)
            for task in (sender, drain):
                if task is not None and not task.done():
                    task.cancel()

    async def _receive_audio(self, ws, stream: _Stream) -> None:
        """Audio messages until end-of-stream (or the stream's length limit)."""
        while True:
            if not stream.space.is_set():  # the model is behind: stop reading, let TCP push back
                waits = [asyncio.ensure_future(stream.space.wait()), asyncio.ensure_future(ws.wait_closed())]
                _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for w in pending:
                    w.cancel()
            message = await self._recv(ws)
            if stream.final_taken:  # the stream failed meanwhile; the sender closes the connection
                return
            if isinstance(message, str):
                parse_control(message)
                stream.eos = True
                self.scheduler.notify()
                return
            samples = decode_audio(message, stream.format)
            room = stream.max_samples - stream.received
            if samples.size > room:
                stream.push(samples[:room])
                stream.eos = True
                stream.end = (STREAM_TOO_LONG, f"stream too long: more than {self.limits.max_stream_seconds:g} s "
                                               "of audio (max-stream-seconds)")
                self.scheduler.notify()
                return
            stream.push(samples)
            self.scheduler.notify()

    @staticmethod
    async def _drain(ws) -> None:
        """Read and drop what the client still sends once its stream is over: the closing handshake
        needs the connection read (a full receive queue would stall it until the close timeout)."""
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            return

    async def _send(self, ws, stream: _Stream) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                item = await stream.outbox.get()
                if item is _END or item is _FAILED:
                    await ws.close(*stream.end)
                    return
                await ws.send(json.dumps(item))
        except ConnectionClosed:
            return

    async def serve(self, host: str = "127.0.0.1", port: int = 8765, stop: asyncio.Event | None = None,
                    on_listening: Callable[[str], None] | None = None) -> dict:
        """Serve until ``stop`` is set; returns :meth:`summary`."""
        from websockets.asyncio.server import serve

        self.scheduler = Scheduler(self.engine, self.limits, self.stats)
        worker = asyncio.create_task(self.scheduler.run())
        stop = stop or asyncio.Event()
        ws_log = logging.getLogger("asr.serve.websockets")  # the library's per-connection chatter: debug only
        if ws_log.level == logging.NOTSET and not log.isEnabledFor(logging.DEBUG):
            ws_log.setLevel(logging.WARNING)
        try:
            async with serve(self.handle, host, port, max_size=self.limits.max_message_bytes, max_queue=4,
                             compression=None, ping_interval=20, ping_timeout=20, close_timeout=5,
                             logger=ws_log) as server:
                sock = server.sockets[0].getsockname()
                url = f"ws://{'[' + sock[0] + ']' if ':' in sock[0] else sock[0]}:{sock[1]}"
                log.debug("listening on %s", url)
                if on_listening is not None:
                    on_listening(url)
                await stop.wait()
                server.close()  # closes every connection with 1001 (going away)
                await server.wait_closed()
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            await asyncio.get_running_loop().run_in_executor(None, self.scheduler.close)
        return self.summary()


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(engine: Engine, host: str = "127.0.0.1", port: int = 8765, limits: ServerLimits | None = None,
               token: str | None = None, on_listening: Callable[[str], None] | None = None) -> dict:
    """Serve in the foreground until SIGINT or SIGTERM; returns the server's summary."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: a port is 0-65535 (0: any free port)")
    if not is_loopback(host) and not token:
        log.warning("serving on %s without --token: anyone who can reach this address can use the server", host)
    server = StreamServer(engine, limits, token)

    async def main() -> dict:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await server.serve(host, port, stop, on_listening)
        except (OSError, OverflowError) as e:
            raise UsageError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e})") from None

    return asyncio.run(main())


class RunningServer:
    """A server running in a background thread (:func:`start_in_thread`); ``url``, ``stop()``,
    and ``summary`` once stopped. Use it as a context manager."""

    def __init__(self, server: StreamServer, host: str, port: int):
        self.server = server
        self.url = ""
        self.summary: dict = {}
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, args=(host, port), name="serve", daemon=True)
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        if not self.url:
            raise RuntimeError("the server did not start within 60 s")

    def _run(self, host: str, port: int) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()

            def listening(url: str) -> None:
                self.url = url
                self._ready.set()

            self.summary = await self.server.serve(host, port, self._stop, listening)

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - reported to the starting thread
            self._error = e
            self._ready.set()

    def stop(self) -> dict:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        return self.summary

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_in_thread(engine: Engine, host: str = "127.0.0.1", port: int = 0, limits: ServerLimits | None = None,
                    token: str | None = None) -> RunningServer:
    """Start a server in a background thread (port 0: any free port; see ``.url``)."""
    return RunningServer(StreamServer(engine, limits, token), host, port)
