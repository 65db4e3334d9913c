"""The data side of the training loop: manifests, targets, datasets, loaders, CMVN, dev evaluation.

Used by :mod:`asr.train`; every function takes the run's :class:`~asr.train.TrainConfig`.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jiwer
import torch
import torch.nn as nn

from asr.config import ConfigError
from asr.audio import AudioError, read_audio
from asr.augment import WaveformAugment
from asr.data.dataset import AudioDataset, collate_batch
from asr.data.manifest import read_manifest
from asr.data.sampler import DurationBucketSampler
from asr.errors import UsageError
from asr.features import compute_cmvn_stats
from asr.models import Family
from asr.text import Tokenizer, build_tokenizer, normalize_text, tokenizer_from_state
from asr.trainer_utils import DistContext, all_reduce_sum, batch_is_empty, is_fsdp, move_batch, unwrap

if TYPE_CHECKING:
    from asr.train_config import DataConfig, TrainConfig

log = logging.getLogger("asr.train")


@dataclass
class TrainData:
    """Manifests, targets, datasets and samplers of one run."""

    train_items: list[dict]  # training manifest items (after the duration filter)
    tokenizer: Tokenizer | None  # text targets (None with class labels)
    labels: list[str] | None  # class names (None with text targets)
    train_set: AudioDataset
    train_sampler: DurationBucketSampler
    dev_set: AudioDataset | None
    dev_sampler: DurationBucketSampler | None
    num_workers: int
    seed: int
    pin_memory: bool = False  # pin batches in page-locked memory (CUDA training)

    @property
    def num_outputs(self) -> int:
        return len(self.labels) if self.labels else self.tokenizer.vocab_size

    def loader(self, dataset: AudioDataset, sampler: DurationBucketSampler, epoch: int = 0) -> torch.utils.data.DataLoader:
        """Batches of ``dataset`` in ``sampler``'s order; the loader's own generator leaves the global RNG alone."""
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, collate_fn=collate_batch, num_workers=self.num_workers,
            pin_memory=self.pin_memory, generator=torch.Generator().manual_seed(self.seed + epoch),
        )


def _filter_durations(items: list[dict], cfg: DataConfig, is_main: bool) -> list[dict]:
    """Drop utterances outside ``[min_duration, max_duration]`` (items without a duration are kept)."""
    def keep(it: dict) -> bool:
        if "duration" not in it:
            return True
        d = float(it["duration"])
        return d >= cfg.min_duration and (cfg.max_duration <= 0 or d <= cfg.max_duration)

    kept = [it for it in items if keep(it)]
    if len(kept) < len(items) and is_main:
        log.info("dropped %d of %d training utterances outside [%g, %s] s", len(items) - len(kept), len(items),
                 cfg.min_duration, cfg.max_duration if cfg.max_duration > 0 else "inf")
    if not kept:
        raise UsageError(f"{cfg.train}: no training utterances left after the duration filter")
    return kept


def _targets(config: TrainConfig, family: Family, items: list[dict], resume: dict | None, is_main: bool
             ) -> tuple[Tokenizer | None, list[str] | None]:
    """The tokenizer (trained on the train texts, or from the checkpoint) or the class labels."""
    cfg = config.data
    if cfg.labels or family.targets == "labels":
        labels = list(cfg.labels) or sorted({it["label"] for it in items if "label" in it})
        if resume is not None and resume.get("labels") and list(resume["labels"]) != labels:
            raise UsageError(f"data.labels {labels} differ from the checkpoint's {resume['labels']}")
        if not labels:
            raise ConfigError(f"family {family.name!r} needs class labels: set data.labels or give items a 'label'")
        if is_main and not cfg.labels:
            log.info("class labels from the training manifest: %s", ", ".join(labels))
        return None, labels
    if resume is not None and resume.get("tokenizer"):
        return tokenizer_from_state(resume["tokenizer"]), None
    tokenizer = build_tokenizer(cfg.tokenizer, [it.get("text", "") for it in items], cfg.vocab_size)
    if is_main:
        log.info("%s tokenizer with %d tokens", cfg.tokenizer, tokenizer.vocab_size)
    return tokenizer, None


def _noises(cfg: DataConfig, sample_rate: int) -> list[torch.Tensor]:
    """Waveforms of the noise manifest (empty without one)."""
    if not cfg.noise_manifest:
        return []
    noises = []
    for it in read_manifest(cfg.noise_manifest, skip_bad=cfg.skip_bad, check_audio=True):
        try:
            noises.append(read_audio(it["audio"], sample_rate, it.get("offset", 0.0),
                                     it.get("duration") if "offset" in it else None)[0])
        except AudioError as e:
            if not cfg.skip_bad:
                raise
            log.warning("skipping noise %s: %s", e.path, e.reason)
    if not noises:
        raise UsageError(f"{cfg.noise_manifest}: no readable noise recordings")
    return noises


def build_augment(cfg: DataConfig, sample_rate: int) -> WaveformAugment | None:
    """Waveform augmentation from the data config, or ``None`` when every part is off."""
    noises = _noises(cfg, sample_rate)
    speed = cfg.speed_prob > 0 and any(f != 1.0 for f in cfg.speed_factors)
    max_shift = int(round(cfg.max_shift_ms * sample_rate / 1000))
    gain = cfg.gain_prob > 0 and any(g != 0.0 for g in cfg.gain_db)
    if (not (noises and cfg.noise_prob > 0) and not speed and not (max_shift > 0 and cfg.shift_prob > 0) and not gain
            and cfg.reverb_prob <= 0):
        return None
    return WaveformAugment(
        noises=noises, snr_range=tuple(cfg.snr_range), noise_prob=cfg.noise_prob,
        speed_factors=tuple(cfg.speed_factors), speed_prob=cfg.speed_prob, max_shift=max_shift,
        shift_prob=cfg.shift_prob, sample_rate=sample_rate,
        gain_db=(float(cfg.gain_db[0]), float(cfg.gain_db[1])) if gain else (0.0, 0.0), gain_prob=cfg.gain_prob,
        rt60=(float(cfg.rt60[0]), float(cfg.rt60[1])), reverb_prob=cfg.reverb_prob,
    )


def _sampler(durations: list[float], cfg: DataConfig, seed: int, ctx: DistContext, train: bool) -> DurationBucketSampler:
    if cfg.batch_size <= 0 and cfg.max_batch_seconds <= 0:
        raise ConfigError("set data.batch_size, data.max_batch_seconds or both")
    return DurationBucketSampler(
        durations, batch_size=cfg.batch_size or None, max_batch_seconds=cfg.max_batch_seconds or None,
        num_buckets=cfg.num_buckets, shuffle=cfg.shuffle and train, seed=seed, sortagrad=cfg.sortagrad and train,
        rank=ctx.rank, world_size=ctx.world_size,
    )


def build_data(config: TrainConfig, family: Family, ctx: DistContext, resume: dict | None) -> TrainData:
    """Read the manifests and build targets, datasets (train with augmentation) and samplers."""
    cfg = config.data
    if not cfg.train:
        raise ConfigError("data.train (the training manifest) is not set")
    sr = config.model.features.sample_rate
    train_items = _filter_durations(read_manifest(cfg.train, skip_bad=cfg.skip_bad, needs_text=True, check_audio=True), cfg, ctx.is_main)
    tokenizer, labels = _targets(config, family, train_items, resume, ctx.is_main)
    common = dict(sample_rate=sr, tokenizer=tokenizer, labels=labels, skip_bad=cfg.skip_bad, seed=config.seed)
    train_set = AudioDataset(train_items, augment=build_augment(cfg, sr), **common)
    dev_set = dev_sampler = None
    if cfg.dev:
        dev_set = AudioDataset(read_manifest(cfg.dev, skip_bad=cfg.skip_bad, needs_text=True, check_audio=True), **common)
        dev_sampler = _sampler(dev_set.durations, cfg, config.seed, ctx, train=False)
    return TrainData(train_items, tokenizer, labels, train_set, _sampler(train_set.durations, cfg, config.seed, ctx, True),
                     dev_set, dev_sampler, cfg.num_workers, config.seed, pin_memory=ctx.device.type == "cuda")


def compute_model_cmvn(model: nn.Module, items: list[dict], config: TrainConfig) -> None:
    """Global mean/std of the model's features over up to ``cmvn_max_items`` random train items."""
    cfg = config.data
    n = cfg.cmvn_max_items
    items = random.Random(config.seed).sample(items, n) if 0 < n < len(items) else list(items)
    while True:
        try:
            mean, std, frames = compute_cmvn_stats(items, model.frontend.features, progress=False)
            break
        except AudioError as e:  # with skip_bad, leave the unreadable file out and start again
            if not cfg.skip_bad:
                raise
            items = [it for it in items if it["audio"] != str(e.path)]
    model.frontend.set_cmvn(mean, std)
    log.info("CMVN statistics from %d utterances (%d frames)", len(items), frames)


