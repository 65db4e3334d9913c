"""Background-noise recordings: white, pink and brown noise, mains hum, fan noise and babble.

See :func:`make_noise`; babble is made of quiet synthetic talkers from :mod:`asr.data.tts`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from asr.data.sentences import generate_sentences
from asr.data.tts import Speaker, synthesize, trim_silence
from asr.errors import UsageError

__all__ = ["make_noise", "NOISE_KINDS"]

NOISE_KINDS = ("white_noise", "pink_noise", "brown_noise", "hum", "babble", "fan")


def _colored_noise(n: int, exponent: float, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown), above 20 Hz."""
    spec = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    scale = np.maximum(freqs, 20.0) ** (-exponent / 2)
    scale[0] = 0.0
    x = np.fft.irfft(spec * scale, n)
    return x / (np.std(x) + 1e-12)


def _slow_modulation(n: int, rng: np.random.Generator, sample_rate: int, rate: tuple[float, float],
                     depth: float) -> np.ndarray:
    """``1 + depth * sin(...)`` at a random rate (Hz) within ``rate``."""
    t = np.arange(n) / sample_rate
    return 1.0 + depth * np.sin(2 * np.pi * rng.uniform(*rate) * t + rng.uniform(0, 2 * np.pi))


def _hum(n: int, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Mains hum (50 or 60 Hz and harmonics), a faint whine and a little pink noise."""
    t = np.arange(n) / sample_rate
    f0 = float(rng.choice([50.0, 60.0])) * rng.uniform(0.998, 1.002)
    x = sum(rng.uniform(0.5, 1.0) / k ** 1.2 * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
            for k in range(1, 9))
    x = x + 0.05 * np.sin(2 * np.pi * rng.uniform(1000, 4000) * t)
    x = x * _slow_modulation(n, rng, sample_rate, (0.05, 0.3), 0.2)
    return x / np.std(x) + 0.1 * _colored_noise(n, 1.0, rng, sample_rate)


def _fan(n: int, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Low rumbling noise with a blade-rate flutter and a weak blade tone."""
    t = np.arange(n) / sample_rate
    x = 0.7 * _colored_noise(n, 1.6, rng, sample_rate) + 0.3 * _colored_noise(n, 0.8, rng, sample_rate)
    x = x * _slow_modulation(n, rng, sample_rate, (8.0, 25.0), 0.15)
    return x + 0.2 * np.sin(2 * np.pi * rng.uniform(80, 300) * t)


def _babble(n: int, rng: np.random.Generator, sample_rate: int, talkers: Sequence[Speaker]) -> np.ndarray:
    """Four to seven overlapping streams of quiet synthetic sentences."""
    texts = generate_sentences(64, seed=int(rng.integers(1 << 31)))
    out = np.zeros(n, dtype=np.float64)
    for _ in range(int(rng.integers(4, 8))):
        stream = np.zeros(n, dtype=np.float64)
        pos = int(rng.uniform(-1.0, 0.5) * sample_rate)
        while pos < n:
            speaker = talkers[int(rng.integers(len(talkers)))]
            wav = trim_silence(synthesize(str(rng.choice(texts)), speaker, rng, sample_rate), sample_rate, 0.0)
            wav = wav / (np.std(wav) + 1e-9) * rng.uniform(0.5, 1.0)
            lo, hi = max(pos, 0), min(pos + len(wav), n)
            if hi > lo:
                stream[lo:hi] += wav[lo - pos: hi - pos]
            pos += len(wav) + int(rng.uniform(0.1, 0.8) * sample_rate)
        out += stream
    return out


def make_noise(kind: str, seconds: float, rng: np.random.Generator, sample_rate: int = 16000,
               talkers: Sequence[Speaker] = ()) -> np.ndarray:
    """One background-noise recording of ``kind`` (see :data:`NOISE_KINDS`), RMS -28 to -18 dBFS.

    ``talkers`` are the babble voices (required for ``"babble"``).
    """
    n = int(round(seconds * sample_rate))
    if kind == "white_noise":
        x = rng.standard_normal(n)
    elif kind == "pink_noise":
        x = _colored_noise(n, 1.0, rng, sample_rate)
    elif kind == "brown_noise":
        x = _colored_noise(n, 2.0, rng, sample_rate)
    elif kind == "hum":
        x = _hum(n, rng, sample_rate)
    elif kind == "fan":
        x = _fan(n, rng, sample_rate)
    elif kind == "babble":
        if not talkers:
            raise UsageError("babble noise needs talkers")
        x = _babble(n, rng, sample_rate, talkers)
    else:
        raise UsageError(f"unknown noise kind {kind!r}; choose from {NOISE_KINDS}")
    x = x * (10 ** (rng.uniform(-28.0, -18.0) / 20) / (np.sqrt(np.mean(x ** 2)) + 1e-12))
    peak = float(np.max(np.abs(x)))
    if peak > 0.99:
        x = x * (0.99 / peak)
    return x.astype(np.float32)


def noise_names(n_files: int) -> list[str]:
    """``white_noise``, ``pink_noise``, ... cycling with ``_2``, ``_3`` suffixes past six files."""
    return [NOISE_KINDS[i % len(NOISE_KINDS)] + (f"_{i // len(NOISE_KINDS) + 1}" if i >= len(NOISE_KINDS) else "")
            for i in range(n_files)]
