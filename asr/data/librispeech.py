"""Prepare LibriSpeech (Panayotov et al. 2015) subsets as JSON-lines manifests.

The released layout is ``LibriSpeech/<subset>/<speaker>/<chapter>/`` holding
``<speaker>-<chapter>-<utt>.flac`` files and one ``<speaker>-<chapter>.trans.txt``
whose lines read ``UTTID TEXT``. One manifest per subset is written, with items
``{"id", "audio", "duration", "text", "speaker"}`` sorted by id.

Example:
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> prepare_librispeech(root, root)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    asr.errors.MissingFileError: ...: no LibriSpeech subsets found
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tqdm import tqdm

from asr.audio import audio_info
from asr.data.manifest import ManifestError, write_manifest
from asr.errors import MissingFileError

log = logging.getLogger(__name__)

__all__ = ["SUBSETS", "find_librispeech_dir", "list_subsets", "read_transcripts", "prepare_librispeech"]

SUBSETS: tuple[str, ...] = (
    "dev-clean", "dev-other", "test-clean", "test-other",
    "train-clean-100", "train-clean-360", "train-other-500",
)  # fmt: skip
AUDIO_SUFFIX = ".flac"
TRANS_SUFFIX = ".trans.txt"


def _is_subset(folder: Path) -> bool:
    """A subset folder holds ``<speaker>/<chapter>/`` with transcripts or audio."""
    if not folder.is_dir() or folder.name.startswith("."):
        return False
    return any(any(True for _ in folder.glob(f"*/*/*{suffix}")) for suffix in (TRANS_SUFFIX, AUDIO_SUFFIX))


def find_librispeech_dir(root: str | os.PathLike) -> Path:
    """Return the folder holding the subsets: ``root`` itself or ``root/LibriSpeech``."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"{root}: LibriSpeech folder not found")
    inner = root / "LibriSpeech"
    if inner.is_dir() and not list_subsets(root):
        return inner
    return root


def list_subsets(base: str | os.PathLike) -> list[str]:
    """Names of the subset folders under the LibriSpeech folder ``base``, sorted."""
    return sorted(p.name for p in Path(base).iterdir() if _is_subset(p))


def read_transcripts(path: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """Parse one ``*.trans.txt``: ``{utt_id: (text, line_number)}``.

    Raises:
        ManifestError: naming the file and line, for a line without text or a
            repeated utterance id.
    """
    path = Path(path)
    out: dict[str, tuple[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            if len(parts) < 2:
                raise ManifestError(path, lineno, f"utterance {parts[0]!r} has no transcript text")
            utt, text = parts
            if utt in out:
                raise ManifestError(path, lineno, f"utterance {utt!r} repeats line {out[utt][1]}")
            out[utt] = (" ".join(text.split()), lineno)
    return out


def _subset_transcripts(subset_dir: Path) -> dict[str, tuple[str, Path, int]]:
    """All transcripts of a subset: ``{utt_id: (text, trans_file, line)}``."""
    out: dict[str, tuple[str, Path, int]] = {}
    for trans in sorted(subset_dir.glob(f"*/*/*{TRANS_SUFFIX}")):
        for utt, (text, lineno) in read_transcripts(trans).items():
            if utt in out:
                first = f"{out[utt][1]}:{out[utt][2]}"
                raise ManifestError(trans, lineno, f"utterance {utt!r} is also transcribed in {first}")
            out[utt] = (text, trans, lineno)
    return out


def _match(subset_dir: Path, transcripts: dict[str, tuple[str, Path, int]]) -> list[tuple[str, Path, str]]:
    """Pair audio files with transcripts: ``[(utt_id, audio, text)]`` sorted by id.

    Transcript lines without audio and audio without a transcript are skipped
    with one warning (with a count) each.
    """
    audio = {p.name[: -len(AUDIO_SUFFIX)]: p for p in subset_dir.glob(f"*/*/*{AUDIO_SUFFIX}")}
    no_audio = sorted(set(transcripts) - set(audio))
    no_text = sorted(set(audio) - set(transcripts))
    if no_audio:
        _, trans, lineno = transcripts[no_audio[0]]
        log.warning("%s: %d transcript line(s) have no audio file, e.g. %s (%s:%d); skipped",
                    subset_dir, len(no_audio), no_audio[0], trans, lineno)
    if no_text:
        log.warning("%s: %d audio file(s) have no transcript, e.g. %s; skipped",
                    subset_dir, len(no_text), audio[no_text[0]])
    return [(utt, audio[utt], transcripts[utt][0]) for utt in sorted(set(audio) & set(transcripts))]


def _subset_items(subset_dir: Path) -> list[dict]:
    """Manifest items of one subset, durations read from the audio headers."""
    pairs = _match(subset_dir, _subset_transcripts(subset_dir))
    items = []
    for utt, path, text in tqdm(pairs, desc=f"librispeech {subset_dir.name}", unit="utt", disable=None):
        items.append({
            "id": utt,
            "audio": str(path),
            "duration": audio_info(path).duration,
            "text": text,
            "speaker": utt.split("-", 1)[0],
        })  # fmt: skip
    return items


def prepare_librispeech(
    root: str | os.PathLike, out_dir: str | os.PathLike, subsets: list[str] | tuple[str, ...] | None = None
) -> dict[str, Path]:
    """Write ``out_dir/<subset>.jsonl`` for each LibriSpeech subset.

    Args:
        root: the ``LibriSpeech`` folder or its parent.
        out_dir: where the manifests go (created if needed).
        subsets: subset folder names to prepare; ``None`` prepares every one found.

    Returns:
        ``{subset: manifest_path}``.

    Raises:
        FileNotFoundError: no subsets under ``root``, or a named subset is missing.
        ManifestError: a malformed ``*.trans.txt`` line (naming the file and line).
        asr.audio.AudioError: an unreadable audio file.
    """
    base = find_librispeech_dir(root)
    found = list_subsets(base)
    if not found:
        raise MissingFileError(f"{base}: no LibriSpeech subsets found "
                                f"(expected <subset>/<speaker>/<chapter>/*{TRANS_SUFFIX})")
    if subsets is None:
        subsets = found
    elif isinstance(subsets, str):
        subsets = [subsets]
    missing = [s for s in subsets if s not in found]
    if missing:
        raise MissingFileError(f"{base}: subset(s) {', '.join(missing)} not found; present: {', '.join(found)}")
    out_dir = Path(out_dir)
    paths = {}
    for subset in subsets:
        items = _subset_items(base / subset)
        paths[subset] = write_manifest(out_dir / f"{subset}.jsonl", items)
        log.info("%s: %d utterances, %.2f h", paths[subset], len(items), sum(it["duration"] for it in items) / 3600)
    return paths
