"""Long test recordings built from clips: keywords (or none) in noise and silence, with truth.

:func:`build_stream` writes one long WAV file block by block (never the whole recording in
memory) from manifest clips separated by gaps of background noise, and returns where each
keyword's speech lies in it (the clip's speech found by an energy threshold), for
:func:`kws.evaluate.localization`. With ``minutes`` set, the clips are cycled in a new
random order until the recording is that long (a keyword-free stretch for false alarms
per hour is built from non-keyword clips this way).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch

from asr.audio import read_audio
from asr.errors import UsageError
from asr.utils import atomic_open
from kws.events import loud_span


def speech_extent(wav: torch.Tensor, sample_rate: int, frame: float = 0.02, below_peak_db: float = 25.0,
                  above_floor_db: float = 8.0, max_gap: float = 0.1) -> tuple[float, float]:
    """``(start, end)`` seconds of the word in a clip: the run of frames around the loudest one that are
    within ``below_peak_db`` of it and at least ``above_floor_db`` over the clip's noise floor (its
    10th-percentile frame), bridging quieter gaps of up to ``max_gap`` seconds (the closure before a
    "p" or "t"). The floor matters for phone recordings whose background is only 15-20 dB under the
    word: without it the whole clip counts as speech."""
    n = max(1, int(frame * sample_rate))
    frames = wav[: len(wav) // n * n].reshape(-1, n)
    if frames.numel() == 0:
        return 0.0, len(wav) / sample_rate
    db = (10 * torch.log10(frames.double().pow(2).mean(1) + 1e-12)).numpy()
    first, end = loud_span(db, below_peak_db, above_floor_db, int(round(max_gap / frame)))
    return first * n / sample_rate, end * n / sample_rate


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2) + 1e-20))


def build_stream(items: Sequence[dict], out: str | os.PathLike, keywords: Sequence[str] = (),
                 noises: Sequence[torch.Tensor] = (), minutes: float | None = None, gap: tuple[float, float] = (0.5, 2.0),
                 snr: tuple[float, float] = (10.0, 20.0), sample_rate: int = 16000, seed: int = 0) -> list[dict]:
    """Write the long recording to ``out`` (WAV, atomically) and return the keyword truth.

    Args:
        items: manifest clips (``audio``, optional ``offset``/``duration``, ``label``).
        keywords: labels reported in the truth (``{"keyword", "start", "end", "id"}``).
        noises: background noise waveforms at ``sample_rate`` for the gaps and under the clips;
            none = a quiet white noise at -60 dBFS.
        minutes: cycle through the clips (reshuffled each pass) until this long; ``None`` = each clip once.
        gap: seconds of noise between clips, drawn uniformly.
        snr: speech-to-noise ratio in dB of the noise under and between the clips, drawn per clip.
    """
    if not items:
        raise UsageError("no clips to build a recording from")
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    noise_bank = [n.numpy().astype(np.float32) for n in noises if n.numel() > sample_rate // 10]
    target = None if minutes is None else int(minutes * 60 * sample_rate)
    keywords = set(keywords)
    truth: list[dict] = []
    written = 0

    def noise(n: int, level: float) -> np.ndarray:
        if not noise_bank:
            return (np_rng.standard_normal(n) * 1e-3).astype(np.float32)
        src = noise_bank[rng.randrange(len(noise_bank))]
        reps = int(np.ceil((n + 1) / len(src))) + 1
        start = rng.randrange(len(src))
        seg = np.tile(src, reps)[start:start + n]
        return (seg * (level / _rms(seg))).astype(np.float32)

    out = Path(out)
    with atomic_open(out, "wb") as f, sf.SoundFile(f, "w", samplerate=sample_rate, channels=1, format="WAV", subtype="PCM_16") as w:
        order = list(range(len(items)))
        while True:
            rng.shuffle(order)
            for i in order:
                it = items[i]
                wav, _ = read_audio(it["audio"], sample_rate, it.get("offset", 0.0),
                                    it.get("duration") if "offset" in it else None)
                clip = wav.numpy()
                level = _rms(clip) * 10 ** (-rng.uniform(*snr) / 20) if _rms(clip) > 1e-4 else 1e-3
                g = noise(int(rng.uniform(*gap) * sample_rate), level)
                mixed = clip + noise(len(clip), level)
                peak = max(1.0, float(np.abs(mixed).max()), float(np.abs(g).max()) if len(g) else 0.0)
                w.write(g / peak)
                written += len(g)
                if it.get("label") in keywords:
                    s, e = speech_extent(wav, sample_rate)
                    t0 = written / sample_rate
                    truth.append({"keyword": it["label"], "start": round(t0 + s, 3), "end": round(t0 + e, 3), "id": it["id"]})
                w.write(mixed / peak)
                written += len(clip)
                if target is not None and written >= target:
                    return truth
            if target is None:
                w.write(noise(int(gap[0] * sample_rate), 1e-3))
                return truth
