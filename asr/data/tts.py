"""Synthetic talkers and speech synthesis with espeak-ng and flite.

:func:`list_speakers` gives the seeded set of speakers (voice, variant, pitch, speed, word
gap, warp, split); :func:`synthesize` speaks a text with one of them, and the helpers here
turn that into the finished keyword clips and sentences of :mod:`asr.data.synthetic`.
"""

from __future__ import annotations

import hashlib
import io
import math
import shutil
import subprocess
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import soundfile as sf

from asr.audio import resample
from asr.errors import ToolkitError, UsageError

__all__ = [
    "Speaker",
    "list_speakers",
    "flite_available",
    "synthesize",
    "trim_silence",
    "ESPEAK_VOICES",
    "FLITE_VOICES",
    "SPLITS",
]

ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp",
                 "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
_FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "aunty", "belinda",
                    "linda", "steph", "steph2", "steph3", "anika")
_MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "klatt", "klatt2", "klatt3", "klatt4",
                  "klatt5", "klatt6", "adam", "Alex", "Andy", "antonio", "benjamin", "boris", "caleb", "david",
                  "Denis", "Diogo", "ed", "edward", "edward2", "Gene", "Gene2", "gustave", "Henrique", "Hugo",
                  "iven", "iven2", "iven3", "iven4", "Jacky", "john", "Lee", "marcelo", "Marco", "Mario", "max",
                  "Michael", "michel", "miguel", "Mike", "norbert", "Nguyen", "pablo", "paul", "pedro", "quincy",
                  "rob", "robert", "sandro", "shelby", "travis", "victor", "zac")
_RARE_VARIANTS = ("whisper", "whisperf", "croak", "grandpa", "grandma")  # train only, a few speakers
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
_FLITE_TEST_CANDIDATES = ("awb", "rms", "slt")
SPLITS = ("train", "dev", "test")


# ---------------------------------------------------------------------------
# speakers
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Speaker:
    """One synthetic talker.

    Attributes:
        id: 8 hex digits, the Speech Commands speaker id.
        num: the LibriSpeech speaker number.
        engine: ``"espeak"`` or ``"flite"``.
        voice: espeak-ng voice (accent) or flite voice name.
        variant: espeak-ng variant (voice quality); ``""`` for flite.
        pitch: espeak-ng ``-p`` (0-99); unused by flite (its pitch moves with ``warp``).
        speed: words per minute (espeak-ng ``-s``; flite gets ``duration_stretch = 175 / speed``).
        word_gap: espeak-ng ``-g``, extra pause between words in 10 ms units.
        warp: resampling factor applied to the synthesizer output (> 1: higher and faster).
        split: ``"train"``, ``"dev"`` or ``"test"``.
    """

    id: str
    num: int
    engine: str
    voice: str
    variant: str
    pitch: int
    speed: int
    word_gap: int
    warp: float
    split: str

    @property
    def name(self) -> str:
        """A readable label, e.g. ``espeak:en-gb+f3``."""
        return f"{self.engine}:{self.voice}" + (f"+{self.variant}" if self.variant else "")


