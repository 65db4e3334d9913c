"""The selection job behind ``asr select``: score a pool, resumably and across processes, then select.

The pool manifest is cut into fixed shards of ``shard_size`` utterances in manifest order. A
process scores its shards (shard ``i`` goes to rank ``i % world_size``) batch by batch, and
writes each finished shard atomically to ``work_dir/<run tag>/shard-NNNNN.pt`` (ids, durations,
scores, and the embeddings k-center needs). A shard file that is there and holds the shard's
ids is not scored again, so a job killed at any point and started again with the same command
only scores what is missing; the run tag is a hash of everything the scores depend on (model
file content, strategy, N-best size, seed, EGL parameters), so changing any of them starts
afresh in another folder. Shards do not depend on the number of processes, so a job may be
resumed with a different one, nor on the selection options (budget, ``normalize``, diversity,
speaker cap): jobs that differ only in those share a work folder's scores. With a model, a shard
also keeps each utterance's mean-pooled encoder output (what k-center needs).

``normalize="duration"`` divides each score by the utterance's duration before selecting: a
score per second of audio, what a transcription budget in hours pays for (``auto`` does so when
the budget is in hours).

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set; gloo on CPU, nccl on GPU) or inside an
initialised ``torch.distributed`` group every rank scores its shards; after a barrier rank 0
merges them, selects (see :mod:`asr.active.selection`) and writes the selected manifest and the
scores file (TSV: ``id, duration, score, selected``, every pool item), both atomically.

Example (what ``asr select`` runs)::

    summary = run_selection(SelectOptions(model="exp/ctc/best.pt", pool="pool.jsonl", budget="2h",
                                          strategy="egl", out="selected.jsonl"))
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from asr.active.selection import parse_budget, select
from asr.active.strategies import STRATEGIES, make_scorer
from asr.data.dataset import AudioDataset, collate_batch
from asr.data.manifest import read_manifest, write_manifest
from asr.errors import MissingFileError, UsageError
from asr.trainer_utils import cleanup_distributed, setup_distributed
from asr.utils import atomic_open, atomic_save

log = logging.getLogger("asr.active")


@dataclass
class SelectOptions:
    """The flags of ``asr select``."""

    pool: str  # manifest of unlabeled utterances (id, audio, duration; speaker optional)
    budget: str  # utterances ("500") or hours ("2.5h")
    out: str  # the selected manifest to write
    strategy: str = "egl"  # random | confidence | entropy | egl
    model: str = ""  # checkpoint (needed by every strategy but random, and by kcenter)
    nbest: int = 4  # hypotheses per utterance (beam size) for entropy and EGL
    batch_size: int = 8  # utterances scored together
    scores: str = ""  # scores file (default: <out without suffix>.scores.tsv)
    work_dir: str = ""  # shard cache (default: <out without suffix>.work)
    seed: int = 0  # seed of the random strategy
    max_per_speaker: int = 0  # at most this many utterances per speaker (0 = no cap)
    diversity: str = "none"  # none | kcenter (on mean-pooled encoder outputs)
    candidates: float = 3.0  # kcenter: candidate set = this many budgets of the best-scored utterances
    params: list[str] = field(default_factory=list)  # EGL: parameter-name prefixes ("output" = the output layer; empty = all)
    normalize: str = "none"  # none | duration (score per second of audio) | auto (duration when the budget is in hours)
    shard_size: int = 64  # utterances per cached shard
    max_shards: int = 0  # stop after scoring this many shards in this process (0 = all); run again to go on
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True  # progress bar


def _paths(opts: SelectOptions) -> tuple[Path, Path]:
    out = Path(opts.out)
    stem = out.with_suffix("") if out.suffix else out
    scores = Path(opts.scores) if opts.scores else stem.parent / f"{stem.name}.scores.tsv"
    work = Path(opts.work_dir) if opts.work_dir else stem.parent / f"{stem.name}.work"
    return scores, work


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run_tag(opts: SelectOptions, needs_model: bool) -> str:
    key = {"strategy": opts.strategy, "model": _file_digest(Path(opts.model)) if needs_model else "",
           "nbest": opts.nbest, "seed": opts.seed if opts.strategy == "random" else 0,
           "params": sorted(opts.params) if opts.strategy == "egl" else [],
           "embeddings": needs_model, "shard_size": opts.shard_size}
    return f"{opts.strategy}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]}"


def _check(opts: SelectOptions) -> None:
    if opts.strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {opts.strategy!r} (one of {', '.join(STRATEGIES)})")
    if opts.diversity not in ("none", "kcenter"):
        raise UsageError(f"diversity must be none or kcenter, got {opts.diversity!r}")
    if opts.normalize not in ("none", "duration", "auto"):
        raise UsageError(f"normalize must be none, duration or auto, got {opts.normalize!r}")
    for name in ("batch_size", "shard_size", "nbest"):
        if getattr(opts, name) < 1:
            raise UsageError(f"{name} must be >= 1, got {getattr(opts, name)}")
    if opts.model and not Path(opts.model).is_file():
        raise MissingFileError(f"{opts.model}: model checkpoint not found")


@torch.no_grad()
def _embeddings(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Mean of the encoder output over each utterance's valid frames: ``(B, D)``."""
    enc, lengths = model.encode(batch["wav"], batch["wav_lengths"])
    mask = (torch.arange(enc.shape[1], device=enc.device) < lengths.unsqueeze(1)).unsqueeze(-1)
    return ((enc * mask).sum(1) / lengths.clamp(min=1).unsqueeze(1)).float().cpu()


