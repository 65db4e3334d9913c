"""JSON-lines manifests: one utterance per line.

Sentence corpora: ``{"id", "audio", "duration", "text"}``; keyword clips carry
``"label"`` instead of (or beside) ``"text"``; ``"offset"`` (seconds) is optional.
Audio paths are stored relative to the manifest's folder when they lie under it,
and are resolved to absolute paths when read.

Example:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> _ = write_manifest(os.path.join(d, "m.jsonl"),
    ...                [{"id": "a", "audio": os.path.join(d, "a.wav"), "duration": 1.0, "text": "HI"}])
    >>> open(os.path.join(d, "m.jsonl")).read().strip()
    '{"id": "a", "audio": "a.wav", "duration": 1.0, "text": "HI"}'
    >>> read_manifest(os.path.join(d, "m.jsonl"))[0]["audio"] == os.path.join(d, "a.wav")
    True
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

from asr.errors import ToolkitError
from asr.utils import atomic_open

log = logging.getLogger(__name__)


class ManifestError(ToolkitError, ValueError):
    """A manifest line is malformed. The message names the file and the line."""

    def __init__(self, path: str | os.PathLike, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


def _check_item(item, needs_text: bool) -> str | None:
    """Return a reason the item is malformed, or ``None``."""
    if not isinstance(item, dict):
        return f"expected a JSON object, got {type(item).__name__}"
    for key in ("id", "audio"):
        if key not in item:
            return f"missing required key {key!r}"
        if not isinstance(item[key], str) or not item[key]:
            return f"{key!r} must be a non-empty string"
    for key in ("duration", "offset"):
        if key in item:
            v = item[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
                return f"{key!r} must be a finite number >= 0, got {v!r}"
    for key in ("text", "label"):
        if key in item and not isinstance(item[key], str):
            return f"{key!r} must be a string, got {type(item[key]).__name__}"
    if needs_text and "text" not in item and "label" not in item:
        return "missing 'text' (or 'label' for keyword clips)"
    return None


def read_manifest(path: str | os.PathLike, skip_bad: bool = False, needs_text: bool = False,
                  check_audio: bool = False) -> list[dict]:
    """Read a JSON-lines manifest and resolve audio paths.

    Args:
        path: the manifest file.
        skip_bad: on a malformed line, warn (once, with a count) and go on instead of raising.
        needs_text: every item must carry ``text`` or ``label``.
        check_audio: every item's audio file must exist (one ``stat`` per item), so that a
            missing file is reported with the manifest line that names it, before any work.

    Raises:
        ManifestError: naming the file and line number, unless ``skip_bad``.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, None, "manifest not found" if not path.is_dir() else "is a folder, not a manifest")
    root = path.parent
    items, bad, seen = [], [], set()
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line, reason = None, "not UTF-8 text (is this a manifest?)"
            if line is not None:
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    reason = _check_item(item, needs_text)
                except json.JSONDecodeError as e:
                    reason = f"not valid JSON ({e.msg} at column {e.colno})"
                if reason is None and item["id"] in seen:
                    reason = f"duplicate id {item['id']!r}"
            if reason is None:
                audio = Path(item["audio"])
                item["audio"] = str(audio) if audio.is_absolute() else os.path.normpath(root / audio)
                if check_audio and not os.path.isfile(item["audio"]):
                    reason = f"audio file not found: {item['audio']}"
            if reason is not None:
                if not skip_bad:
                    raise ManifestError(path, lineno, reason)
                bad.append(f"line {lineno}: {reason}")
                continue
            seen.add(item["id"])
            items.append(item)
    if bad:
        log.warning("%s: skipped %d malformed line(s); first: %s", path, len(bad), bad[0])
    return items


MAX_UP_LEVELS = 2  # audio up to two folders above the manifest is still stored relative


def _portable_path(audio: Path, root: Path) -> str:
    """``audio`` (absolute, or relative to the working directory) relative to ``root`` when it lies under it or at most two levels up, else absolute.

    A corpus folder holding both ``manifests/asr/train.jsonl`` and the audio can then be
    moved as a whole; audio elsewhere (a shared corpus) keeps its absolute path.
    """
    audio = audio.resolve()  # in memory, relative paths are relative to the working directory
    rel = Path(os.path.relpath(audio, root))
    if rel.parts[: MAX_UP_LEVELS + 1].count("..") > MAX_UP_LEVELS:
        return str(audio)
    return str(rel)


def write_manifest(path: str | os.PathLike, items: Iterable[dict], relative: bool = True) -> Path:
    """Write items as JSON lines, atomically; audio paths near the manifest become relative (see ``_portable_path``)."""
    path = Path(path)
    root = path.parent.resolve()
    with atomic_open(path, "w", encoding="utf-8") as f:
        for item in items:
            item = dict(item)
            item["audio"] = _portable_path(Path(item["audio"]), root) if relative else str(item["audio"])
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    return path
