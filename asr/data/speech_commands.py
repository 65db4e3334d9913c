"""Prepare the Speech Commands corpus (Warden 2018) as train/valid/test manifests.

The released layout is ``<root>/<word>/<speaker>_nohash_<n>.wav`` plus
``validation_list.txt`` / ``testing_list.txt`` (paths relative to ``root``) and a
``_background_noise_/`` folder of long noise recordings. The canonical test set
instead ships a ``_silence_/`` folder of ready-made 1-second noise clips.

Two labelling protocols:

* ``protocol=12``: the ten keywords of :data:`KEYWORDS_10`, every other word as
  :data:`UNKNOWN`, plus a :data:`SILENCE` class.
* ``protocol=35``: every word is its own class; no unknown or silence class.

Each manifest item is ``{"id", "audio", "duration", "label", "text", "speaker"}``;
``text`` is the spoken word (empty for silence). Silence cut from the long
background-noise files is referenced by ``"offset"`` + ``"duration"``; no audio is
written.

Example:
    >>> which_set("yes/0a7c2a8d_nohash_0.wav") in ("train", "valid", "test")
    True
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from asr.audio import audio_info
from asr.constants import SILENCE, UNKNOWN
from asr.data.manifest import write_manifest
from asr.errors import MissingFileError, UsageError

log = logging.getLogger(__name__)

__all__ = [
    "KEYWORDS_10",
    "ALL_WORDS_35",
    "UNKNOWN",
    "SILENCE",
    "SPLITS",
    "which_set",
    "speaker_of",
    "prepare_speech_commands",
]

KEYWORDS_10: tuple[str, ...] = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ALL_WORDS_35: tuple[str, ...] = KEYWORDS_10 + (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "backward", "forward", "follow", "learn", "visual",
)  # fmt: skip
SPLITS: tuple[str, ...] = ("train", "valid", "test")

BACKGROUND_DIR = "_background_noise_"
SILENCE_DIR = SILENCE
VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"

# Percentages of the dataset's own hashing rule (also used to split noise files).
VALIDATION_PERCENTAGE = 10.0
TESTING_PERCENTAGE = 10.0
_MAX_NUM_WAVS_PER_CLASS = 2**27 - 1
_NOHASH = re.compile(r"_nohash_.*$")


def speaker_of(filename: str | os.PathLike) -> str:
    """The speaker id of a clip: its base name up to ``_nohash_`` (the whole name without it)."""
    return _NOHASH.sub("", os.path.basename(os.fspath(filename)))


def which_set(
    filename: str | os.PathLike, validation_percentage: float = 10.0, testing_percentage: float = 10.0
) -> str:
    """Assign a clip to ``"train"``, ``"valid"`` or ``"test"`` by hashing its speaker.

    This is the dataset's own rule, so every clip of one speaker lands in the same
    split and the assignment never changes when files are added: the base name
    with ``_nohash_...`` removed is hashed with SHA-1, taken modulo ``2**27``, and
    scaled to a percentage in ``[0, 100]``.
    """
    hash_name = speaker_of(filename)
    digest = hashlib.sha1(hash_name.encode("utf-8")).hexdigest()
    percentage = (int(digest, 16) % (_MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / _MAX_NUM_WAVS_PER_CLASS)
    if percentage < validation_percentage:
        return "valid"
    if percentage < validation_percentage + testing_percentage:
        return "test"
    return "train"


def label_of(word: str, protocol: int) -> str:
    """The class of a spoken ``word`` under a protocol (12 or 35)."""
    if protocol == 35:
        return word
    return word if word in KEYWORDS_10 else UNKNOWN


@dataclass(frozen=True)
class _Clip:
    """One audio file of the corpus: ``rel`` is its path relative to the root, with ``/``."""

    rel: str
    word: str  # the folder name; SILENCE for ready-made silence clips


def _check_args(protocol: int, silence_fraction: float, unknown_fraction: float | None, clip_seconds: float) -> None:
    if protocol not in (12, 35):
        raise UsageError(f"protocol must be 12 or 35, got {protocol!r}")
    if not silence_fraction >= 0:
        raise UsageError(f"silence_fraction must be >= 0, got {silence_fraction!r}")
    if unknown_fraction is not None and not unknown_fraction >= 0:
        raise UsageError(f"unknown_fraction must be None or >= 0, got {unknown_fraction!r}")
    if not clip_seconds > 0:
        raise UsageError(f"clip_seconds must be > 0, got {clip_seconds!r}")


def _scan_words(root: Path) -> list[_Clip]:
    """All ``<word>/*.wav`` clips, skipping folders that start with ``_`` or ``.``."""
    clips = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name.startswith(("_", ".")):
            continue
        clips += [_Clip(f"{folder.name}/{f.name}", folder.name) for f in sorted(folder.glob("*.wav"))]
    return clips


def _read_list(path: Path) -> set[str]:
    """Entries of a split list file, normalized to ``word/file.wav``."""
    with open(path, encoding="utf-8") as f:
        return {Path(line.strip()).as_posix() for line in f if line.strip()}


def _split_lists(root: Path) -> tuple[set[str], set[str]] | None:
    """The (validation, testing) lists, or ``None`` when neither file exists."""
    vpath, tpath = root / VALIDATION_LIST, root / TESTING_LIST
    if not vpath.is_file() and not tpath.is_file():
        return None
    for p in (vpath, tpath):
        if not p.is_file():
            log.warning("%s not found; treating it as empty (no clips go to that split)", p)
    valid = _read_list(vpath) if vpath.is_file() else set()
    test = _read_list(tpath) if tpath.is_file() else set()
    both = valid & test
    if both:
        raise UsageError(f"{tpath}: {len(both)} clip(s) also appear in {vpath}, e.g. {sorted(both)[0]}")
    return valid, test


def _assign_split(clip: _Clip, lists: tuple[set[str], set[str]] | None) -> str:
    """Split of a clip: the list files when present, otherwise :func:`which_set`.

    Ready-made silence clips not named in a list are always hashed.
    """
    if lists is not None:
        valid, test = lists
        if clip.rel in valid:
            return "valid"
        if clip.rel in test:
            return "test"
        if clip.word != SILENCE:
            return "train"
    return which_set(clip.rel, VALIDATION_PERCENTAGE, TESTING_PERCENTAGE)


def _warn_unlisted(root: Path, clips: list[_Clip], lists: tuple[set[str], set[str]] | None) -> None:
    """Warn (with a count) about list entries that name no audio file."""
    if lists is None:
        return
    present = {c.rel for c in clips}
    missing = sorted((lists[0] | lists[1]) - present)
    if missing:
        log.warning("%s: %d list entr(y/ies) name no audio file, e.g. %s; skipped", root, len(missing), missing[0])


def _clip_item(root: Path, clip: _Clip, protocol: int) -> dict:
    """Manifest item of one clip file (duration from the header)."""
    path = root / clip.rel
    silence = clip.word == SILENCE
    return {
        "id": clip.rel.rsplit(".", 1)[0],
        "audio": str(path),
        "duration": audio_info(path).duration,
        "label": SILENCE if silence else label_of(clip.word, protocol),
        "text": "" if silence else clip.word,
        "speaker": speaker_of(clip.rel),
    }


def _cap_unknowns(items: list[dict], fraction: float | None, rng: random.Random) -> list[dict]:
    """Keep at most ``round(fraction * #keyword clips)`` unknown clips, chosen by ``rng``."""
    if fraction is None:
        return items
    unknown = [it for it in items if it["label"] == UNKNOWN]
    known = [it for it in items if it["label"] != UNKNOWN]
    keep = min(len(unknown), round(fraction * sum(it["label"] != SILENCE for it in known)))
    return known + rng.sample(unknown, keep)


# ---------------------------------------------------------------------------
# Silence windows cut from the long background-noise recordings.


@dataclass(frozen=True)
class _Segment:
    """A stretch ``[start, end)`` (in frames) of one noise file reserved for one split."""

    path: Path
    rel: str
    sample_rate: int
    start: int
    end: int


def _noise_segments(root: Path) -> dict[str, list[_Segment]]:
    """Split the background-noise files across train/valid/test deterministically.

    With three or more files, whole files are assigned (ordered by a hash of their
    name; at least one file each to valid and test). With fewer, each file is cut
    by position: the first 10 % valid, the next 10 % test, the rest train.
    """
    files = sorted((root / BACKGROUND_DIR).glob("*.wav"))
    infos = {f: audio_info(f) for f in files}
    out: dict[str, list[_Segment]] = {s: [] for s in SPLITS}

    def seg(f: Path, start: int, end: int) -> _Segment:
        return _Segment(f, f"{BACKGROUND_DIR}/{f.name}", infos[f].sample_rate, start, end)

    if len(files) >= 3:
        ordered = sorted(files, key=lambda f: hashlib.sha1(f.name.encode("utf-8")).hexdigest())
        n_valid = max(1, round(len(files) * VALIDATION_PERCENTAGE / 100))
        n_test = max(1, round(len(files) * TESTING_PERCENTAGE / 100))
        for i, f in enumerate(ordered):
            split = "valid" if i < n_valid else "test" if i < n_valid + n_test else "train"
            out[split].append(seg(f, 0, infos[f].frames))
        return out
    for f in files:
        n = infos[f].frames
        a = int(n * VALIDATION_PERCENTAGE / 100)
        b = int(n * (VALIDATION_PERCENTAGE + TESTING_PERCENTAGE) / 100)
        out["valid"].append(seg(f, 0, a))
        out["test"].append(seg(f, a, b))
        out["train"].append(seg(f, b, n))
    return out


def _windows(segments: list[_Segment], clip_seconds: float, hop_seconds: float) -> list[tuple[_Segment, int]]:
    """Every ``(segment, start_frame)`` of a window that lies wholly inside its segment."""
    out = []
    for s in segments:
        length = int(round(clip_seconds * s.sample_rate))
        hop = max(1, int(hop_seconds * s.sample_rate))
        out += [(s, start) for start in range(s.start, s.end - length + 1, hop)]
    return out


def _silence_windows(segments: list[_Segment], clip_seconds: float, count: int, rng: random.Random) -> list[dict]:
    """``count`` distinct silence items from ``segments``, chosen by ``rng``.

    Windows tile the noise without overlap when there are enough of them;
    otherwise the hop shrinks (windows overlap) until ``count`` distinct ones exist.
    """
    if count <= 0 or not segments:
        return []
    hop = clip_seconds
    windows = _windows(segments, clip_seconds, hop)
    while len(windows) < count and hop * min(s.sample_rate for s in segments) > 1:
        hop = hop * max(len(windows), 1) / count * 0.99
        windows = _windows(segments, clip_seconds, hop)
    if len(windows) < count:
        log.warning("only %d distinct %.2f s silence windows fit in the background noise; %d were wanted",
                    len(windows), clip_seconds, count)
        count = len(windows)
    items = []
    for s, start in rng.sample(windows, count):
        length = int(round(clip_seconds * s.sample_rate))
        items.append({
            "id": f"{s.rel.rsplit('.', 1)[0]}@{start}",
            "audio": str(s.path),
            "offset": start / s.sample_rate,
            "duration": length / s.sample_rate,
            "label": SILENCE,
            "text": "",
            "speaker": s.rel.rsplit("/", 1)[-1],
        })  # fmt: skip
    return items


def _split_rng(seed: int, split: str, purpose: str) -> random.Random:
    """An independent, reproducible generator per split and purpose."""
    return random.Random(f"{seed}/{split}/{purpose}")


def _progress(clips: Iterable[_Clip], total: int, desc: str) -> Iterable[_Clip]:
    return tqdm(clips, total=total, desc=desc, unit="file", disable=None)


def prepare_speech_commands(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    protocol: int = 12,
    silence_fraction: float = 0.1,
    unknown_fraction: float | None = None,
    seed: int = 0,
    clip_seconds: float = 1.0,
) -> dict[str, Path]:
    """Write ``out_dir/{train,valid,test}.jsonl`` for a Speech Commands folder.

    Args:
        root: the extracted corpus (``<word>/<speaker>_nohash_<n>.wav``).
        out_dir: where the manifests go (created if needed).
        protocol: 12 (ten keywords + unknown + silence) or 35 (every word a class).
        silence_fraction: with protocol 12 and a ``_background_noise_/`` folder, add
            about ``silence_fraction * (word clips in the split)`` silence windows per
            split. Ignored when a ``_silence_/`` folder of ready-made clips exists:
            those clips are the silence class, split with :func:`which_set`.
        unknown_fraction: ``None`` keeps every unknown clip; a float keeps at most
            ``unknown_fraction * (keyword clips in the split)`` of them, chosen with ``seed``.
        seed: seeds the unknown and silence choices (per split, reproducible).
        clip_seconds: length of a silence window cut from the background noise.

    Splits come from ``validation_list.txt`` / ``testing_list.txt`` when present,
    otherwise from the speaker hash of :func:`which_set`; folders starting with
    ``_`` other than the two silence sources are ignored.

    With background noise (and protocol 12), each split's part of it is also listed in
    ``out_dir/noise_<split>.jsonl``, a noise manifest for training-time augmentation.

    Returns:
        ``{"train": path, "valid": path, "test": path}``.
    """
    _check_args(protocol, silence_fraction, unknown_fraction, clip_seconds)
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise MissingFileError(f"{root}: Speech Commands folder not found")
    clips = _scan_words(root)
    if not clips:
        raise UsageError(f"{root}: no <word>/*.wav clips found; is this a Speech Commands folder?")
    if protocol == 35:
        extra = sorted({c.word for c in clips} - set(ALL_WORDS_35))
        if extra:
            log.warning("%s: %d word folder(s) are not among the 35 words (%s); kept as their own classes",
                        root, len(extra), ", ".join(extra))
    silence_dir = root / SILENCE_DIR
    use_clips = protocol == 12 and silence_dir.is_dir()
    if use_clips:
        clips += [_Clip(f"{SILENCE_DIR}/{f.name}", SILENCE) for f in sorted(silence_dir.glob("*.wav"))]

    lists = _split_lists(root)
    _warn_unlisted(root, clips, lists)
    by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for clip in _progress(clips, len(clips), f"speech commands ({root.name})"):
        by_split[_assign_split(clip, lists)].append(_clip_item(root, clip, protocol))

    use_noise = protocol == 12 and not use_clips and (root / BACKGROUND_DIR).is_dir()
    segments = _noise_segments(root) if use_noise else {s: [] for s in SPLITS}
    paths = {}
    for split in SPLITS:
        items = _cap_unknowns(by_split[split], unknown_fraction if protocol == 12 else None,
                              _split_rng(seed, split, "unknown"))
        if use_noise:
            count = round(silence_fraction * len(items))
            items += _silence_windows(segments[split], clip_seconds, count, _split_rng(seed, split, "silence"))
        items.sort(key=lambda it: it["id"])
        paths[split] = write_manifest(out_dir / f"{split}.jsonl", items)
        log.info("%s: %d clips", paths[split], len(items))
        if use_noise and segments[split]:  # this split's background noise, for augmentation (data.noise_manifest)
            noise = [{"id": f"{s.rel}@{s.start}", "audio": str(s.path), "offset": s.start / s.sample_rate,
                      "duration": (s.end - s.start) / s.sample_rate} for s in segments[split]]
            write_manifest(out_dir / f"noise_{split}.jsonl", noise)
    return paths