def _score_shard(items: list[dict], scorer, model, opts: SelectOptions, sample_rate: int, device, bar) -> dict:
    order = sorted(range(len(items)), key=lambda i: float(items[i].get("duration", 0.0)))
    dataset = AudioDataset([items[i] for i in order], sample_rate=sample_rate)
    scores: dict[str, float] = {}
    embs: dict[str, torch.Tensor] = {}
    for start in range(0, len(order), opts.batch_size):
        batch = collate_batch([dataset[j] for j in range(start, min(len(order), start + opts.batch_size))])
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for uid, s in zip(batch["ids"], scorer(batch)):
            scores[uid] = float(s)
        if model is not None:
            for uid, e in zip(batch["ids"], _embeddings(model, batch)):
                embs[uid] = e
        bar.update(len(batch["ids"]))
    ids = [it["id"] for it in items]
    return {"ids": ids, "scores": [scores[i] for i in ids],
            "embeddings": torch.stack([embs[i] for i in ids]) if embs else None}


def _load_shard(path: Path, ids: list[str]) -> dict | None:
    """A finished shard's content, or ``None`` when missing, unreadable or for other ids."""
    if not path.is_file():
        return None
    try:
        shard = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a file from elsewhere; ours are written atomically
        log.warning("%s: unreadable shard, scoring it again (%s)", path, e)
        return None
    return shard if shard.get("ids") == ids else None


def run_selection(opts: SelectOptions) -> dict:
    """Score the pool (this rank's shards), then on rank 0 select and write the outputs.

    Returns a summary: ``shards`` (total), ``scored`` (shards scored by this process now),
    ``complete`` (every shard done; False after ``max_shards``), and on rank 0 when complete
    ``selected``, ``selected_hours``, ``out``, ``scores``.
    """
    _check(opts)
    budget = parse_budget(opts.budget)
    pool = read_manifest(opts.pool, check_audio=True)
    if not pool:
        raise UsageError(f"{opts.pool}: the pool manifest is empty")
    scores_path, work = _paths(opts)
    needs_model = opts.strategy != "random" or opts.diversity == "kcenter"
    if needs_model and not opts.model:
        raise UsageError(f"strategy {opts.strategy!r}" + (" with kcenter" if opts.strategy == "random" else "")
                         + " needs --model")
    ctx = setup_distributed(opts.device)
    try:
        return _run(opts, budget, pool, scores_path, work, needs_model, ctx)
    finally:
        cleanup_distributed(ctx)


