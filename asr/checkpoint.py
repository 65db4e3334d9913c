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
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from asr.config import from_dict
from asr.errors import ToolkitError, UsageError
from asr.models import Family, all_families, get_family
from asr.text import Tokenizer, tokenizer_from_state
from asr.utils import atomic_save

FORMAT = 1


class CheckpointError(ToolkitError, RuntimeError):
    """A checkpoint file is missing, unreadable or not in this toolkit's format; names the file."""


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def save_checkpoint(payload: dict, path: str | os.PathLike) -> None:
    """Write ``payload`` atomically: readers (and a restarted run) never see half a file."""
    atomic_save(payload, path)


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


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", purpose: str = "",
               recognizer: bool | None = None, families: Sequence[str] | None = None,
               ) -> tuple[nn.Module, Family, Tokenizer | list[str], object]:
    """Rebuild a trained model from a checkpoint through the family registry.

    ``purpose`` (e.g. ``"asr transcribe"``) and what it needs: ``recognizer=True`` a speech
    recognizer (a family with token targets), ``False`` a classifier; ``families`` a list of
    family names. A checkpoint of another family raises :class:`CheckpointError` naming the
    file, the family it holds and the one the purpose needs.

    Returns ``(model in eval mode on device, family, tokenizer or class labels, TrainConfig)``.

    Raises:
        CheckpointError: when the file is missing or corrupt, of the wrong family, or its weights
            do not fit the model.
    """
    ckpt = load_checkpoint(path)
    try:
        family = get_family(str(ckpt.get("family")))
    except ToolkitError as e:
        raise CheckpointError(f"{path}: {e}") from None
    wanted = list(families) if families else None
    if recognizer is not None and wanted is None:
        wanted = sorted(f.name for f in all_families() if f.recognizer == recognizer)
    if wanted is not None and family.name not in wanted:
        kind = "a speech recognizer" if family.recognizer else "a classifier (keyword spotter)"
        raise CheckpointError(f"{path}: holds {kind} of the {family.name!r} family; {purpose or 'this'} needs a "
                              f"{' or '.join(repr(w) for w in wanted)} model")
    try:
        config = config_from_checkpoint(ckpt)
        if ckpt.get("labels"):
            targets: Tokenizer | list[str] = [str(label) for label in ckpt["labels"]]
            num_outputs = len(targets)
        elif ckpt.get("tokenizer"):
            targets = tokenizer_from_state(ckpt["tokenizer"])
            num_outputs = targets.vocab_size
        else:
            raise CheckpointError(f"{path}: holds neither a tokenizer nor class labels")
        model = family.build(config.model, num_outputs)
    except CheckpointError:
        raise
    except (ToolkitError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the {family.name!r} model it holds ({type(e).__name__}: {e})"
                              ) from None
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: weights do not fit a {family.name!r} model built from its config ({e})") from None
    return model.to(device).eval(), family, targets, config
