"""Checkpoint files: one atomically written file per checkpoint, loadable with ``weights_only=True``.

A checkpoint is a dict of plain Python values and tensors::

    {"format": 1, "family": "ctc", "config": {...TrainConfig as dicts...},
     "model": state_dict, "tokenizer": tokenizer.state_dict() or None, "labels": [...] or None,
     "train_state": {"step", "epoch", "batches_done", "optimizer", "scheduler", "scaler",
                     "rng", "rng_ranks", "best", "bad_steps", "epochs_without_improvement", "seconds"}}

``train_state["epoch"]`` is the (0-based) epoch to continue in and ``batches_done`` how many
of this rank's batches of that epoch were consumed. Averaged checkpoints (``avg.pt``) carry
no training state.

Example:
    >>> import torch, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> for i in (1, 3):
    ...     save_checkpoint({"format": 1, "model": {"w": torch.full((2,), float(i))}}, os.path.join(d, f"e{i}.pt"))
    >>> average_checkpoints([os.path.join(d, "e1.pt"), os.path.join(d, "e3.pt")])["w"].tolist()
    [2.0, 2.0]
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from asr.config import from_dict
from asr.errors import ToolkitError, UsageError
from asr.models import Family, get_family
from asr.text import Tokenizer, tokenizer_from_state
from asr.trainer_utils import is_fsdp, unwrap
from asr.utils import atomic_open, atomic_save

FORMAT = 1
_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pt$")


class CheckpointError(ToolkitError, RuntimeError):
    """A checkpoint file is missing, unreadable or not in this toolkit's format; names the file."""


# ---------------------------------------------------------------------------
# RNG state (plain values only, so it loads with weights_only=True)
# ---------------------------------------------------------------------------


def rng_state() -> dict:
    """The torch, CUDA, python and numpy RNG states as tensors, lists, ints and floats."""
    version, keys, gauss = random.getstate()
    name, np_keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "python": [version, list(keys), gauss],
        "numpy": [str(name), [int(k) for k in np_keys], int(pos), int(has_gauss), float(cached)],
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in state["cuda"]])
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    name, np_keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(np_keys, dtype=np.uint32), pos, has_gauss, cached))


# ---------------------------------------------------------------------------
# Model / optimizer state (plain, DDP or FSDP)
# ---------------------------------------------------------------------------


def _full_options(offload: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=offload)


def model_state(model: nn.Module) -> dict:
    """A full CPU state dict without wrapper prefixes (gathered on rank 0 under FSDP: a collective)."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=_full_options(True))
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state dict (full and keyed by parameter names under FSDP: a collective)."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=_full_options(True))
    return optimizer.state_dict()


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load :func:`optimizer_state`'s result (every rank holds the full state it read from the file)."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=_full_options(False))
        return
    optimizer.load_state_dict(state)


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def save_checkpoint(payload: dict, path: str | os.PathLike) -> None:
    """Write ``payload`` atomically: readers (and a restarted run) never see half a file."""
    atomic_save(payload, path)


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a checkpoint file atomically (``epoch-3.pt`` -> ``last.pt``)."""
    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``torch.load(..., weights_only=True)``.

    Raises:
        CheckpointError: naming ``path`` when it is missing, unreadable or not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, wrong file...
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "format" not in ckpt:
        raise CheckpointError(f"{path}: not a checkpoint of this toolkit (no 'format'/'model' entries)")
    if ckpt["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {ckpt['format']!r}, this version reads format {FORMAT}")
    return ckpt


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, extra: dict | None = None,
                      transform: Callable[[dict], dict] | None = None) -> int:
    """Copy a checkpoint without its training state (optimizer, RNG, ...), for shipping a model.

    ``extra`` entries (plain values) are added, e.g. a detector's operating point;
    ``transform`` may rewrite the kept checkpoint (e.g. drop a training-only head).
    Float weights stay float32. Returns the size of ``dst`` in bytes.
    """
    ckpt = load_checkpoint(src)
    keep = {k: ckpt[k] for k in ("format", "family", "config", "model", "tokenizer", "labels", "detector") if k in ckpt}
    keep.update(extra or {})
    if transform is not None:
        keep = transform(keep)
    save_checkpoint(keep, dst)
    return Path(dst).stat().st_size


def epoch_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """``out_dir/epoch-<n>.pt`` files, oldest epoch first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if (m := _EPOCH_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_epoch_checkpoints(out_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the last ``keep`` epoch checkpoints (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return
    for p in epoch_checkpoints(out_dir)[:-keep]:
        p.unlink(missing_ok=True)


def remove_stale_temporaries(out_dir: str | os.PathLike) -> None:
    """Remove ``.*.tmp`` files left by a process killed while writing a checkpoint."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        for p in out_dir.glob(".*.pt.*.tmp"):
            p.unlink(missing_ok=True)


def average_checkpoints(paths: Sequence[str | os.PathLike]) -> dict:
    """The element-wise mean of the models of ``paths`` (float tensors; others from the last file).

    Sums are accumulated in float64 and cast back to each tensor's dtype.
    """
    if not paths:
        raise UsageError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    last: dict = {}
    for path in paths:
        last = load_checkpoint(path)["model"]
        if total and set(last) != set(total):
            raise CheckpointError(f"{path}: its model has different parameters from {paths[0]}")
        for k, v in last.items():
            if v.is_floating_point():
                total[k] = total[k] + v.double() if k in total else v.double()
            else:
                total.setdefault(k, v)
    return {k: (total[k] / len(paths)).to(v.dtype) if v.is_floating_point() else v for k, v in last.items()}


# ---------------------------------------------------------------------------
# Rebuilding a model
# ---------------------------------------------------------------------------


def config_from_checkpoint(ckpt: dict):
    """The :class:`asr.train.TrainConfig` stored in a checkpoint."""
    from asr.train_config import TrainConfig

    data = {k: v for k, v in ckpt["config"].items()}
    section = dict(data.get("data", {}))
    labels = section.pop("labels", [])  # kept as strings (from_dict turns "1" into 1.0)
    data["data"] = section
    config = from_dict(TrainConfig, data, source="checkpoint config")
    config.data.labels = list(labels)
    return config


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, Family, Tokenizer | list[str], object]:
    """Rebuild a trained model from a checkpoint through the family registry.

    Returns ``(model in eval mode on device, family, tokenizer or class labels, TrainConfig)``.

    Raises:
        CheckpointError: when the file is missing or corrupt, or its weights do not fit the model.
    """
    ckpt = load_checkpoint(path)
    config = config_from_checkpoint(ckpt)
    family = get_family(ckpt["family"])
    if ckpt.get("labels"):
        targets: Tokenizer | list[str] = list(ckpt["labels"])
        num_outputs = len(targets)
    elif ckpt.get("tokenizer"):
        targets = tokenizer_from_state(ckpt["tokenizer"])
        num_outputs = targets.vocab_size
    else:
        raise CheckpointError(f"{path}: holds neither a tokenizer nor class labels")
    model = family.build(config.model, num_outputs)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit a {family.name!r} model built from its config ({e})") from None
    return model.to(device).eval(), family, targets, config
