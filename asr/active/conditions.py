"""A pool with something to find: a seed set of one condition, a pool and a test set that mix it
with shifted conditions the seed model never heard.

Conditions (each item of the pool and the test set carries its ``"condition"``):

- ``seen``: clean utterances of the seed set's voices (other sentences than the seed set's);
- ``noisy``: the same voices with background noise added at a uniform SNR in ``snr_db``
  (noise recordings from ``noise_dir``, a random segment of a random file);
- ``fast`` / ``slow``: the same voices sped up / slowed down (sox-style ``speed``: pitch moves
  with it) by a uniform factor in ``fast`` / ``slow``;
- ``voices``: clean utterances of voices the seed set never had (the held-out speakers).

The seed set and the test set are fixed by ``data_seed``; the pool is drawn from what is left for
each simulation seed, so every seed gets another pool of the same mixture. The test set has the
pool's mixture, so what is worth labelling shows in the WER. Shifted audio is written once to
``out_dir/audio/<condition>/<id>.flac`` (a function of the utterance id and the condition only,
so it is the same whichever seed draws it; writes are atomic and a finished file is kept).

Example:
    >>> spec = PoolSpec(mixture={"seen": 0.5, "voices": 0.5})  # doctest: +SKIP
    >>> seed_set, test = fixed_sets(spec, "corpus.jsonl", ["heldout.jsonl"], 100, 20)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from asr.audio import read_audio, write_audio
from asr.augment import add_noise, speed_perturb
from asr.data.manifest import read_manifest
from asr.errors import UsageError

CONDITIONS = ("seen", "noisy", "fast", "slow", "voices")
SAMPLE_RATE = 16000


@dataclass
class PoolSpec:
    mixture: dict[str, float] = field(default_factory=lambda: {"seen": 0.4, "noisy": 0.2, "fast": 0.2, "voices": 0.2})  # condition -> share of the pool and of the test set
    snr_db: list[float] = field(default_factory=lambda: [0.0, 10.0])  # noisy: SNR range (dB)
    fast: list[float] = field(default_factory=lambda: [1.3, 1.5])  # fast: speed factor range
    slow: list[float] = field(default_factory=lambda: [0.65, 0.8])  # slow: speed factor range
    noise_dir: str = "data/synthetic/speech_commands/_background_noise_"  # noisy: folder of noise recordings (*.wav)
    data_seed: int = 0  # fixes the seed set and the test set


def check_spec(spec: PoolSpec) -> None:
    unknown = sorted(set(spec.mixture) - set(CONDITIONS))
    if unknown:
        raise UsageError(f"unknown pool condition(s) {unknown} (known: {', '.join(CONDITIONS)})")
    if not spec.mixture or any(v < 0 for v in spec.mixture.values()) or sum(spec.mixture.values()) <= 0:
        raise UsageError(f"pool mixture needs positive shares, got {spec.mixture}")
    for name in ("snr_db", "fast", "slow"):
        lo_hi = getattr(spec, name)
        if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
            raise UsageError(f"{name} must be [low, high], got {lo_hi}")
    if spec.fast[0] <= 1.0 or not 0 < spec.slow[1] < 1.0:
        raise UsageError(f"fast factors must be > 1 and slow ones in (0, 1), got {spec.fast} and {spec.slow}")


def counts(mixture: dict[str, float], total: int) -> dict[str, int]:
    """``total`` split by the shares (largest remainders), in the mixture's order.

    >>> counts({"seen": 0.4, "noisy": 0.2, "fast": 0.2, "voices": 0.2}, 10)
    {'seen': 4, 'noisy': 2, 'fast': 2, 'voices': 2}
    >>> counts({"seen": 1, "voices": 1}, 3)
    {'seen': 2, 'voices': 1}
    """
    norm = sum(mixture.values())
    raw = {c: total * w / norm for c, w in mixture.items()}
    out = {c: math.floor(v) for c, v in raw.items()}
    for c in sorted(raw, key=lambda c: (out[c] - raw[c], list(raw).index(c)))[: total - sum(out.values())]:
        out[c] += 1
    return out


def _uniform(key: str, lo: float, hi: float) -> float:
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64
    return lo + (hi - lo) * u


class Shifter:
    """Makes (and caches) the audio of an utterance under a condition."""

    def __init__(self, spec: PoolSpec, out_dir: str | Path):
        self.spec, self.out = spec, Path(out_dir) / "audio"
        self._noises: list[tuple[str, torch.Tensor]] | None = None

    def noises(self) -> list[tuple[str, torch.Tensor]]:
        if self._noises is None:
            files = sorted(Path(self.spec.noise_dir).glob("*.wav"))
            if not files:
                raise UsageError(f"{self.spec.noise_dir}: no noise recordings (*.wav) for the noisy condition")
            self._noises = [(f.name, read_audio(f, SAMPLE_RATE)[0]) for f in files]
        return self._noises

    def item(self, item: dict, condition: str) -> dict:
        """``item`` under ``condition`` (a new id and audio file for noisy/fast/slow)."""
        if condition in ("seen", "voices"):
            return dict(item, condition=condition)
        uid = f"{item['id']}-{condition}"
        path = self.out / condition / f"{uid}.flac"
        key = f"{item['id']}\t{condition}"
        if condition == "noisy":
            noises = self.noises()
            name, noise = noises[int(_uniform(key + "\tfile", 0, len(noises) - 1e-9))]
            snr = _uniform(key + "\tsnr", *self.spec.snr_db)
            extra = {"snr_db": round(snr, 2), "noise": name}
        else:
            factor = _uniform(key + "\tspeed", *getattr(self.spec, condition))
            extra = {"speed": round(factor, 3)}
        if not path.is_file():
            wav, _ = read_audio(item["audio"], SAMPLE_RATE)
            if condition == "noisy":
                g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big"))
                wav = add_noise(wav, noise, snr, generator=g)
                peak = float(wav.abs().max())
                if peak > 0.99:  # keep it in range without clipping
                    wav = wav * (0.99 / peak)
            else:
                wav = speed_perturb(wav, SAMPLE_RATE, extra["speed"])
            path.parent.mkdir(parents=True, exist_ok=True)
            write_audio(path, wav, SAMPLE_RATE)
        frames = int(np.ceil(float(item["duration"]) * SAMPLE_RATE / extra.get("speed", 1.0)))
        return dict(item, id=uid, audio=str(path.resolve()), duration=round(frames / SAMPLE_RATE, 6),
                    condition=condition, **extra)


def _sources(spec: PoolSpec, corpus: str, heldout: Sequence[str]) -> tuple[list[dict], list[dict]]:
    seen = read_manifest(corpus, needs_text=True)
    voices = [it for path in heldout for it in read_manifest(path, needs_text=True)]
    if spec.mixture.get("voices", 0) > 0 and not voices:
        raise UsageError("the voices condition needs held-out voices (heldout manifests)")
    rng = random.Random(spec.data_seed)
    rng.shuffle(seen)
    rng.shuffle(voices)
    return seen, voices


def split(spec: PoolSpec, corpus: str, heldout: Sequence[str], seed_items: int, test_items: int, pool_items: int,
          seed: int, out_dir: str | Path) -> tuple[list[dict], list[dict], list[dict]]:
    """``(seed set, test set, pool)``: the first two fixed by ``spec.data_seed``, the pool by ``seed``.

    The seed set is clean utterances of the corpus' voices; the test set and the pool follow
    ``spec.mixture`` (utterances of the held-out voices for ``voices``, of the corpus' voices
    otherwise); no sentence recording is in two of them.
    """
    check_spec(spec)
    seen, voices = _sources(spec, corpus, heldout)
    shifter = Shifter(spec, out_dir)
    n_test, n_pool = counts(spec.mixture, test_items), counts(spec.mixture, pool_items)
    own = [c for c in spec.mixture if c != "voices"]
    need_seen = seed_items + sum(n_test[c] + n_pool[c] for c in own)
    need_voices = n_test.get("voices", 0) + n_pool.get("voices", 0)
    if need_seen > len(seen) or need_voices > len(voices):
        raise UsageError(f"{corpus}: {len(seen)} utterances of the seed voices and {len(voices)} of held-out voices; "
                         f"the sizes need {need_seen} and {need_voices}")
    seed_set = [dict(it, condition="seen") for it in seen[:seed_items]]
    rest, test = seen[seed_items:], []
    for c in own:
        test += [shifter.item(it, c) for it in rest[: n_test[c]]]
        rest = rest[n_test[c]:]
    test += [shifter.item(it, "voices") for it in voices[: n_test.get("voices", 0)]]
    voices_rest = voices[n_test.get("voices", 0):]
    rng = random.Random(1000003 * seed + 17)
    rng.shuffle(rest)
    rng.shuffle(voices_rest)
    pool = []
    for c in own:
        pool += [shifter.item(it, c) for it in rest[: n_pool[c]]]
        rest = rest[n_pool[c]:]
    pool += [shifter.item(it, "voices") for it in voices_rest[: n_pool.get("voices", 0)]]
    rng.shuffle(pool)
    return seed_set, test, pool
