"""Audio I/O through soundfile: read any format libsndfile decodes, mix to mono, resample.

Every failure to read a file (missing, empty, truncated, undecodable, non-finite
samples, wrong sample rate when resampling is not allowed) raises one exception
type, :class:`AudioError`, whose message names the file and the reason.

Nothing here imports torch until a tensor is asked for (:func:`read_audio`, blocks without
``numpy=True``): the ONNX runtime path of ``kws detect`` reads audio without PyTorch.

``torchaudio.load`` is deliberately not used: recent torchaudio routes it through
torchcodec, which is not a dependency of this toolkit.

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "tone.wav")
    >>> write_audio(path, np.zeros(8000, dtype="float32"), 8000)
    >>> wav, sr = read_audio(path, sample_rate=16000)
    >>> wav.shape, sr
    (torch.Size([16000]), 16000)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import soundfile as sf
import soxr

from asr.errors import ToolkitError

if TYPE_CHECKING:
    import torch
from asr.utils import atomic_open

__all__ = [
    "AudioError",
    "AudioInfo",
    "audio_info",
    "read_audio",
    "iter_audio_blocks",
    "resample",
    "write_audio",
]


_TRUNCATED = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


class AudioError(ToolkitError, RuntimeError):
    """A file could not be used as audio. ``path`` and ``reason`` are attributes."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _check_path(path: Path) -> None:
    if not path.exists():
        raise AudioError(path, "file not found")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(path, "file is empty (0 bytes)")


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Sample rate, frame count and channel count from the file header."""
    path = Path(path)
    _check_path(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(path, f"cannot decode audio ({e})") from None
    if info.frames <= 0:
        raise AudioError(path, "contains no audio samples")
    # libsndfile quietly shortens a WAV whose data chunk is cut off; its header
    # dump says "data : <promised> (should be <present>)".
    m = _TRUNCATED.search(info.extra_info or "")
    if m:
        raise AudioError(path, f"truncated: the header promises {m.group(1)} bytes of audio, only {m.group(2)} are present")
    return AudioInfo(int(info.samplerate), int(info.frames), int(info.channels))


def _is_tensor(x) -> bool:
    """A torch tensor, without importing torch to find out."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def resample(wav: np.ndarray | torch.Tensor, orig_sr: int, new_sr: int):
    """Resample along the last axis with soxr (high quality). Returns the input type."""
    if orig_sr == new_sr:
        return wav
    is_tensor = _is_tensor(wav)
    x = wav.detach().cpu().numpy() if is_tensor else np.asarray(wav)
    x = x.astype(np.float32, copy=False)
    if x.ndim == 1:
        y = soxr.resample(x, orig_sr, new_sr)
    else:  # soxr wants (frames, channels)
        flat = x.reshape(-1, x.shape[-1]).T
        y = soxr.resample(np.ascontiguousarray(flat), orig_sr, new_sr).T
        y = y.reshape(*x.shape[:-1], -1)
    y = np.ascontiguousarray(y, dtype=np.float32)
    if is_tensor:
        import torch

        return torch.from_numpy(y)
    return y


def read_audio(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    offset: float = 0.0,
    duration: float | None = None,
    allow_resample: bool = True,
) -> tuple[torch.Tensor, int]:
    """Read ``path`` as a mono float32 tensor ``(N,)`` in [-1, 1].

    Args:
        path: any file libsndfile can decode (wav, flac, ogg, mp3 with libsndfile >= 1.1).
        sample_rate: resample to this rate; ``None`` keeps the file's rate.
        offset, duration: seconds; read only this segment.
        allow_resample: when ``False`` a file whose rate differs from ``sample_rate``
            raises :class:`AudioError` instead of being resampled.

    Returns:
        ``(waveform, sample_rate)``.
    """
    path = Path(path)
    info = audio_info(path)
    if sample_rate is not None and info.sample_rate != sample_rate and not allow_resample:
        raise AudioError(path, f"sample rate is {info.sample_rate} Hz, expected {sample_rate} Hz")
    start = int(round(offset * info.sample_rate))
    if start >= info.frames:
        raise AudioError(path, f"offset {offset:.3f} s is past the end ({info.duration:.3f} s)")
    frames = info.frames - start if duration is None else int(round(duration * info.sample_rate))
    frames = min(frames, info.frames - start)
    try:
        data, sr = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError(path, f"cannot decode audio ({e})") from None
    if data.shape[0] == 0:
        raise AudioError(path, "contains no audio samples")
    if data.shape[0] < frames:
        raise AudioError(path, f"truncated: header promises {frames} frames, only {data.shape[0]} could be read")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    bad = np.flatnonzero(~np.isfinite(mono))
    if bad.size:
        raise AudioError(path, f"contains NaN or infinite samples, the first at {(start + bad[0]) / sr:.3f} s "
                               f"(sample {start + bad[0]})")
    if sample_rate is not None and sr != sample_rate:
        mono = resample(mono, sr, sample_rate)
        sr = sample_rate
    import torch

    return torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32)), int(sr)


def iter_audio_blocks(
    path: str | os.PathLike, sample_rate: int | None = None, block_seconds: float = 10.0, numpy: bool = False
) -> Iterator[torch.Tensor]:
    """Yield a long file as consecutive mono float32 blocks (tensors, or arrays with ``numpy``),
    resampled as a stream.

    Memory stays bounded by the block size whatever the file length; the
    concatenation of the blocks equals a streaming resample of the whole file.
    """
    path = Path(path)
    info = audio_info(path)
    target = sample_rate or info.sample_rate
    stream = None
    if target != info.sample_rate:
        stream = soxr.ResampleStream(info.sample_rate, target, 1, dtype="float32")
    block = max(1, int(block_seconds * info.sample_rate))
    read = 0
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                data = f.read(block, dtype="float32", always_2d=True)
                last = data.shape[0] < block
                mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
                bad = np.flatnonzero(~np.isfinite(mono))
                if bad.size:
                    raise AudioError(path, f"contains NaN or infinite samples, the first at "
                                           f"{(read + bad[0]) / info.sample_rate:.3f} s (sample {read + bad[0]})")
                read += data.shape[0]
                if stream is not None:
                    mono = stream.resample_chunk(np.ascontiguousarray(mono), last=last)
                if mono.size:
                    mono = np.ascontiguousarray(mono, dtype=np.float32)
                    if numpy:
                        yield mono
                    else:
                        import torch

                        yield torch.from_numpy(mono)
                if last:
                    break
    except (sf.LibsndfileError, RuntimeError) as e:
        if isinstance(e, AudioError):
            raise
        raise AudioError(path, f"cannot decode audio ({e})") from None


def write_audio(path: str | os.PathLike, wav: np.ndarray | torch.Tensor, sample_rate: int, subtype: str | None = None) -> None:
    """Write mono ``(N,)`` or ``(N, C)`` audio atomically; the format follows the suffix."""
    path = Path(path)
    if _is_tensor(wav):
        wav = wav.detach().cpu().numpy()
    wav = np.asarray(wav, dtype=np.float32)
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(path, f"cannot write format {path.suffix!r} (use .wav, .flac or .ogg)")
    if subtype is None:
        subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS"}[fmt]
    with atomic_open(path, "wb") as f:
        sf.write(f, np.clip(wav, -1.0, 1.0), sample_rate, format=fmt, subtype=subtype)
