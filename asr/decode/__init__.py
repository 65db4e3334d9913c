"""Decoding: one module per family (greedy and beam searches), and batch transcription.

:func:`transcribe_items` runs any family's decoder over manifest items or files in
duration-sorted batches and returns the texts in the input order; with ``timestamps=True``
:class:`~asr.decode.timestamps.Transcript` objects with each word's start, end and confidence
(the family's ``align`` places the decoded tokens, see :mod:`asr.decode.timestamps`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm import tqdm

from asr.data.dataset import AudioDataset, collate_batch
from asr.data.sampler import DurationBucketSampler
from asr.errors import UsageError
from asr.models import Family, all_families
from asr.text import Tokenizer


@dataclass
class DecodeOptions:
    """How to decode; the flags of ``asr transcribe`` / ``asr evaluate``."""

    decoder: str = "greedy"  # greedy | beam | modified_beam (transducer only)
    beam: int = 4  # beam width
    lm: str = ""  # word n-gram language model (ARPA) for CTC shallow fusion
    lm_weight: float = 0.5  # weight of the LM log-probability
    word_bonus: float = 0.0  # added per word (CTC with an LM)
    ctc_weight: float = 0.0  # attention models: weight of the CTC prefix score in the beam search
    length_penalty: float = 0.0  # attention models: added per output token


def check_options(family: Family, options: DecodeOptions) -> None:
    """Raise :class:`UsageError` for a decoder name that does not exist or does not fit the family."""
    known = sorted({name for f in all_families() for name in f.decoders})
    if options.decoder not in known:
        raise UsageError(f"unknown decoder {options.decoder!r} ({', '.join(known)})")
    if options.decoder not in family.decoders:
        raise UsageError(f"the {family.name} family has no {options.decoder!r} decoder "
                         f"(it has {', '.join(family.decoders)})")


def decode_batch(model: torch.nn.Module, family: Family, batch: dict, options: DecodeOptions, tokenizer: Tokenizer,
                 lm=None) -> list[list[int]]:
    """The best token sequence of every utterance of ``batch`` with the decoder ``options`` names."""
    check_options(family, options)
    if options.decoder == "greedy":
        return family.decode(model, batch)
    nbest = family.nbest(model, batch, options, nbest=1, tokenizer=tokenizer, lm=lm)
    return [hyps[0].tokens if hyps else [] for hyps in nbest]


def load_lm(options: DecodeOptions):
    """The n-gram LM named by ``options.lm`` (or ``None``)."""
    if not options.lm:
        return None
    from asr.decode.lm import NGramLM

    return NGramLM.from_arpa(options.lm)


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
    options: DecodeOptions | None = None,
    on_error=None,
    timestamps: bool = False,
) -> list:
    """Transcripts of ``items`` (manifest dicts with ``id``/``audio``), in input order.

    ``options`` picks the decoder (greedy by default).
    With ``skip_bad`` an unreadable file gives ``None`` (and a warning naming it, or a call of
    ``on_error(item, error)``) instead of raising :class:`asr.audio.AudioError`.

    Returns the texts (``str``), or with ``timestamps`` a :class:`~asr.decode.timestamps.Transcript`
    per item (its ``audio`` is the item's): the decoded tokens are aligned by the family's
    ``align`` (:class:`asr.models.Family`) and grouped into words with their start and end
    (seconds) and confidence (0-1).
    """
    model.eval()
    options = options or DecodeOptions()
    check_options(family, options)  # before reading any audio
    if timestamps:
        if family.align is None:
            raise UsageError(f"the {family.name} family gives no word timestamps")
        from asr.decode.ctc import WordSplitter
        from asr.decode.timestamps import Transcript, frame_seconds, words_from_alignment

        splitter, seconds = WordSplitter(tokenizer), frame_seconds(model)
        audio = {it["id"]: str(it["audio"]) for it in items}
    lm = load_lm(options)
    sr = model.frontend.features.config.sample_rate
    dataset = AudioDataset(items, sample_rate=sr, skip_bad=skip_bad, on_error=on_error)
    durations = [float(it.get("duration", 0.0)) for it in items]
    sampler = DurationBucketSampler(durations, batch_size=batch_size, shuffle=False, rank=0, world_size=1)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_batch)
    texts: dict[str, object] = {}
    with tqdm(total=len(items), desc="decode", unit="utt", disable=not progress) as bar:
        for batch in loader:
            bar.update(len(batch["ids"]) + batch["skipped"])
            if not batch["ids"]:
                continue
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            token_seqs = decode_batch(model, family, batch, options, tokenizer, lm)
            if not timestamps:
                for uid, ids in zip(batch["ids"], token_seqs):
                    texts[uid] = tokenizer.decode(ids)
                continue
            for uid, ids, ali in zip(batch["ids"], token_seqs, family.align(model, batch, token_seqs)):
                words = words_from_alignment(ids, ali, splitter, tokenizer, seconds)
                texts[uid] = Transcript(tokenizer.decode(ids), words, audio[uid])
    return [texts.get(it["id"]) for it in items]