def stable_int(*parts: object) -> int:
    """A 63-bit integer hash of ``parts`` that is the same in every process and Python version."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def flite_available() -> bool:
    """Whether the ``flite`` binary is on ``PATH``."""
    return shutil.which("flite") is not None


def split_counts(n: int, min_held_out: int = 2) -> dict[str, int]:
    """About 80/10/10, with at least ``min_held_out`` in dev and test when ``n`` allows it."""
    held = max(min_held_out, round(0.1 * n)) if n >= 3 * min_held_out else max(0, (n - 1) // 3)
    return {"train": n - 2 * held, "dev": held, "test": held}


def _partition_variants(rng: np.random.Generator, variants: Sequence[str]) -> dict[str, list[str]]:
    """Shuffle ``variants`` and give about 10% each to dev and test (at least one), the rest to train."""
    order = [variants[i] for i in rng.permutation(len(variants))]
    k = max(1, round(0.1 * len(variants)))
    return {"dev": order[:k], "test": order[k:2 * k], "train": order[2 * k:]}


def _espeak_speakers(rng: np.random.Generator, n: int) -> list[tuple[str, str, str]]:
    """``(split, voice, variant)`` for ``n`` espeak-ng speakers, about 40% female voices."""
    pools = {g: _partition_variants(rng, v) for g, v in (("f", _FEMALE_VARIANTS), ("m", _MALE_VARIANTS))}
    free: dict[tuple[str, str], list[tuple[str, str]]] = {}

    def draw(gender: str, split: str) -> tuple[str, str]:
        key = (gender, split)
        if not free.get(key):  # refill: every (voice, variant) combination once, in random order
            combos = [(v, var) for v in ESPEAK_VOICES for var in pools[gender][split]]
            free[key] = [combos[i] for i in rng.permutation(len(combos))]
        return free[key].pop()

    out = []
    for split, count in split_counts(n).items():
        for _ in range(count):
            if split == "train" and rng.random() < 0.04:
                out.append((split, str(rng.choice(ESPEAK_VOICES)), str(rng.choice(_RARE_VARIANTS))))
                continue
            out.append((split, *draw("f" if rng.random() < 0.4 else "m", split)))
    return out


def list_speakers(seed: int = 0, n_espeak: int = 240, use_flite: bool | None = None,
                  flite_per_voice: int = 2) -> list[Speaker]:
    """The synthetic speakers for ``seed``, train first, then dev, then test.

    Args:
        seed: fixes voices, variants, pitch, speed, warp and the split.
        n_espeak: number of espeak-ng speakers (at least 2 each go to dev and test when n_espeak >= 6).
        use_flite: add flite speakers; ``None``: when flite is installed.
        flite_per_voice: flite speakers per flite voice.

    Example:
        >>> spk = list_speakers(0, n_espeak=20, use_flite=False)
        >>> [sum(s.split == x for s in spk) for x in ("train", "dev", "test")]
        [16, 2, 2]
    """
    rng = np.random.default_rng(stable_int("speakers", seed))
    specs: list[tuple[str, str, str, str]] = [("espeak", *s) for s in _espeak_speakers(rng, n_espeak)]
    if flite_available() if use_flite is None else use_flite:
        held_out = str(rng.choice(_FLITE_TEST_CANDIDATES))
        for voice in FLITE_VOICES:
            for _ in range(flite_per_voice):
                specs.append(("flite", "test" if voice == held_out else "train", voice, ""))
    speakers, ids = [], set()
    order = {s: i for i, s in enumerate(SPLITS)}
    for k, (engine, split, voice, variant) in enumerate(sorted(specs, key=lambda s: order[s[1]])):
        sid = format(stable_int("speaker-id", seed, k, engine, voice, variant) & 0xFFFFFFFF, "08x")
        while sid in ids:
            sid = format((int(sid, 16) + 1) & 0xFFFFFFFF, "08x")
        ids.add(sid)
        pitch, speed = int(rng.integers(25, 76)), int(rng.integers(145, 196))
        word_gap, warp = int(rng.choice([0, 0, 0, 1, 2])), round(float(rng.uniform(0.94, 1.06)), 4)
        if engine == "flite":  # flite has neither knob; its pitch moves with the warp
            pitch, word_gap = 50, 0
        speakers.append(Speaker(id=sid, num=100 + k, engine=engine, voice=voice, variant=variant,
                                pitch=pitch, speed=speed, word_gap=word_gap, warp=warp, split=split))
    return speakers


# ---------------------------------------------------------------------------
# synthesis
# ---------------------------------------------------------------------------
def _run_tts(cmd: list[str], what: str) -> tuple[np.ndarray, int]:
    """Run a synthesizer that writes a WAV to stdout; return ``(float32 samples, rate)``."""
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or len(proc.stdout) <= 44:
        raise ToolkitError(f"{what} failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace')[:300]}")
    wav, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=False)
    return np.asarray(wav, dtype=np.float32), int(sr)


def synthesize(text: str, speaker: Speaker, rng: np.random.Generator, sample_rate: int = 16000,
               speed_factor: float = 1.0) -> np.ndarray:
    """Speak ``text`` with ``speaker`` plus per-utterance jitter; float32 ``(N,)`` at ``sample_rate``.

    The output is not trimmed or normalized. ``speed_factor`` scales the speaking rate.
    """
    speed = speaker.speed * speed_factor * math.exp(rng.uniform(-0.06, 0.06))
    pitch = int(np.clip(speaker.pitch + rng.integers(-5, 6), 0, 99))
    warp = speaker.warp * (1.0 + rng.uniform(-0.01, 0.01))
    if speaker.engine == "espeak":
        voice = f"{speaker.voice}+{speaker.variant}" if speaker.variant else speaker.voice
        cmd = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(int(round(speed))),
               "-g", str(speaker.word_gap), "--stdout", text]
    elif speaker.engine == "flite":
        cmd = ["flite", "-voice", speaker.voice, "--setf", f"duration_stretch={175.0 / speed:.4f}",
               "-t", text, "-o", "/dev/stdout"]
    else:
        raise UsageError(f"unknown synthesizer engine {speaker.engine!r}")
    wav, sr = _run_tts(cmd, f"{speaker.name} on {text!r}")
    # Reading the samples as if recorded at sr * warp shifts pitch, formants and tempo together.
    return resample(wav, int(round(sr * warp)), sample_rate)


def _active_range(wav: np.ndarray, sample_rate: int, floor_db: float = -40.0) -> tuple[int, int]:
    """First and one-past-last sample of the 10 ms frames within ``floor_db`` of the loudest one."""
    hop = max(1, sample_rate // 100)
    n = len(wav) // hop
    if n == 0:
        return 0, len(wav)
    rms = np.sqrt(np.mean(wav[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))
    active = np.flatnonzero(rms >= rms.max() * 10 ** (floor_db / 20))
    if active.size == 0:
        return 0, len(wav)
    return int(active[0] * hop), int(min(len(wav), (active[-1] + 1) * hop))


def trim_silence(wav: np.ndarray, sample_rate: int, margin: float = 0.05) -> np.ndarray:
    """Cut leading and trailing silence, keeping ``margin`` seconds on each side."""
    start, end = _active_range(wav, sample_rate)
    pad = int(margin * sample_rate)
    return wav[max(0, start - pad): min(len(wav), end + pad)]


def _finish(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Normalize the peak to a random level and add a very low white noise floor."""
    peak = float(np.max(np.abs(wav))) or 1.0
    out = wav * (rng.uniform(0.3, 0.95) / peak)
    floor = 10 ** (rng.uniform(-75.0, -55.0) / 20)
    out = out + floor * rng.standard_normal(len(out))
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def keyword_clip(word: str, speaker: Speaker, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Exactly one second with the spoken ``word`` centred; resynthesized faster if it does not fit."""
    target = int(0.95 * sample_rate)
    speed_factor = 0.85  # isolated words come slower than running speech
    for _ in range(4):
        wav = trim_silence(synthesize(word, speaker, rng, sample_rate, speed_factor), sample_rate, 0.03)
        if len(wav) <= target:
            break
        speed_factor *= 1.05 * len(wav) / target
    if len(wav) > sample_rate:  # still too long: keep the middle second
        cut = (len(wav) - sample_rate) // 2
        wav = wav[cut: cut + sample_rate]
    clip = np.zeros(sample_rate, dtype=np.float32)
    start = (sample_rate - len(wav)) // 2
    clip[start: start + len(wav)] = wav
    return _finish(clip, rng)


def sentence_audio(text: str, speaker: Speaker, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """A spoken sentence with 50-250 ms of lead-in and tail."""
    wav = synthesize(text, speaker, rng, sample_rate)
    start, end = _active_range(wav, sample_rate)
    lead, tail = (int(rng.uniform(0.05, 0.25) * sample_rate) for _ in range(2))
    core = wav[start:end]
    return _finish(np.concatenate([np.zeros(lead, np.float32), core, np.zeros(tail, np.float32)]), rng)
