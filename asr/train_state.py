"""Training state in checkpoints: RNG states, full model/optimizer states (plain, DDP, FSDP) and
the per-epoch checkpoint files of a run folder. Used by the training loop only; inference
loads models through :mod:`asr.checkpoint`, which imports none of this.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from asr.trainer_utils import is_fsdp, unwrap
from asr.utils import atomic_open

_EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pt$")


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
# Files of a run folder
# ---------------------------------------------------------------------------


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a checkpoint file atomically (``epoch-3.pt`` -> ``last.pt``)."""
    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


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
