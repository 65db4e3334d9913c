"""Decoding: one module per family (greedy and beam searches), and batch transcription.

:func:`transcribe_items` runs any family's decoder over manifest items or files in
duration-sorted batches and returns the texts in the input order.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm import tqdm

from asr.data.dataset import AudioDataset, collate_batch
from asr.data.sampler import DurationBucketSampler
from asr.models import Family
from asr.text import Tokenizer


@torch.no_grad()
def transcribe_items(
    model: torch.nn.Module,
    family: Family,
    tokenizer: Tokenizer,
    items: Sequence[dict],
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = True,
    skip_bad: bool = False,
) -> list[str | None]:
    """Greedy transcripts of ``items`` (manifest dicts with ``id``/``audio``), in input order.

    With ``skip_bad`` an unreadable file gives ``None`` (and a warning naming it) instead
    of raising :class:`asr.audio.AudioError`.
    """
    model.eval()
    sr = model.frontend.features.config.sample_rate
    dataset = AudioDataset(items, sample_rate=sr, skip_bad=skip_bad)
    durations = [float(it.get("duration", 0.0)) for it in items]
    sampler = DurationBucketSampler(durations, batch_size=batch_size, shuffle=False, rank=0, world_size=1)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_batch)
    texts: dict[str, str] = {}
    with tqdm(total=len(items), desc="decode", unit="utt", disable=not progress) as bar:
        for batch in loader:
            bar.update(len(batch["ids"]) + batch["skipped"])
            if not batch["ids"]:
                continue
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            for uid, ids in zip(batch["ids"], family.decode(model, batch)):
                texts[uid] = tokenizer.decode(ids)
    return [texts.get(it["id"]) for it in items]
