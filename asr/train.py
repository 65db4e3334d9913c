"""The one training loop, shared by every model family (ASR and keyword spotting).

``train(config)`` reads the manifests, builds the tokenizer (or takes class labels),
the datasets with waveform augmentation, the model through its family (with global
CMVN statistics from the training set), the optimizer and LR schedule, and runs
epochs of duration-bucketed batches with gradient accumulation, clipping, mixed
precision on CUDA and data parallelism under ``torchrun``. A checkpoint (see
:mod:`asr.checkpoint`) is written every ``ckpt_every_steps`` steps and at each epoch
end; when ``out_dir/last.pt`` exists the run resumes from it exactly, so a killed job
restarted with the same command loses at most the steps since that checkpoint.

Losses are sums with a weight (:class:`asr.models.LossOutput`); each update divides the
gradient by the total weight over the accumulation micro-batches and all ranks, so one
process and N processes with the same global batch make the same update.

Example (a config file plus overrides, as ``asr train`` does it)::

    config = load_config(TrainConfig, "recipes/synthetic/conf/ctc.yaml", ["optim.lr=1e-3"])
    summary = train(config)   # {"step": ..., "dev_error": ..., "stopped": "epochs", ...}
    model, family, tokenizer, config = load_model("exp/run/best.pt", device="cuda")

Data parallel: ``torchrun --nproc_per_node 4 -m asr train --config ...`` (``distributed: ddp``
or ``fsdp``); ``data.batch_size`` is per process. A family's ``loss`` must run the forward
through ``model(...)`` (the DDP/FSDP wrapper), which the loop checks at the first update.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from pathlib import Path

import torch

from asr.checkpoint import FORMAT, CheckpointError, average_checkpoints, load_checkpoint, load_model, save_checkpoint
from asr.train_state import (
    copy_checkpoint, epoch_checkpoints, load_optimizer_state, model_state, optimizer_state, prune_epoch_checkpoints,
    remove_stale_temporaries, rng_state, set_rng_state,
)
from asr.config import ConfigError, to_dict
from asr.errors import ToolkitError
from asr.models import Family, get_family
from asr.train_config import DataConfig, OptimConfig, TrainConfig
from asr.train_data import TrainData, build_data, compute_model_cmvn, evaluate
from asr.trainer_utils import (
    DistContext, MetricsWriter, all_reduce_sum, batch_is_empty, build_optimizer, build_scheduler, cleanup_distributed,
    clip_gradients, gather_objects, is_fsdp, move_batch, no_sync, scale_gradients, seed_everything, setup_distributed, wrap_model,
)

log = logging.getLogger("asr.train")

__all__ = [  # checkpoint readers re-exported for `asr transcribe` / `asr evaluate`
    "DataConfig", "OptimConfig", "TrainConfig", "TrainingError", "Trainer", "train",
    "CheckpointError", "average_checkpoints", "load_checkpoint", "load_model",
]


class TrainingError(ToolkitError, RuntimeError):
    """Training cannot go on (e.g. too many non-finite losses); the message says why."""


def train(config: TrainConfig, family: Family | str | None = None, progress: bool = True) -> dict:
    """Train (or resume training of) a model as ``config`` says; returns a summary dict.
    ``progress=False`` hides the per-epoch progress bar (the log lines stay).

    The summary holds ``step``, ``epoch``, ``start_step`` (the step resumed from), ``stopped``
    (``epochs`` | ``max_steps`` | ``max_minutes`` | ``early_stop``), ``dev_loss``, ``dev_error``,
    ``best``, ``train_loss``, ``bad_steps``, ``skipped_batches`` and ``checkpoint``.

    Raises:
        TrainingError: after more than ``max_bad_steps`` non-finite losses.
    """
    if family is None or isinstance(family, str):
        family = get_family(family or config.model.family)
    ctx = setup_distributed(config.device)
    try:
        trainer = Trainer(config, family, ctx, progress=progress)
        return trainer.run()
    finally:
        cleanup_distributed(ctx)


class Trainer:
    """State of one training run; :meth:`run` is the loop. Built by :func:`train`."""

    def __init__(self, config: TrainConfig, family: Family, ctx: DistContext, progress: bool = True):
        _check_config(config)
        self.config, self.family, self.ctx, self.progress = config, family, ctx, progress
        self.out_dir = Path(config.out_dir)
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed + ctx.rank)
        self._setup_amp()
        resume = self._resume_checkpoint()
        init = self._init_checkpoint() if resume is None else None  # its tokenizer / labels are this run's
        self.data: TrainData = build_data(config, family, ctx, resume if resume is not None else init)
        model = family.build(config.model, self.data.num_outputs)
        if not hasattr(model, "frontend"):
            raise TypeError(f"family {family.name!r} built a model without a .frontend")
        self._info("%s model: %s trainable parameters", family.name,
                   f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}")
        if resume is not None:
            try:
                model.load_state_dict(resume["model"])
            except RuntimeError as e:
                raise TrainingError(f"{self.out_dir / 'last.pt'} does not fit the configured model: use another "
                                    f"out_dir or the config it was trained with ({e})") from None
        elif init is not None:  # the weights hold the CMVN statistics (and what family.prepare set)
            try:
                model.load_state_dict(init["model"])
            except RuntimeError as e:
                raise TrainingError(f"{config.init_from} (init_from) does not fit the configured model ({e})") from None
        elif ctx.is_main:  # other ranks receive rank 0's weights and statistics when wrapped
            compute_model_cmvn(model, self.data.train_items, config)
            if family.prepare is not None:
                family.prepare(model, self.data.train_items, self.data.labels or self.data.tokenizer)
        self.model = wrap_model(model.to(ctx.device), ctx, config.distributed)
        o = config.optim
        self.optimizer = build_optimizer(self.model, o.optimizer, o.lr, o.weight_decay, o.betas, o.momentum)
        self.scheduler = build_scheduler(self.optimizer, o.schedule, o.warmup_steps, self._total_steps(), o.min_lr_ratio)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp_dtype == torch.float16)
        self.step = self.epoch = self.batches_done = self.bad_steps = self.skipped_batches = 0
        self.best: float | None = None  # best dev metric so far (lower is better)
        self.epochs_without_improvement = 0
        self.seconds_before = 0.0  # training seconds of earlier invocations
        self.epoch_loss = [0.0, 0.0]  # loss sum and weight of the current epoch
        self.interval = [0.0, 0.0, 0.0]  # loss sum, weight, last grad norm since the last metrics row
        self.extra: dict[str, float] = {}  # the family's metric sums of the last update
        self.last_dev: tuple[float | None, float | None] = (None, None)
        if resume is not None:
            self._restore(resume)
        self.start_step = self.step
        self.metrics = MetricsWriter(self.out_dir, config.tensorboard) if ctx.is_main else None
        if self.metrics is not None and resume is not None:
            self.metrics.truncate_after(self.step)

    # -- set-up -----------------------------------------------------------

    def _setup_amp(self) -> None:
        amp, device = self.config.amp, self.ctx.device
        if amp != "none" and device.type != "cuda":
            self._info("amp=%s is ignored on %s (mixed precision is CUDA only)", amp, device.type)
            amp = "none"
        self.amp_dtype = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[amp]

    def _resume_checkpoint(self) -> dict | None:
        last = self.out_dir / "last.pt"
        if self.ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out_dir)
        if not last.is_file():
            return None
        ckpt = load_checkpoint(last)
        if ckpt.get("family") != self.family.name:
            raise TrainingError(f"{last} holds a {ckpt.get('family')!r} model, not {self.family.name!r}: use another out_dir")
        self._info("resuming from %s (step %d)", last, ckpt["train_state"]["step"])
        return ckpt

    def _init_checkpoint(self) -> dict | None:
        """The ``init_from`` checkpoint of a new run (weights only: optimizer and schedule start afresh)."""
        if not self.config.init_from:
            return None
        ckpt = load_checkpoint(self.config.init_from)
        if ckpt.get("family") != self.family.name:
            raise TrainingError(f"{self.config.init_from} (init_from) holds a {ckpt.get('family')!r} model, "
                                f"not {self.family.name!r}")
        self._info("starting from the weights of %s", self.config.init_from)
        return {k: ckpt.get(k) for k in ("family", "model", "tokenizer", "labels")}

    def _total_steps(self) -> int:
        per_epoch = math.ceil(len(self.data.train_sampler) / max(1, self.config.optim.accum_steps))
        total = per_epoch * self.config.epochs
        return min(total, self.config.max_steps) if self.config.max_steps > 0 else total

    def _restore(self, ckpt: dict) -> None:
        st = ckpt["train_state"]
        load_optimizer_state(self.model, self.optimizer, st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        if st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        self.step, self.epoch, self.bad_steps = int(st["step"]), int(st["epoch"]), int(st["bad_steps"])
        self.batches_done = int(st["batches_done"])
        old_world = int(st.get("world_size", 1))
        if old_world != self.ctx.world_size:
            log.warning("checkpoint was written by %d processes, now %d: the epoch position is approximate",
                        old_world, self.ctx.world_size)
            self.batches_done = self.batches_done * old_world // self.ctx.world_size
        self.best, self.epochs_without_improvement = st["best"], int(st["epochs_without_improvement"])
        self.seconds_before = float(st.get("seconds", 0.0))
        self.epoch_loss = [float(v) for v in st.get("epoch_loss", [0.0, 0.0])]
        self.skipped_batches = int(st.get("skipped_batches", 0))
        ranks = st.get("rng_ranks") or [st["rng"]]
        set_rng_state(ranks[self.ctx.rank] if len(ranks) == self.ctx.world_size else st["rng"])

    def _info(self, msg: str, *args) -> None:
        if self.ctx.is_main:
            log.info(msg, *args)

    # -- the loop -----------------------------------------------------------

    def run(self) -> dict:
        """Train until the epochs, steps, minutes or patience run out; returns the summary."""
        self.t_start = time.monotonic()
        reason = "epochs"
        try:
            for epoch in range(self.epoch, self.config.epochs):
                stop, finished = self._train_epoch(epoch)
                if not finished:  # stopped inside the epoch; last.pt holds the position
                    reason = stop
                    break
                stop = self._end_epoch(epoch) or stop
                if stop:
                    reason = stop
                    break
            self._average_last()
        finally:
            if self.metrics is not None:
                self.metrics.close()
        return self._summary(reason)

    def _train_epoch(self, epoch: int) -> tuple[str | None, bool]:
        """One pass (or the rest of one, when resuming); returns ``(stop reason or None, epoch finished)``."""
        sampler, dataset = self.data.train_sampler, self.data.train_set
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        if self.batches_done:
            sampler.load_state_dict(sampler.state_dict(self.batches_done))
        else:
            self.epoch_loss = [0.0, 0.0]
        total = self.batches_done + len(sampler)
        batches = iter(self.data.loader(dataset, sampler, epoch))
        pending = None
        with self._progress(total, epoch) as bar:
            while self.batches_done < total:
                if self.config.max_steps > 0 and self.step >= self.config.max_steps:
                    return "max_steps", False
                group = list(itertools.islice(batches, self.config.optim.accum_steps))
                if not group:
                    break
                self.batches_done += len(group)
                stepped, time_up = self._train_step(group)
                bar.update(len(group))
                bar.set_postfix(loss=f"{self.interval[0] / max(self.interval[1], 1e-9):.3f}",
                                lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                pending = self._after_step(epoch, stepped, time_up, self.batches_done < total)
                if pending and self.batches_done < total:
                    return pending, False
        return pending, True

    def _progress(self, total: int, epoch: int):
        from tqdm import tqdm

        return tqdm(total=total, initial=self.batches_done, desc=f"epoch {epoch + 1}", unit="batch",
                    disable=not (self.ctx.is_main and self.progress), dynamic_ncols=True, leave=False)

    def _train_step(self, group: list[dict]) -> tuple[bool, bool]:
        """Forward/backward over the micro-batches of one update, then the update.

        Returns ``(an optimizer step was taken, the time budget is spent)`` (same on every rank).
        """
        self.model.train()
        empty = [float(batch_is_empty(b)) for b in group]
        if self.ctx.distributed:  # a batch empty on any rank is skipped by every rank
            empty = all_reduce_sum(empty, self.ctx, op="max")
        kept = [b for b, e in zip(group, empty) if not e]
        self.skipped_batches += len(group) - len(kept)
        loss_sum, weight, bad_ids, extra = 0.0, 0.0, [], {}
        for i, batch in enumerate(kept):
            sync = i == len(kept) - 1 or not self.ctx.distributed
            with contextlib.nullcontext() if sync else no_sync(self.model):
                value, w, metrics = self._forward_backward(move_batch(batch, self.ctx.device))
            if math.isfinite(value):
                loss_sum += value
            else:
                bad_ids.extend(batch["ids"])
            weight += w
            for k, v in metrics.items():
                extra[k] = extra.get(k, 0.0) + float(v)
        budget = self.config.max_minutes * 60
        time_up = budget > 0 and time.monotonic() - self.t_start >= budget
        loss_sum, weight, n_bad, time_up = all_reduce_sum([loss_sum, weight, float(bool(bad_ids)), float(time_up)], self.ctx)
        if not kept or weight <= 0:
            self.optimizer.zero_grad(set_to_none=True)
            return False, time_up > 0
        if n_bad > 0:
            self._bad_step(bad_ids, "non-finite loss")
            return False, time_up > 0
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        scale_gradients(self.model.parameters(), self.ctx.world_size / weight)
        norm = clip_gradients(self.model, self.config.optim.grad_clip)
        if self.ctx.distributed and self.step == self.start_step:
            self._check_synchronised(norm)
        if not math.isfinite(norm) and not self.scaler.is_enabled():
            self._bad_step([i for b in kept for i in b["ids"]], "non-finite gradient")
            return False, time_up > 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.interval = [self.interval[0] + loss_sum, self.interval[1] + weight, norm]
        self.epoch_loss = [self.epoch_loss[0] + loss_sum, self.epoch_loss[1] + weight]
        self.extra = extra
        return True, time_up > 0

    def _check_synchronised(self, norm: float) -> None:
        """Once per run: the reduced gradients must be the same on every rank."""
        high, neg_low = all_reduce_sum([norm, -norm], self.ctx, op="max")
        if math.isfinite(high) and high + neg_low > 1e-4 * max(1.0, high):
            raise TrainingError(
                f"gradient norms differ across ranks ({-neg_low:.6g} .. {high:.6g}): family {self.family.name!r} "
                "must run its forward through model(...) inside loss(), not through submodules"
            )

    def _forward_backward(self, batch: dict) -> tuple[float, float, dict]:
        """One micro-batch: the family's summed loss, backpropagated (scaled under fp16)."""
        with torch.autocast(self.ctx.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            out = self.family.loss(self.model, batch)
        loss = out.loss.float()
        if loss.requires_grad:
            self.scaler.scale(loss).backward()
        return float(loss.detach()), float(out.weight), out.metrics

    def _bad_step(self, bad_ids: list[str], what: str) -> None:
        """Skip this update (gradients dropped), count it, log the utterances; stop past the limit."""
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_steps += 1
        ids = [i for rank_ids in gather_objects(bad_ids, self.ctx) for i in rank_ids]
        shown = ", ".join(ids[:10]) + (f" (+{len(ids) - 10} more)" if len(ids) > 10 else "")
        if self.ctx.is_main:
            log.warning("step %d: %s, update skipped (%d/%d allowed); utterances: %s",
                        self.step + 1, what, self.bad_steps, self.config.max_bad_steps, shown)
        if self.bad_steps > self.config.max_bad_steps:
            raise TrainingError(
                f"stopped: {self.bad_steps} updates had a {what} (max_bad_steps={self.config.max_bad_steps}); "
                f"last at step {self.step + 1}, utterances: {shown}. Check these files and their transcripts, "
                f"or lower optim.lr / set optim.grad_clip."
            )

    def _after_step(self, epoch: int, stepped: bool, time_up: bool, inside_epoch: bool) -> str | None:
        """Metrics row, periodic checkpoint and the stop checks after an update."""
        c = self.config
        if stepped and c.log_every > 0 and self.step % c.log_every == 0:
            self._log_train(epoch)
        reason = None
        if c.max_steps > 0 and self.step >= c.max_steps:
            reason = "max_steps"
        elif time_up:
            reason = "max_minutes"
        if reason and inside_epoch:
            self._info("stopping at step %d (%s); position saved in %s", self.step, reason, self.out_dir / "last.pt")
            self._save(epoch, ["last.pt"])
        elif stepped and c.ckpt_every_steps > 0 and self.step % c.ckpt_every_steps == 0 and inside_epoch:
            self._save(epoch, ["last.pt"])
        return reason

    def _log_train(self, epoch: int) -> None:
        loss_sum, weight, norm = self.interval
        if self.metrics is not None:
            row = {"step": self.step, "epoch": epoch + 1, "split": "train", "loss": loss_sum / max(weight, 1e-12),
                   "lr": self.scheduler.get_last_lr()[0], "grad_norm": norm, "bad_steps": self.bad_steps,
                   "skipped_batches": self.skipped_batches, "seconds": self._seconds()}
            extra = {k: v / max(weight, 1e-12) for k, v in self.extra.items()}
            self.metrics.write(row, extra)
        self.interval = [0.0, 0.0, norm]

    def _end_epoch(self, epoch: int) -> str | None:
        """Dev evaluation, epoch / last / best checkpoints, early stopping."""
        dev_loss, dev_error = evaluate(self.model, self.family, self.data, self.ctx, self.amp_dtype)
        self.last_dev = (dev_loss, dev_error)
        train_loss = self.epoch_loss[0] / self.epoch_loss[1] if self.epoch_loss[1] > 0 else None
        metric = dev_error if self.config.early_stop_metric == "error" and dev_error is not None else dev_loss
        metric = train_loss if metric is None else metric
        improved = metric is not None and (self.best is None or metric < self.best)
        if improved:
            self.best, self.epochs_without_improvement = metric, 0
        else:
            self.epochs_without_improvement += 1
        self.epoch, self.batches_done = epoch + 1, 0
        name = f"epoch-{epoch + 1}.pt"
        self._save(epoch + 1, [name, "last.pt"] + (["best.pt"] if improved else []))
        if self.ctx.is_main:
            prune_epoch_checkpoints(self.out_dir, max(self.config.keep_checkpoints, self.config.average_last))
            self.metrics.write({"step": self.step, "epoch": epoch + 1, "split": "dev", "loss": train_loss,
                                "lr": self.scheduler.get_last_lr()[0], "dev_loss": dev_loss, "dev_error": dev_error,
                                "bad_steps": self.bad_steps, "skipped_batches": self.skipped_batches,
                                "seconds": self._seconds()})
            log.info("epoch %d: step %d, train loss %s, dev loss %s, dev error %s", epoch + 1, self.step,
                     _f(train_loss), _f(dev_loss), _f(dev_error))
        patience = self.config.early_stop_patience
        if patience > 0 and self.epochs_without_improvement >= patience:
            self._info("early stop: %d epochs without improvement of dev %s", patience, self.config.early_stop_metric)
            return "early_stop"
        return None

    # -- checkpoints ----------------------------------------------------------

    def _seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.t_start

    def _payload(self, epoch: int) -> dict:
        """The checkpoint dict (collective under FSDP and for the per-rank RNG states)."""
        d = self.data
        gathered = self.ctx.is_main or is_fsdp(self.model)  # FSDP gathers on every rank; DDP needs rank 0 only
        return {
            "format": FORMAT, "family": self.family.name, "config": to_dict(self.config),
            "model": model_state(self.model) if gathered else {},
            "tokenizer": d.tokenizer.state_dict() if d.tokenizer is not None else None,
            "labels": list(d.labels) if d.labels else None,
            "train_state": {
                "step": self.step, "epoch": epoch, "batches_done": self.batches_done,
                "world_size": self.ctx.world_size,
                "optimizer": optimizer_state(self.model, self.optimizer) if gathered else {},
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state(), "rng_ranks": gather_objects(rng_state(), self.ctx),
                "best": self.best, "bad_steps": self.bad_steps,
                "epochs_without_improvement": self.epochs_without_improvement, "seconds": self._seconds(),
                "epoch_loss": list(self.epoch_loss), "skipped_batches": self.skipped_batches,
            },
        }

    def _save(self, epoch: int, names: list[str]) -> None:
        """Write the checkpoint to ``names[0]`` and copy it to the other names (rank 0 only)."""
        payload = self._payload(epoch)
        if self.ctx.is_main:
            first = self.out_dir / names[0]
            save_checkpoint(payload, first)
            for name in names[1:]:
                copy_checkpoint(first, self.out_dir / name)
        if self.ctx.distributed:
            torch.distributed.barrier()

    def _average_last(self) -> None:
        n = self.config.average_last
        paths = epoch_checkpoints(self.out_dir)[-n:] if n > 0 else []
        if self.ctx.is_main and paths:
            ckpt = load_checkpoint(paths[-1])
            ckpt["model"] = average_checkpoints(paths)
            ckpt["train_state"] = None
            ckpt["averaged"] = [p.name for p in paths]
            save_checkpoint(ckpt, self.out_dir / "avg.pt")
            log.info("averaged %s into %s", ", ".join(p.name for p in paths), self.out_dir / "avg.pt")

    def _summary(self, reason: str) -> dict:
        dev_loss, dev_error = self.last_dev
        return {
            "step": self.step, "epoch": self.epoch, "start_step": self.start_step, "stopped": reason,
            "dev_loss": dev_loss, "dev_error": dev_error, "best": self.best,
            "train_loss": self.epoch_loss[0] / self.epoch_loss[1] if self.epoch_loss[1] > 0 else None,
            "bad_steps": self.bad_steps, "skipped_batches": self.skipped_batches,
            "checkpoint": str(self.out_dir / "last.pt"),
        }


def _check_config(config: TrainConfig) -> None:
    """Reject settings the loop would only trip over later."""
    choices = {"amp": ("none", "fp16", "bf16"), "early_stop_metric": ("loss", "error"), "distributed": ("ddp", "fsdp")}
    for key, allowed in choices.items():
        if getattr(config, key) not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {getattr(config, key)!r}")
    if config.optim.accum_steps < 1:
        raise ConfigError(f"optim.accum_steps must be >= 1, got {config.optim.accum_steps}")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"

