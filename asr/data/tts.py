"""Synthetic talkers and speech synthesis with espeak-ng and flite.

:func:`list_speakers` gives the seeded set of speakers (voice, variant, pitch, speed, word
gap, warp, split); :func:`synthesize` speaks a text with one of them, and the helpers here
turn that into the finished keyword clips and sentences of :mod:`asr.data.synthetic`.
:func:`synthesize_words` speaks a text through libespeak-ng itself and also returns where each
word starts (the synthesizer's word events): ground truth for word timestamps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import math
import re
import shutil
import subprocess
import threading
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
    "synthesize_words",
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


class _EspeakEvent(ctypes.Structure):
    """``espeak_EVENT`` of speak_lib.h (the leading fields this module reads; the union is a pointer)."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


class _EspeakVoice(ctypes.Structure):
    """``espeak_VOICE`` of speak_lib.h."""

    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_EVENT_LIST_TERMINATED, _EVENT_WORD = 0, 1
_ESPEAK_RATE, _ESPEAK_PITCH, _ESPEAK_WORDGAP = 1, 3, 7
_SYNCHRONOUS, _CHARS_UTF8 = 2, 1
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_EspeakEvent))


class _Espeak:
    """libespeak-ng through ctypes, initialised once per process (synchronous mode: the callback
    receives the samples and events while ``espeak_Synth`` runs). One synthesis at a time."""

    _instance: "_Espeak | None" = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(name)
        except OSError as e:
            raise ToolkitError(f"libespeak-ng not found ({e}): install espeak-ng (e.g. apt-get install "
                               "espeak-ng libespeak-ng1)") from None
        self.sample_rate = int(self.lib.espeak_Initialize(_SYNCHRONOUS, 0, None, 0))
        if self.sample_rate <= 0:
            raise ToolkitError(f"libespeak-ng ({name}) failed to initialise (espeak-ng-data missing?)")
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple[int, int]] = []  # (text position, 1-based; sample)
        self.callback = _SynthCallback(self._receive)  # kept alive as long as the library may call it
        self.lib.espeak_SetSynthCallback(self.callback)
        self.lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_EspeakVoice)

    @classmethod
    def get(cls) -> "_Espeak":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _receive(self, wav, n: int, events) -> int:
        if n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_WORD:
                self.events.append((int(events[i].text_position), int(events[i].sample)))
            i += 1
        return 0

    def set_voice(self, voice: str, variant: str) -> None:
        """Select ``voice`` (a voice name or, as the espeak-ng command does, a language) + ``variant``."""
        lib, suffix = self.lib, f"+{variant}".encode() if variant else b""
        if lib.espeak_SetVoiceByName(voice.encode() + suffix) == 0:
            return
        select = _EspeakVoice(languages=voice.encode())
        if lib.espeak_SetVoiceByProperties(ctypes.byref(select)) != 0:
            raise UsageError(f"espeak-ng has no voice {voice!r}")
        identifier = lib.espeak_GetCurrentVoice().contents.identifier
        if suffix and (not identifier or lib.espeak_SetVoiceByName(identifier + suffix) != 0):
            raise UsageError(f"espeak-ng has no variant {variant!r} of voice {voice!r}")

    def speak(self, text: str, voice: str, variant: str, rate: int, pitch: int,
              word_gap: int) -> tuple[np.ndarray, list]:
        lib = self.lib
        self.set_voice(voice, variant)
        for param, value in ((_ESPEAK_RATE, rate), (_ESPEAK_PITCH, pitch), (_ESPEAK_WORDGAP, word_gap)):
            lib.espeak_SetParameter(param, int(value), 0)
        self.chunks, self.events = [], []
        data = text.encode("utf-8")
        status = lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if status != 0:
            raise ToolkitError(f"espeak-ng could not speak {text!r} (status {status})")
        wav = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        return wav.astype(np.float32) / 32768.0, list(self.events)


def synthesize_words(text: str, voice: str = "en-us", variant: str = "m3", rate: int = 160, pitch: int = 50,
                     word_gap: int = 0, sample_rate: int = 16000) -> tuple[np.ndarray, int, list[tuple[str, float]]]:
    """Speak ``text`` with libespeak-ng and say where each word starts.

    Args:
        text: plain text (words separated by spaces; punctuation is spoken as pauses).
        voice, variant: espeak-ng voice (``en-us``, ``en-gb``, ...) and variant (``m3``, ``f2``, ...;
            ``""`` for none).
        rate: words per minute; ``pitch``: 0-99; ``word_gap``: extra pause between words (10 ms units).
        sample_rate: rate of the returned samples.

    Returns:
        ``(samples float32 (N,), sample_rate, [(word, start seconds), ...])``: one entry per
        whitespace-separated word of ``text`` that the synthesizer reported (its WORD event:
        where the word's first phoneme begins), in order; a word is as written in ``text``.

    Raises:
        ToolkitError: libespeak-ng is not installed; UsageError: unknown voice.

    Example:
        >>> wav, sr, words = synthesize_words("the cat sat", rate=170)
        >>> sr, [w for w, _ in words], words[0][1] < words[1][1] < words[2][1] < len(wav) / sr
        (16000, ['the', 'cat', 'sat'], True)
    """
    with _Espeak._lock:
        engine = _Espeak.get()
        wav, events = engine.speak(text, voice, variant, rate, pitch, word_gap)
    spans = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", text)]
    starts = [a for a, _, _ in spans]
    words: list[tuple[str, float]] = []
    seen = -1
    for position, sample in events:
        k = int(np.searchsorted(starts, position - 1, side="right")) - 1  # the word holding that character
        if k < 0 or k <= seen or position - 1 >= spans[k][1]:
            continue
        seen = k
        words.append((spans[k][2], sample / engine.sample_rate))
    return resample(wav, engine.sample_rate, sample_rate), sample_rate, words


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
