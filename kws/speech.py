"""Running speech for a keyword spotter: training windows, false alarms, hard negatives.

A command spotter must stay quiet through ordinary speech. This module holds the three
things that need running speech rather than isolated clips:

* :func:`cut_windows` cuts long recordings (manifest items or plain files) into windows as
  long as a keyword clip, as ``_unknown_`` manifest items that point into the long file
  (``offset``/``duration``; no audio is copied);
* :func:`speech_false_alarms` runs the streaming detector over transcribed speech and counts
  the detections of keywords that are not words of the utterance's transcript;
* :func:`mine_hard_negatives` keeps the windows the detector fired on in keyword-free (or
  transcribed) speech, as ``_unknown_`` items for the next round of training.

Transcripts decide what is a false alarm: a keyword that is a word of the transcript is
never counted (the speaker did say it, even if inside a sentence), whatever the detector
says about it; any other keyword detection is a false alarm. Items without ``text`` are
taken as keyword-free.

Example:
    >>> items = [{"id": "a", "audio": "a.flac", "duration": 2.2, "text": "GO ON HOME"}]
    >>> [w["offset"] for w in cut_windows(items, window=1.0, hop=0.5)]
    [0.0, 0.5, 1.0]
    >>> sorted(transcript_keywords(items[0], ["go", "on", "up"]))
    ['go', 'on']
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from asr.audio import audio_info, iter_audio_blocks, read_audio
from asr.constants import UNKNOWN
from asr.errors import MissingFileError, UsageError
from kws.detect import Detector, ScoredAudio, score_blocks, sweep_events


def speech_items(inputs: Sequence[str | os.PathLike]) -> list[dict]:
    """Manifest items from a mix of manifests (``.jsonl``) and audio files (one item each)."""
    from asr.data.manifest import read_manifest

    items: list[dict] = []
    for spec in inputs:
        path = Path(spec)
        if path.suffix == ".jsonl":
            items += read_manifest(path, check_audio=True)
        else:
            items.append({"id": path.stem, "audio": str(path)})
    ids = [it["id"] for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UsageError(f"id {dup!r} appears twice among the inputs (two files with one name?)")
    return items


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def labelled_recordings(inputs: Sequence[str | os.PathLike]) -> list[dict]:
    """Items ``{"id", "audio", "label"}`` of recordings that each hold one word or phrase: a folder
    (its audio files, labelled with the folder's name, ``_`` read as a space), an audio file (its
    folder's name) or a manifest (its items' ``label``, else ``text``)."""
    from asr.data.manifest import read_manifest

    items: list[dict] = []
    for spec in inputs:
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
            if not files:
                raise UsageError(f"{path}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
            label = " ".join(path.name.replace("_", " ").lower().split())
            items += [{"id": f"{path.name}/{p.relative_to(path).as_posix()}", "audio": str(p), "label": label}
                      for p in files]
        elif path.suffix == ".jsonl":
            for it in read_manifest(path, check_audio=True):
                label = it.get("label") or it.get("text")
                if not label:
                    raise UsageError(f"{path}: item {it['id']} has neither a label nor a text")
                items.append(dict(it, label=" ".join(str(label).lower().split())))
        elif path.is_file():
            items.append({"id": f"{path.parent.name}/{path.name}", "audio": str(path),
                          "label": " ".join(path.parent.name.replace("_", " ").lower().split())})
        else:
            raise MissingFileError(f"{path}: no such file or folder")
    return items



def transcript_keywords(item: dict, keywords: Sequence[str]) -> set[str]:
    """The keywords (a word, or a phrase of several) spoken in the item's transcript (none without ``text``)."""
    text = " " + " ".join(re.split(r"[^a-z']+", item.get("text", "").lower())) + " "
    return {k for k in keywords if f" {' '.join(k.lower().split())} " in text}


def item_seconds(item: dict) -> float:
    """Length of the item's audio: its ``duration`` field, else the file's."""
    if "duration" in item:
        return float(item["duration"])
    return audio_info(item["audio"]).duration - float(item.get("offset", 0.0))


def cut_windows(items: Sequence[dict], window: float = 1.0, hop: float = 0.5, label: str = UNKNOWN,
                skip_keywords: Sequence[str] = ()) -> list[dict]:
    """Windows of ``window`` seconds every ``hop`` seconds over each item, as ``label`` items.

    An item shorter than a window gives one window of its own length. Items whose transcript
    holds one of ``skip_keywords`` give none (a keyword inside a sentence is left out rather
    than taught as ``_unknown_``). Each window keeps the item's ``speaker`` (else its id), so
    that speaker-disjoint splits still work.
    """
    if window <= 0 or hop <= 0:
        raise UsageError(f"window and hop must be > 0, got {window} and {hop}")
    out = []
    for it in items:
        if skip_keywords and transcript_keywords(it, skip_keywords):
            continue
        seconds, base = item_seconds(it), float(it.get("offset", 0.0))
        starts = np.arange(0.0, max(seconds - window, 0.0) + 1e-6, hop) if seconds > window else np.zeros(1)
        for t in starts.tolist():
            out.append({"id": f"{it['id']}@{t:.2f}", "audio": it["audio"], "offset": round(base + t, 4),
                        "duration": round(min(window, seconds), 4), "label": label,
                        "speaker": str(it.get("speaker", it["id"]))})
    return out


def item_blocks(item: dict, sample_rate: int, block_seconds: float = 30.0):
    if "offset" in item:  # a segment of a longer file
        wav, _ = read_audio(item["audio"], sample_rate, float(item["offset"]), item.get("duration"))
        yield wav
    else:
        yield from iter_audio_blocks(item["audio"], sample_rate, block_seconds)


