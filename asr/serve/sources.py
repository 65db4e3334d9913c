"""Audio sources: a live microphone, or a file played as if it were one.

A source yields mono float32 numpy blocks at its ``sample_rate`` until it ends (a file) or is
closed (a microphone: :meth:`AudioSource.close`, or Ctrl-C in the caller). The commands that
listen (``asr listen``, ``kws listen``) take any source, so the tests feed them a file, at
real-time pace or as fast as it can be read, and check that what they print equals what the
offline commands print for the same audio.

Example:
    >>> import numpy as np, soundfile as sf, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "tone.wav")
    >>> sf.write(path, np.zeros(8000, np.float32), 8000)
    >>> src = FileSource(path, sample_rate=16000, block_ms=100, speed=0)
    >>> sum(block.size for block in src)  # one second of audio, resampled to 16 kHz
    16000
"""

from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from asr.errors import ToolkitError, UsageError

__all__ = ["AudioSource", "FileSource", "MicrophoneSource", "AudioDeviceError", "open_source", "list_devices"]


class AudioDeviceError(ToolkitError, RuntimeError):
    """No usable audio input: PortAudio missing, no such device, or the device refused the settings."""


class AudioSource:
    """Mono float32 blocks ``(n,)`` at :attr:`sample_rate`; iterate to read, :meth:`close` to stop early."""

    sample_rate: int
    name: str = "audio"

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop: the iteration ends after the block in hand."""

    def __enter__(self) -> "AudioSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FileSource(AudioSource):
    """A file read in ``block_ms`` blocks, resampled to ``sample_rate`` as a stream.

    ``speed`` paces the blocks: 1.0 delivers them in real time (as a microphone would), 2.0
    twice as fast, 0 as fast as they can be read. Any format libsndfile reads.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int = 16000, block_ms: float = 100.0, speed: float = 1.0):
        if block_ms <= 0:
            raise UsageError(f"block_ms must be positive, got {block_ms}")
        if speed < 0:
            raise UsageError(f"speed must be >= 0 (0: as fast as possible), got {speed}")
        self.path = Path(path)
        self.name = str(path)
        self.sample_rate = int(sample_rate)
        self.block_ms = float(block_ms)
        self.speed = float(speed)
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[np.ndarray]:
        from asr.audio import iter_audio_blocks

        start, delivered = time.monotonic(), 0
        for block in iter_audio_blocks(self.path, self.sample_rate, self.block_ms / 1000.0, numpy=True):
            if self._closed.is_set():
                return
            delivered += block.size
            if self.speed > 0:  # a block is available once its last sample has been "spoken"
                due = start + delivered / self.sample_rate / self.speed
                if self._closed.wait(max(0.0, due - time.monotonic())):
                    return
            yield block

    def close(self) -> None:
        self._closed.set()


class MicrophoneSource(AudioSource):
    """The default (or ``device``) input device through sounddevice / PortAudio.

    PortAudio's callback thread puts each block on a bounded queue; iteration takes them off.
    If the reader falls more than ``max_queue`` blocks behind, the oldest are dropped and
    counted in :attr:`dropped` (live audio cannot wait).
    """

    def __init__(self, device: int | str | None = None, sample_rate: int = 16000, block_ms: float = 100.0,
                 max_queue: int = 100):
        if block_ms <= 0:
            raise UsageError(f"block_ms must be positive, got {block_ms}")
        self.device = device
        self.sample_rate = int(sample_rate)
        self.block = max(1, int(round(block_ms * sample_rate / 1000)))
        self.name = f"microphone {device if device is not None else '(default input)'}"
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._closed = threading.Event()

    def _open(self):
        try:
            import sounddevice as sd
        except OSError as e:  # the Python package is there but not the PortAudio library
            raise AudioDeviceError(f"no audio input: the PortAudio library is missing ({e}); on Debian/Ubuntu "
                                   "`apt-get install libportaudio2` (`make system-deps` does it)") from None
        except ImportError:
            raise AudioDeviceError("no audio input: the sounddevice package is missing (pip install sounddevice)") from None

        def callback(indata, frames, time_info, status) -> None:
            block = np.ascontiguousarray(indata[:, 0], dtype=np.float32).copy()
            while True:
                try:
                    self._queue.put_nowait(block)
                    return
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass

        try:
            stream = sd.InputStream(device=self.device, channels=1, samplerate=self.sample_rate, dtype="float32",
                                    blocksize=self.block, callback=callback)
            stream.start()
        except Exception as e:  # PortAudioError, ValueError for an unknown device, ...
            devices = ""
            try:
                devices = "; input devices: " + (", ".join(
                    f"{i}: {d['name']}" for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0)
                    or "none")
            except Exception:
                pass
            raise AudioDeviceError(f"{self.name}: cannot record at {self.sample_rate} Hz mono ({e}){devices}") from None
        return stream

    def __iter__(self) -> Iterator[np.ndarray]:
        stream, stopped = self._open(), False
        try:
            while True:
                if self._closed.is_set():  # stop recording, then hand out what was recorded
                    stream.stop()
                    stopped = True
                    while not self._queue.empty():
                        yield self._queue.get_nowait()
                    return
                try:
                    yield self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
        finally:
            if not stopped:
                stream.stop()
            stream.close()

    def close(self) -> None:
        self._closed.set()


def list_devices() -> str:
    """The audio devices PortAudio sees, one per line (``>`` marks the default input)."""
    try:
        import sounddevice as sd
    except (OSError, ImportError) as e:
        raise AudioDeviceError(f"no audio devices: {e}") from None
    devices = sd.query_devices()
    if len(devices) == 0:
        return "no audio devices found"
    return str(devices)


def open_source(input_path: str | os.PathLike | None, device: int | str | None, sample_rate: int,
                block_ms: float = 100.0, speed: float = 1.0) -> AudioSource:
    """The source the ``listen`` commands' flags name: ``--input FILE`` (played at ``speed``), else
    the microphone ``device`` (default input when ``None``)."""
    if input_path is not None:
        from asr.errors import MissingFileError

        if not Path(input_path).is_file():
            raise MissingFileError(f"{input_path}: audio file not found")
        return FileSource(input_path, sample_rate, block_ms, speed)
    if isinstance(device, str) and device.isdigit():
        device = int(device)
    return MicrophoneSource(device, sample_rate, block_ms)
