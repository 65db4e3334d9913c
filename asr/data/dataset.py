"""Datasets over manifests and the collate function (padding + lengths).

The dataset returns raw waveforms (optionally augmented on the waveform:
noise, speed, shift); features are computed batched by the model's front-end,
on whatever device the model runs on.

Example:
    >>> import tempfile, os, numpy as np
    >>> from asr.audio import write_audio
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "a.wav")
    >>> write_audio(p, np.zeros(1600, "float32"), 16000)
    >>> ds = AudioDataset([{"id": "a", "audio": p, "text": "hi"}])
    >>> batch = collate_batch([ds[0], ds[0]])
    >>> batch["wav"].shape, batch["wav_lengths"].tolist()
    (torch.Size([2, 1600]), [1600, 1600])
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from asr.audio import AudioError, read_audio
from asr.errors import UsageError
from asr.text import Tokenizer

log = logging.getLogger(__name__)


class AudioDataset(torch.utils.data.Dataset):
    """Manifest items -> ``{"id", "wav" (N,), "text", "tokens" (U,), "label"}``.

    Args:
        items: manifest items (see :func:`asr.data.read_manifest`).
        sample_rate: audio is resampled to this rate.
        tokenizer: when given, ``text`` is encoded to ``tokens``.
        labels: class names; when given, ``label`` is mapped to its index.
        augment: ``f(wav, generator) -> wav`` applied to the waveform, except for items with
            ``"augment": false`` (e.g. copies of real recordings to be heard as they are).
        skip_bad: an unreadable file yields ``None`` (dropped by :func:`collate_batch`
            and counted) instead of raising :class:`AudioError`; ``on_error(item, error)`` is told
            (default: a warning in the log).
        seed: augmentation randomness comes from ``(seed, epoch, index)``: reproducible
            whatever the worker count.
    """

    def __init__(
        self,
        items: Sequence[dict],
        sample_rate: int = 16000,
        tokenizer: Tokenizer | None = None,
        labels: Sequence[str] | None = None,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        skip_bad: bool = False,
        seed: int = 0,
        on_error: Callable[[dict, AudioError], None] | None = None,
    ):
        self.items = list(items)
        self.sample_rate, self.tokenizer, self.augment = sample_rate, tokenizer, augment
        self.label_index = {l: i for i, l in enumerate(labels)} if labels is not None else None
        self.skip_bad, self.seed, self.epoch = skip_bad, seed, 0
        self.bad_files = 0
        self.on_error = on_error

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def durations(self) -> list[float]:
        return [float(it.get("duration", 0.0)) for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict | None:
        item = self.items[index]
        try:
            wav, _ = read_audio(
                item["audio"], self.sample_rate, item.get("offset", 0.0),
                item.get("duration") if "offset" in item else None,
            )
        except AudioError as e:
            if not self.skip_bad:
                raise
            self.bad_files += 1
            if self.on_error is not None:
                self.on_error(item, e)
            else:
                log.warning("skipping %s (id %s): %s", e.path, item["id"], e.reason)
            return None
        if self.augment is not None and item.get("augment", True) is not False:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
            wav = self.augment(wav, g)
        out = {"id": item["id"], "wav": wav, "text": item.get("text", "")}
        if self.tokenizer is not None:
            out["tokens"] = torch.tensor(self.tokenizer.encode(item.get("text", "")), dtype=torch.long)
        if self.label_index is not None:
            label = item.get("label")
            if label not in self.label_index:
                raise UsageError(f"item {item['id']!r} ({item['audio']}): label {label!r} is not one of {list(self.label_index)}")
            out["label"] = self.label_index[label]
        return out


def collate_batch(samples: Sequence[dict | None]) -> dict:
    """Pad a list of dataset samples into a batch.

    Returns ``ids``, ``texts``, ``wav`` ``(B, N)``, ``wav_lengths`` ``(B,)``, and when present
    ``tokens`` ``(B, U)`` (padded with 0) with ``token_lengths`` ``(B,)`` and ``labels`` ``(B,)``;
    ``skipped`` counts ``None`` samples (unreadable files) that were dropped.
    """
    kept = [s for s in samples if s is not None]
    batch = {"skipped": len(samples) - len(kept), "ids": [s["id"] for s in kept], "texts": [s["text"] for s in kept]}
    if not kept:
        return batch
    batch["wav"] = pad_sequence([s["wav"] for s in kept], batch_first=True)
    batch["wav_lengths"] = torch.tensor([len(s["wav"]) for s in kept], dtype=torch.long)
    if "tokens" in kept[0]:
        batch["tokens"] = pad_sequence([s["tokens"] for s in kept], batch_first=True, padding_value=0)
        batch["token_lengths"] = torch.tensor([len(s["tokens"]) for s in kept], dtype=torch.long)
    if "label" in kept[0]:
        batch["labels"] = torch.tensor([s["label"] for s in kept], dtype=torch.long)
    return batch