def item_scores(detector: Detector, item: dict) -> ScoredAudio:
    """One item's audio scored once (see :func:`kws.detect.score_blocks`)."""
    return score_blocks(detector, item_blocks(item, detector.sample_rate))


@dataclass
class SpeechScores:
    """The detector's posteriors over transcribed speech, scored once for any threshold.

    The event logic runs on every keyword, as the streaming detector does (an event of a
    transcript word still starts the refractory time); then the events of keywords that are
    words of the item's transcript (``said``, keyword indices) are left out: they are not
    false alarms.
    """

    detector: Detector
    items: list[dict]
    audio: list[ScoredAudio]
    said: list[set[int]]

    @property
    def keywords(self) -> list[str]:
        return list(self.detector.keywords)

    @property
    def hours(self) -> float:
        return sum(a.seconds for a in self.audio) / 3600.0

    def events(self, threshold: float) -> list[tuple[int, int, int, float]]:
        """``(item, keyword index, best window, score)`` of every false alarm at ``threshold``."""
        return [(i, k, w, sc) for i, (a, said) in enumerate(zip(self.audio, self.said))
                for k, w, sc in sweep_events(self.detector, a, threshold) if k not in said]

    def per_keyword(self, threshold: float) -> dict[str, int]:
        counts = {k: 0 for k in self.keywords}
        for _, k, _, _ in self.events(threshold):
            counts[self.keywords[k]] += 1
        return counts

    def summary(self, threshold: float) -> dict:
        """``{"false_alarms", "hours", "fa_per_hour", "per_keyword", "utterances", "threshold"}`` at ``threshold``."""
        per = self.per_keyword(threshold)
        n = sum(per.values())
        return {"false_alarms": n, "hours": self.hours, "fa_per_hour": n / max(self.hours, 1e-12), "per_keyword": per,
                "utterances": len(self.items), "threshold": threshold}

    def fa_per_hour(self, thresholds: Sequence[float]) -> np.ndarray:
        return np.array([len(self.events(float(t))) / max(self.hours, 1e-12) for t in thresholds])


def score_speech(detector: Detector, items: Sequence[dict], progress: bool = True) -> SpeechScores:
    """Score each item once (see :class:`SpeechScores`)."""
    if not items:
        raise UsageError("no speech to measure false alarms on")
    audio, said = [], []
    for it in tqdm(items, desc="running speech", unit="utt", disable=not progress, leave=False):
        audio.append(item_scores(detector, it))
        words = transcript_keywords(it, detector.keywords)
        said.append({k for k, kw in enumerate(detector.keywords) if kw in words})
    return SpeechScores(detector, list(items), audio, said)


def speech_false_alarms(detector: Detector, items: Sequence[dict], threshold: float | None = None,
                        progress: bool = True) -> dict:
    """False alarms of ``detector`` on transcribed speech at ``threshold`` (default its own):
    ``{"false_alarms", "hours", "fa_per_hour", "per_keyword", "utterances"}``."""
    return score_speech(detector, items, progress).summary(detector.cfg.threshold if threshold is None else threshold)


def mine_hard_negatives(detector: Detector, items: Sequence[dict], threshold: float,
                        progress: bool = True) -> list[dict]:
    """The windows the detector fires on at ``threshold`` in ``items`` (keywords of an item's
    transcript excluded), as ``_unknown_`` items pointing into the source audio.

    Each item is the best window of one event: ``offset`` and ``duration`` are that window's
    span in the source file, ``keyword`` and ``score`` what fired (the first of two events
    that share a window).
    """
    sc = score_speech(detector, items, progress)
    out, seen = [], set()
    for i, k, w, score in sc.events(threshold):
        if (i, w) in seen:  # two keywords whose events share their best window: one training window
            continue
        seen.add((i, w))
        it = items[i]
        start = detector.window_start(w)
        length = min(detector.window_seconds, item_seconds(it) - start)  # the last windows reach into the end pad
        if length <= 0:
            continue
        out.append({"id": f"{it['id']}@mined{start:.2f}", "audio": it["audio"],
                    "offset": round(float(it.get("offset", 0.0)) + start, 4), "duration": round(length, 4),
                    "label": UNKNOWN, "speaker": str(it.get("speaker", it["id"])),
                    "keyword": sc.keywords[k], "score": round(float(score), 4)})
    return out


def calibrate_threshold(detector: Detector, items: Sequence[dict], target_fa_per_hour: float,
                        min_threshold: float = 0.5, progress: bool = True) -> tuple[float, float]:
    """The lowest threshold (at least ``min_threshold``) whose false alarms per hour on ``items``
    (all together; keywords of a transcript excluded) are at most ``target_fa_per_hour``, and
    those false alarms per hour. The grid is fine near 1, where low false-alarm rates live."""
    sc = score_speech(detector, items, progress)
    grid = np.unique(np.concatenate([np.linspace(min_threshold, 0.99, 100), 1 - np.logspace(-2, -5, 60)]))
    grid = grid[grid >= min_threshold]
    for t in grid.tolist():  # false alarms fall as the threshold rises: the first that meets the target
        fa = len(sc.events(t)) / sc.hours
        if fa <= target_fa_per_hour:
            return round(t, 6), fa
    raise UsageError(f"no threshold up to {grid[-1]:.5f} gives at most {target_fa_per_hour:g} false alarms per hour "
                     f"({len(sc.events(grid[-1]))} in {60 * sc.hours:.1f} min at the highest)")


__all__ = ["calibrate_threshold", "speech_items", "labelled_recordings", "item_blocks", "transcript_keywords", "cut_windows", "item_scores", "SpeechScores", "score_speech",
           "speech_false_alarms", "mine_hard_negatives"]
