"""Manifest tools for keyword spotting: speaker-disjoint splits and weighted combinations.

Example:
    >>> items = [{"id": f"{s}/{i}", "speaker": s} for s in "abcdefgh" for i in range(3)]
    >>> parts = split_by_speaker(items, {"train": 0.5, "test": 0.5}, seed=0)
    >>> sorted(len(v) for v in parts.values())
    [12, 12]
    >>> {it["speaker"] for it in parts["train"]} & {it["speaker"] for it in parts["test"]}
    set()
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

from asr.data.manifest import read_manifest, write_manifest
from asr.errors import UsageError


def _unit_hash(text: str) -> float:
    return int(hashlib.sha1(text.encode()).hexdigest()[:12], 16) / float(16**12)


def speaker_of_item(item: dict) -> str:
    """The item's ``speaker`` field; an item without one is its own speaker (its id)."""
    return str(item.get("speaker", item["id"]))


def split_by_speaker(items: Sequence[dict], fractions: dict[str, float], seed: int = 0) -> dict[str, list[dict]]:
    """Split items so that no speaker is in two parts.

    Speakers are ordered by a seeded hash and cut so that each part gets about its
    ``fraction`` of the *speakers* (items follow their speaker). Items without a
    ``speaker`` field are their own speaker. Deterministic for a given seed.
    """
    if not fractions or any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise UsageError(f"fractions must be non-negative and not all zero, got {fractions}")
    total = sum(fractions.values())
    speakers = sorted({speaker_of_item(it) for it in items}, key=lambda s: _unit_hash(f"{seed}:{s}"))
    bounds, acc = [], 0.0
    for name, f in fractions.items():
        acc += f / total
        bounds.append((name, round(acc * len(speakers))))
    part_of, start = {}, 0
    for name, end in bounds:
        for s in speakers[start:end]:
            part_of[s] = name
        start = end
    out: dict[str, list[dict]] = {name: [] for name in fractions}
    for it in items:
        out[part_of[speaker_of_item(it)]].append(it)
    return out


def combine_manifests(out: str | os.PathLike, sources: Sequence[tuple],
                      labels: Sequence[str] | None = None) -> tuple[Path, int]:
    """Write ``out`` with the items of each ``(manifest, repeat)`` or ``(manifest, repeat, clean)``;
    repeats get ids ``<id>#<k>``, and the last ``clean`` copies of each item are marked
    ``"augment": false`` (training reads them without waveform augmentation).

    With ``labels``, only items with one of those labels, or with no label at all, are kept.
    Returns ``(out, item count)``. Ids must be unique across the sources.
    """
    items, seen = [], set()
    for path, repeat, *rest in sources:
        clean = int(rest[0]) if rest else 0
        if repeat < 1:
            raise UsageError(f"{path}: repeat must be >= 1, got {repeat}")
        if not 0 <= clean <= repeat:
            raise UsageError(f"{path}: clean copies must be between 0 and the repeat {repeat}, got {clean}")
        for it in read_manifest(path):
            if labels is not None and "label" in it and it["label"] not in labels:
                continue
            if it["id"] in seen:
                raise UsageError(f"{path}: id {it['id']!r} also appears in an earlier manifest")
            seen.add(it["id"])
            copies = [it] + [dict(it, id=f"{it['id']}#{k}") for k in range(1, repeat)]
            items += [dict(c, augment=False) if k >= repeat - clean else c for k, c in enumerate(copies)]
    return write_manifest(out, items), len(items)
