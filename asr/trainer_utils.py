"""Helpers of the training loop: distributed set-up, optimizer and LR schedules, metrics.

Everything here is a small pure function or a thin class; the loop itself lives in
:mod:`asr.train`, checkpoint files in :mod:`asr.checkpoint`.

Example:
    >>> lr_factor("warmup_cosine", step=4, warmup=10, total=110, min_ratio=0.1)
    0.5
    >>> round(lr_factor("warmup_cosine", step=110, warmup=10, total=110, min_ratio=0.1), 6)
    0.1
    >>> lr_factor("noam", step=39, warmup=10, total=0, min_ratio=0.0)
    0.5
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import logging
import math
import os
import random
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from asr.config import ConfigError
from asr.errors import UsageError

log = logging.getLogger("asr.train")

SCHEDULES = ("noam", "warmup_cosine", "warmup_linear", "constant")
OPTIMIZERS = ("adamw", "adam", "sgd")


# ---------------------------------------------------------------------------
# Distributed context
# ---------------------------------------------------------------------------


@dataclass
class DistContext:
    """Where this process runs: rank, world size and device."""

    rank: int = 0  # global rank
    world_size: int = 1  # number of processes
    local_rank: int = 0  # rank on this machine (selects the GPU)
    device: torch.device = torch.device("cpu")  # device of the model and batches
    owns_group: bool = False  # True when train() created the process group (and must destroy it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    """True when started by ``torchrun`` (or anything that sets RANK/WORLD_SIZE/LOCAL_RANK)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` -> a device (``cuda:<local_rank>`` on GPU machines)."""
    if preference not in ("auto", "cpu", "cuda"):
        raise UsageError(f"device must be auto, cpu or cuda, got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise UsageError("device=cuda was asked for but CUDA is not available")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def setup_distributed(device_preference: str) -> DistContext:
    """Initialise the process group when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        device = resolve_device(device_preference, local_rank)
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=False)
    if not launched_distributed() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistContext(device=resolve_device(device_preference))
    local_rank = int(os.environ["LOCAL_RANK"])
    device = resolve_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, owns_group=True)


def cleanup_distributed(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], ctx: DistContext, op: str = "sum") -> list[float]:
    """Sum (or max) a few numbers over ranks in one collective; identity on one process."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def gather_objects(obj, ctx: DistContext) -> list:
    """Every rank's ``obj`` (in rank order) on every rank."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


class DDPWithAttributes(nn.parallel.DistributedDataParallel):
    """DDP whose unknown attributes (``frontend``, ``encoder``...) come from the wrapped model.

    Only a call of the wrapper itself (``model(...)``) synchronises gradients: a family's
    ``loss`` must run its forward through ``model(...)``.
    """

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


def wrap_model(model: nn.Module, ctx: DistContext, kind: str) -> nn.Module:
    """Wrap for data parallelism: ``ddp`` (DistributedDataParallel) or ``fsdp``; identity on one process.

    ``fsdp`` shards the parameters with ``torch.distributed.fsdp.fully_shard`` (FSDP2, which also
    runs on CPU with gloo): every child module holding parameters, then the root. Rank 0's weights
    and buffers are broadcast first, as DDP does.
    """
    if not ctx.distributed:
        return model
    if kind == "ddp":
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DDPWithAttributes(model, device_ids=ids)
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        with torch.no_grad():
            for t in itertools.chain(model.parameters(), model.buffers()):
                dist.broadcast(t, src=0)
        for child in model.children():
            if any(p.requires_grad for p in child.parameters()):
                fully_shard(child)
        return fully_shard(model)
    raise ConfigError(f"distributed must be ddp or fsdp, got {kind!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper (FSDP models stay as they are: their weights are sharded)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def no_sync(model: nn.Module) -> Iterator[None]:
    """Accumulate gradients locally, without the data-parallel reduction (DDP or FSDP)."""
    if is_fsdp(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    elif isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield


# ---------------------------------------------------------------------------
# Seeding
# ---------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------
# Optimizer and learning-rate schedules
# ---------------------------------------------------------------------------


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                    betas: Iterable[float], momentum: float = 0.9) -> torch.optim.Optimizer:
    """Optimizer over the trainable parameters; biases and norm gains (1-D) get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    betas = tuple(float(b) for b in betas)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    raise ConfigError(f"unknown optimizer {name!r} (one of {', '.join(OPTIMIZERS)})")


def lr_factor(schedule: str, step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate after ``step`` optimizer steps.

    ``noam``: linear warm-up, then ``sqrt(warmup / step)`` (peak at ``warmup``);
    ``warmup_cosine`` / ``warmup_linear``: warm-up, then decay to ``min_ratio`` at ``total``;
    ``constant``: warm-up, then 1. Decays never go below ``min_ratio``.
    """
    s = step + 1
    if warmup > 0 and s <= warmup:
        return s / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "noam":
        return max(min_ratio, math.sqrt(max(warmup, 1) / s))
    if schedule in ("warmup_cosine", "warmup_linear"):
        span = max(1, total - warmup)
        progress = min(1.0, max(0.0, (s - warmup) / span))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "warmup_cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * shape
    raise ConfigError(f"unknown schedule {schedule!r} (one of {', '.join(SCHEDULES)})")


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup: int, total: int,
                    min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over :func:`lr_factor` (its state dict holds plain numbers only)."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r} (one of {', '.join(SCHEDULES)})")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(schedule, step, warmup, total, min_ratio)
    )


def scale_gradients(params: Iterable[torch.Tensor], factor: float) -> None:
    for p in params:
        if p.grad is not None:
            p.grad.mul_(factor)


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Clip to ``max_norm`` (0 = no clipping) and return the total gradient norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
        norm = norm.full_tensor()
    return float(norm)


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------


def move_batch(batch: dict, device: torch.device) -> dict:
    """Tensors of a collated batch moved to ``device`` (other values kept as they are)."""
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def batch_is_empty(batch: dict) -> bool:
    """A batch whose every file was unreadable (see :func:`asr.data.dataset.collate_batch`)."""
    return "wav" not in batch or len(batch["ids"]) == 0


# ---------------------------------------------------------------------------
# Metrics: CSV + TensorBoard
# ---------------------------------------------------------------------------

METRIC_COLUMNS = ("step", "epoch", "split", "loss", "lr", "grad_norm", "dev_loss", "dev_error",
                  "bad_steps", "skipped_batches", "seconds")


class MetricsWriter:
    """Appends rows to ``out_dir/metrics.csv`` and, when enabled and installed, TensorBoard scalars.

    Only created on rank 0. Rows carry the columns of :data:`METRIC_COLUMNS` (blank when unknown).
    """

    def __init__(self, out_dir: Path, tensorboard: bool):
        self.path = Path(out_dir) / "metrics.csv"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except ImportError:
                log.info("tensorboard is not installed: metrics go to %s only", self.path)

    def truncate_after(self, step: int) -> None:
        """Drop rows past ``step``: those a killed run wrote after the checkpoint it is resumed from."""
        if not self.path.exists():
            return
        rows = read_metrics(self.path.parent)
        kept = [r for r in rows if not r.get("step", "").isdigit() or int(r["step"]) <= step]
        if len(kept) < len(rows):
            from asr.utils import atomic_open

            with atomic_open(self.path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
                w.writeheader()
                w.writerows(kept)

    def write(self, row: dict, extra: dict | None = None) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
        if self.tb is not None:
            split = row.get("split", "train")
            for k, v in {**row, **(extra or {})}.items():
                if k not in ("step", "epoch", "split") and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{split}/{k}", v, row["step"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def read_metrics(out_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``out_dir/metrics.csv`` as dicts of strings."""
    with open(Path(out_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))
