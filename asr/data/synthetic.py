"""A synthetic speech corpus from espeak-ng and flite: keyword clips, sentences, noise.

Builds, deterministically for a seed and in parallel, a small stand-in for the two
real corpora the recipes use, in their real on-disk layouts, so that every recipe
and test can run without downloading anything:

``out_dir/speech_commands/``
    the Speech Commands layout: ``<word>/<speakerid>_nohash_<n>.wav`` (16 kHz mono
    16-bit, exactly 1 s, speech centred), ``_background_noise_/*.wav`` (white, pink
    and brown noise, mains hum, babble of quiet synthetic talkers, fan noise) and
    ``validation_list.txt`` / ``testing_list.txt`` naming the dev and test speakers' clips.
``out_dir/librispeech/``
    the LibriSpeech layout: ``<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac``
    plus ``<speaker>-<chapter>.trans.txt`` for subsets ``train``, ``dev``, ``test``.
``out_dir/manifests/``
    ``kws/`` (12-class protocol), ``kws35/`` (35 words) and ``asr/`` manifests, written
    by :func:`asr.data.speech_commands.prepare_speech_commands` and
    :func:`asr.data.librispeech.prepare_librispeech`.

Speakers (:func:`list_speakers`): an espeak-ng English voice (accent) combined with a
voice variant (voice quality), a fixed pitch, speed, word gap and a small resampling
"vocal-tract" warp; plus flite voices (two speakers per voice, differing in warp and
speed) when flite is installed. Every utterance jitters speed, pitch and warp a little.
Splits are by speaker and fixed by the seed (about 80/10/10): espeak variants are
partitioned between the splits, so dev and test voice qualities never occur in train;
of the flite voices one of ``awb``, ``rms``, ``slt`` (seeded) is held out for test and
the rest (``kal`` and ``kal16`` are one talker) are in train. A few train speakers
use the whispering or creaky variants.

Every clip gets a very low noise floor (-75 to -55 dBFS) so that no file holds digital
silence. Re-running into the same folder with the same settings skips files that are
already complete and valid (writes are atomic), so an interrupted run resumes; with
other settings everything is regenerated; files the plan no longer names are removed.
The result is byte-identical to a fresh run.

Example:
    >>> out = prepare_synthetic("/tmp/synth", n_sentences=24, words=["yes", "no"])  # doctest: +SKIP
    >>> sorted(out["manifests"]["asr"])  # doctest: +SKIP
    ['dev', 'test', 'train']
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf

from asr.audio import AudioError, audio_info, write_audio
from asr.data.noise import NOISE_KINDS, make_noise, noise_names
from asr.data.sentences import generate_sentences, normalize_transcript
from asr.data.tts import (ESPEAK_VOICES, FLITE_VOICES, SPLITS, Speaker, flite_available, keyword_clip,
                          list_speakers, sentence_audio, split_counts, stable_int, synthesize)
from asr.errors import ToolkitError, UsageError
from asr.utils import atomic_open

__all__ = [
    "Speaker",
    "list_speakers",
    "synthesize",
    "make_noise",
    "prepare_synthetic",
    "SynthesisJob",
    "run_jobs",
    "ESPEAK_VOICES",
    "FLITE_VOICES",
    "NOISE_KINDS",
]

_VERSION = 1  # bump when the generated audio changes for the same settings


# ---------------------------------------------------------------------------
# the plan: one job per output file
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthesisJob:
    """One audio file to make. ``kind``: ``clip``, ``utt`` or ``noise``."""

    kind: str
    path: Path
    text: str
    speaker: Speaker | None
    seed: int
    sample_rate: int
    seconds: float = 0.0
    talkers: tuple[Speaker, ...] = ()
    resume: bool = True


@dataclass
class _Plan:
    """Everything a run writes, derived from the settings alone."""

    jobs: list[SynthesisJob] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)
    testing: list[str] = field(default_factory=list)
    transcripts: dict[Path, list[str]] = field(default_factory=dict)


def _job_seed(seed: int, rel: str) -> int:
    return stable_int("job", seed, rel)


def _plan_keywords(plan: _Plan, root: Path, speakers: Sequence[Speaker], words: Sequence[str],
                   repeats: int, seed: int, sr: int) -> None:
    for spk in speakers:
        for word in words:
            for r in range(repeats):
                rel = f"{word}/{spk.id}_nohash_{r}.wav"
                plan.jobs.append(SynthesisJob("clip", root / rel, word, spk, _job_seed(seed, rel), sr))
                if spk.split == "dev":
                    plan.validation.append(rel)
                elif spk.split == "test":
                    plan.testing.append(rel)


def _plan_noise(plan: _Plan, root: Path, n_files: int, seconds: float, speakers: Sequence[Speaker],
                seed: int, sr: int) -> None:
    talkers = tuple(s for s in speakers if s.split == "train") or tuple(speakers)
    for name in noise_names(n_files):
        rel = f"_background_noise_/{name}.wav"
        kind = name.rsplit("_", 1)[0] if name[-1].isdigit() else name
        plan.jobs.append(SynthesisJob("noise", root / rel, kind, None, _job_seed(seed, rel), sr, seconds,
                              talkers if kind == "babble" else ()))


def _plan_sentences(plan: _Plan, root: Path, speakers: Sequence[Speaker], n_sentences: int, seed: int,
                    sr: int, per_chapter: int = 20) -> None:
    sentences = generate_sentences(n_sentences, seed)
    rng = np.random.default_rng(stable_int("sentence-split", seed))
    counts = split_counts(n_sentences, min_held_out=1)
    start = 0
    for split in SPLITS:
        texts, start = sentences[start: start + counts[split]], start + counts[split]
        group = [s for s in speakers if s.split == split]
        if not texts or not group:
            continue
        group = [group[i] for i in rng.permutation(len(group))]
        by_speaker: dict[Speaker, list[str]] = defaultdict(list)
        for i, text in enumerate(texts):
            by_speaker[group[i % len(group)]].append(text)
        for spk, spk_texts in by_speaker.items():
            for c in range(0, len(spk_texts), per_chapter):
                chapter = spk.num * 100 + c // per_chapter
                folder = root / split / str(spk.num) / str(chapter)
                lines = []
                for u, text in enumerate(spk_texts[c: c + per_chapter]):
                    uid = f"{spk.num}-{chapter}-{u:04d}"
                    rel = f"{split}/{spk.num}/{chapter}/{uid}.flac"
                    plan.jobs.append(SynthesisJob("utt", root / rel, text, spk, _job_seed(seed, rel), sr))
                    lines.append(f"{uid} {normalize_transcript(text)}")
                plan.transcripts[folder / f"{spk.num}-{chapter}.trans.txt"] = lines


# ---------------------------------------------------------------------------
# running the jobs
# ---------------------------------------------------------------------------
def _existing_seconds(job: SynthesisJob) -> float | None:
    """The duration of a complete, valid existing output, else ``None``."""
    try:
        info = audio_info(job.path)
    except AudioError:
        return None
    if info.sample_rate != job.sample_rate or info.channels != 1:
        return None
    expected = {"clip": job.sample_rate, "noise": int(round(job.seconds * job.sample_rate))}.get(job.kind)
    if expected is not None and info.frames != expected:
        return None
    try:  # decode it all: a damaged file can have an intact header
        frames = len(sf.read(str(job.path), dtype="int16", always_2d=True)[0])
    except (sf.LibsndfileError, RuntimeError):
        return None
    return info.duration if frames == info.frames else None


def _run_job(job: SynthesisJob) -> tuple[str, float, bool]:
    """Make one file (or keep a valid one); returns ``(kind, seconds of audio, was_skipped)``."""
    if job.resume:
        seconds = _existing_seconds(job)
        if seconds is not None:
            return job.kind, seconds, True
    rng = np.random.default_rng(job.seed)
    if job.kind == "clip":
        wav = keyword_clip(job.text, job.speaker, rng, job.sample_rate)
    elif job.kind == "utt":
        wav = sentence_audio(job.text, job.speaker, rng, job.sample_rate)
    else:
        wav = make_noise(job.text, job.seconds, rng, job.sample_rate, job.talkers)
    write_audio(job.path, wav, job.sample_rate)
    return job.kind, len(wav) / job.sample_rate, False


def run_jobs(jobs: list[SynthesisJob], n_workers: int, progress: bool) -> list[tuple[str, float, bool]]:
    """Run ``jobs`` on ``n_workers`` processes with a progress bar; longest jobs first."""
    from tqdm.auto import tqdm

    rank = {"noise": 0, "utt": 1, "clip": 2}
    jobs = sorted(jobs, key=lambda j: rank[j.kind])
    bar = tqdm(total=len(jobs), desc="synthesizing", unit="file", disable=not progress, smoothing=0.05)
    results = []
    try:
        if n_workers <= 1:
            for job in jobs:
                results.append(_run_job(job))
                bar.update()
        else:
            with multiprocessing.Pool(n_workers) as pool:
                for res in pool.imap_unordered(_run_job, jobs, chunksize=8):
                    results.append(res)
                    bar.update()
    finally:
        bar.close()
    return results


# ---------------------------------------------------------------------------
# bookkeeping: settings stamp, stale files, lists
# ---------------------------------------------------------------------------
def _tool_versions() -> dict[str, str]:
    """Synthesizer versions: other versions would give other audio."""
    out = {}
    for tool, flag in (("espeak-ng", "--version"), ("flite", "--version")):
        if shutil.which(tool):
            proc = subprocess.run([tool, flag], capture_output=True, text=True, check=False)
            out[tool] = (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr) else ""
    return out


def _check_stamp(out_dir: Path, settings: dict) -> bool:
    """Whether an earlier run into ``out_dir`` used the same settings (so its files can be kept)."""
    stamp = out_dir / ".synthetic.json"
    try:
        same = json.loads(stamp.read_text()) == settings
    except (OSError, ValueError):
        same = False
    if not same:
        with atomic_open(stamp, "w") as f:
            json.dump(settings, f, indent=1, sort_keys=True)
    return same


def _remove_stale(roots: Iterable[Path], keep: set[Path]) -> int:
    """Delete audio, transcripts and leftover temporary files under ``roots`` that the plan does not name."""
    removed = 0
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*"), reverse=True):
            stale = path.is_file() and path not in keep and (
                path.suffix in (".wav", ".flac", ".tmp") or path.name.endswith(".trans.txt"))
            if stale:
                path.unlink()
                removed += 1
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    return removed


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def _prepare_manifests(out_dir: Path) -> dict[str, dict[str, Path]]:
    """The KWS (12- and 35-class) and ASR manifests, written by the corpus preparers."""
    from asr.data.librispeech import prepare_librispeech
    from asr.data.speech_commands import prepare_speech_commands

    sc, man = out_dir / "speech_commands", out_dir / "manifests"
    return {
        "kws": prepare_speech_commands(sc, man / "kws", protocol=12),
        "kws35": prepare_speech_commands(sc, man / "kws35", protocol=35),
        "asr": prepare_librispeech(out_dir / "librispeech", man / "asr"),
    }


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------
def prepare_synthetic(
    out_dir: str | os.PathLike,
    n_sentences: int = 3000,
    keyword_repeats: int = 1,
    n_noise_files: int = 6,
    noise_seconds: float = 60.0,
    seed: int = 0,
    jobs: int | None = None,
    sample_rate: int = 16000,
    progress: bool = True,
    words: Sequence[str] | None = None,
    n_speakers: int = 240,
    use_flite: bool | None = None,
    manifests: bool = True,
) -> dict:
    """Generate the synthetic corpus under ``out_dir`` (see the module docstring).

    Args:
        out_dir: output folder; ``speech_commands/``, ``librispeech/`` and ``manifests/`` go under it.
        n_sentences: LibriSpeech-style utterances in total (about 80/10/10 train/dev/test).
        keyword_repeats: clips per speaker and word (``_nohash_0`` ... ``_nohash_<n-1>``).
        n_noise_files, noise_seconds: background-noise recordings and their length.
        seed: everything (speakers, split, text, jitter, noise) follows from it.
        jobs: worker processes; ``None``: ``os.cpu_count()``.
        sample_rate: of every output file.
        progress: show a tqdm progress bar.
        words: keyword vocabulary; ``None``: the 35 Speech Commands words.
        n_speakers: espeak-ng speakers (flite speakers come on top, see :func:`list_speakers`).
        use_flite: add flite speakers; ``None``: when flite is installed.
        manifests: also write ``manifests/{kws,kws35,asr}``.

    Returns:
        ``{"speech_commands": Path, "librispeech": Path, "manifests": {"kws": {split: Path}, "kws35":
        ..., "asr": ...}, "speakers": {split: count}, "counts": {...}, "hours": {"keywords",
        "noise", "sentences"}, "generated": int, "skipped": int, "seconds": float}``.
    """
    t0 = time.monotonic()
    if shutil.which("espeak-ng") is None:
        raise ToolkitError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
    if words is None:
        from asr.data.speech_commands import ALL_WORDS_35
        words = list(ALL_WORDS_35)
    bad = [w for w in words if not w.isalpha() or not w.islower()]
    if bad:
        raise UsageError(f"keywords must be lower-case letters only (they name folders): {bad}")
    out_dir = Path(out_dir)
    sc_dir, ls_dir = out_dir / "speech_commands", out_dir / "librispeech"
    use_flite = flite_available() if use_flite is None else use_flite
    speakers = list_speakers(seed, n_speakers, use_flite)

    settings = {"version": _VERSION, "seed": seed, "n_sentences": n_sentences, "keyword_repeats": keyword_repeats,
                "n_noise_files": n_noise_files, "noise_seconds": noise_seconds, "sample_rate": sample_rate,
                "words": list(words), "n_speakers": n_speakers, "use_flite": use_flite, "tools": _tool_versions()}
    resume = _check_stamp(out_dir, settings)

    plan = _Plan()
    _plan_keywords(plan, sc_dir, speakers, words, keyword_repeats, seed, sample_rate)
    _plan_noise(plan, sc_dir, n_noise_files, noise_seconds, speakers, seed, sample_rate)
    _plan_sentences(plan, ls_dir, speakers, n_sentences, seed, sample_rate)
    if not resume:
        plan.jobs = [replace(j, resume=False) for j in plan.jobs]
    keep = {j.path for j in plan.jobs} | set(plan.transcripts)
    _remove_stale([sc_dir, ls_dir], keep)

    results = run_jobs(plan.jobs, jobs or os.cpu_count() or 1, progress)
    for path, lines in plan.transcripts.items():
        _write_lines(path, lines)
    _write_lines(sc_dir / "validation_list.txt", sorted(plan.validation))
    _write_lines(sc_dir / "testing_list.txt", sorted(plan.testing))

    hours: dict[str, float] = defaultdict(float)
    for kind, seconds, _ in results:
        hours[{"clip": "keywords", "noise": "noise", "utt": "sentences"}[kind]] += seconds / 3600
    return {
        "speech_commands": sc_dir,
        "librispeech": ls_dir,
        "manifests": _prepare_manifests(out_dir) if manifests else {},
        "speakers": {s: sum(spk.split == s for spk in speakers) for s in SPLITS},
        "counts": {"keyword_clips": sum(j.kind == "clip" for j in plan.jobs),
                   "noise_files": sum(j.kind == "noise" for j in plan.jobs),
                   "utterances": sum(j.kind == "utt" for j in plan.jobs)},
        "hours": {k: round(hours[k], 4) for k in ("keywords", "noise", "sentences")},
        "generated": sum(not skipped for *_, skipped in results),
        "skipped": sum(skipped for *_, skipped in results),
        "seconds": round(time.monotonic() - t0, 2),
    }