def _error_counts(family: Family, model: nn.Module, batch: dict, data: TrainData) -> tuple[float, float]:
    """(errors, reference length): characters for text targets, utterances for class labels."""
    hyps = family.decode(model, batch)
    if data.labels:
        preds = [h[0] if isinstance(h, (list, tuple)) else int(h) for h in hyps]
        return float(sum(int(p) != int(l) for p, l in zip(preds, batch["labels"].tolist()))), float(len(preds))
    refs = [normalize_text(t) for t in batch["texts"]]
    texts = [data.tokenizer.decode([int(i) for i in h]) for h in hyps]
    errors = float(sum(len(t) for r, t in zip(refs, texts) if not r))  # empty reference: all insertions
    pairs = [(r, t) for r, t in zip(refs, texts) if r]
    if pairs:
        out = jiwer.process_characters([r for r, _ in pairs], [t for _, t in pairs])
        errors += out.substitutions + out.deletions + out.insertions
        return errors, float(out.substitutions + out.deletions + out.hits)
    return errors, 0.0


@torch.no_grad()
def evaluate(model: nn.Module, family: Family, data: TrainData, ctx: DistContext,
             amp_dtype: torch.dtype | None = None) -> tuple[float | None, float | None]:
    """Dev ``(mean loss, error rate)`` over all ranks: CER (jiwer) for text, classification error for labels.

    Batches the sampler repeats to even out ranks are not counted. ``(None, None)`` without a dev set.
    """
    if data.dev_set is None:
        return None, None
    net = model if is_fsdp(model) else unwrap(model)  # FSDP forwards are collectives: keep the wrapper
    net.eval()
    n_global = len(data.dev_sampler.global_batches())
    sums = [0.0, 0.0, 0.0, 0.0]  # loss, weight, errors, reference length
    for i, batch in enumerate(data.loader(data.dev_set, data.dev_sampler)):
        counted = i * ctx.world_size + ctx.rank < n_global
        if batch_is_empty(batch) or (not counted and not is_fsdp(model)):
            continue
        batch = move_batch(batch, ctx.device)
        with torch.autocast(ctx.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = family.loss(net, batch)
            errors, length = _error_counts(family, net, batch, data)
        loss = float(out.loss.float())
        if counted:
            finite = math.isfinite(loss)
            sums = [sums[0] + (loss if finite else 0.0), sums[1] + (float(out.weight) if finite else 0.0),
                    sums[2] + errors, sums[3] + length]
    loss_sum, weight, errors, length = all_reduce_sum(sums, ctx)
    net.train()
    return (loss_sum / weight if weight > 0 else None), (errors / length if length > 0 else None)