def _run(opts, budget, pool, scores_path, work, needs_model, ctx) -> dict:
    model, family, sample_rate = None, None, 16000
    if needs_model:
        from asr.checkpoint import load_model

        model, family, _, _ = load_model(opts.model, ctx.device, purpose="asr select", recognizer=True)
        sample_rate = model.frontend.features.config.sample_rate
    scorer = make_scorer(opts.strategy, model, family, opts.nbest, opts.seed, opts.params or None)
    shard_dir = work / _run_tag(opts, needs_model)
    shards = [pool[i : i + opts.shard_size] for i in range(0, len(pool), opts.shard_size)]
    paths = [shard_dir / f"shard-{i:05d}.pt" for i in range(len(shards))]
    mine = [i for i in range(len(shards)) if i % ctx.world_size == ctx.rank]
    todo = [i for i in mine if _load_shard(paths[i], [it["id"] for it in shards[i]]) is None]
    if ctx.is_main:
        shard_dir.mkdir(parents=True, exist_ok=True)
        with atomic_open(shard_dir / "options.json", "w") as f:
            json.dump(asdict(opts), f, indent=1)
    if len(todo) < len(mine):
        log.info("rank %d: %d of its %d shards already scored in %s", ctx.rank, len(mine) - len(todo), len(mine), shard_dir)
    if opts.max_shards > 0:
        todo = todo[: opts.max_shards]
    done_items = sum(len(shards[i]) for i in mine) - sum(len(shards[i]) for i in todo)
    desc = f"{opts.strategy} scores" + (f" (rank {ctx.rank})" if ctx.distributed else "")
    with tqdm(total=sum(len(shards[i]) for i in mine), initial=done_items, desc=desc, unit="utt",
              disable=not opts.progress, dynamic_ncols=True) as bar:
        for i in todo:
            shard = _score_shard(shards[i], scorer, model, opts, sample_rate, ctx.device, bar)
            shard["durations"] = [float(it.get("duration", 0.0)) for it in shards[i]]
            atomic_save(shard, paths[i])
    if ctx.distributed:
        torch.distributed.barrier()
    summary = {"shards": len(shards), "scored": len(todo), "work_dir": str(shard_dir)}
    if not ctx.is_main:
        return summary
    loaded = [_load_shard(p, [it["id"] for it in s]) for p, s in zip(paths, shards)]
    summary["complete"] = all(s is not None for s in loaded)
    if not summary["complete"]:
        missing = sum(s is None for s in loaded)
        log.info("%d of %d shards still to score: run the same command again to go on", missing, len(shards))
        return summary
    items = [dict(it, score=s) for shard, sh in zip(shards, loaded) for it, s in zip(shard, sh["scores"])]
    if opts.normalize == "duration" or (opts.normalize == "auto" and budget.unit == "hours"):
        for it in items:  # per second of audio (an utterance without a duration keeps its score)
            if it.get("duration"):
                it["score"] /= max(float(it["duration"]), 1e-3)
    emb = torch.cat([sh["embeddings"] for sh in loaded]) if opts.diversity == "kcenter" else None
    chosen = select(items, budget, opts.max_per_speaker, opts.diversity, emb, opts.candidates)
    _write_outputs(pool, items, chosen, Path(opts.out), scores_path)
    hours = sum(float(it.get("duration", 0.0)) for it in chosen) / 3600
    log.info("selected %d of %d utterances (%.3f h) -> %s; scores -> %s", len(chosen), len(pool), hours,
             opts.out, scores_path)
    summary.update(selected=len(chosen), selected_hours=hours, out=str(opts.out), scores=str(scores_path))
    return summary


def _write_outputs(pool: list[dict], items: list[dict], chosen: list[dict], out: Path, scores_path: Path) -> None:
    picked = {it["id"] for it in chosen}
    write_manifest(out, [it for it in pool if it["id"] in picked])  # pool order, without the score
    with atomic_open(scores_path, "w", encoding="utf-8") as f:
        f.write("id\tduration\tscore\tselected\n")
        for it in items:
            score = it["score"]
            text = repr(score) if math.isfinite(score) else str(score)
            f.write(f"{it['id']}\t{float(it.get('duration', 0.0)):.3f}\t{text}\t{int(it['id'] in picked)}\n")


def read_scores(path: str | Path) -> list[dict]:
    """The rows of a scores file: ``id``, ``duration``, ``score`` (float), ``selected`` (bool)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            row = dict(zip(header, line.rstrip("\n").split("\t")))
            rows.append({"id": row["id"], "duration": float(row["duration"]), "score": float(row["score"]),
                         "selected": row["selected"] == "1"})
    return rows
