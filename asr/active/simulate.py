"""An active-learning simulation: seed model -> rounds of select, label, fine-tune, evaluate.

For each seed: a random labeled seed set and a disjoint unlabeled pool are drawn from a
transcribed corpus (the transcripts of the pool play the human labeler), a seed model is
trained on the seed set, then for each strategy, ``rounds`` times: ``asr select`` picks
``budget`` utterances from what is left of the pool with the current model, they join the
labeled set, the current model is fine-tuned on the whole labeled set (``init_from``: its
weights, a fresh optimizer and schedule), and greedy WER/CER on the test manifest are recorded.
Every strategy starts from the same seed model and draws from the same pool for a given seed.

Writes ``out_dir/results.csv`` (strategy, seed, round, labeled utterances and hours, WER, CER)
and ``out_dir/wer.png`` (WER against labeled hours, every strategy on one plot, mean and
standard deviation over the seeds as error bars; CER beside it). Each evaluated round is cached in its
run folder (``result.json``), so a killed simulation started again goes on where it stopped.

    python -m asr.active.simulate --config recipes/active_learning/conf/default.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from asr.active.select import SelectOptions, run_selection
from asr.config import dump_config, load_config
from asr.data.manifest import read_manifest, write_manifest
from asr.errors import ToolkitError, UsageError
from asr.train_config import TrainConfig
from asr.utils import atomic_open, setup_logging

log = logging.getLogger("asr.active")


@dataclass
class SimConfig:
    corpus: str = "data/synthetic/manifests/asr/train.jsonl"  # transcribed utterances the seed set and the pool come from
    test: str = "data/synthetic/manifests/asr/test.jsonl"  # evaluation manifest (greedy WER/CER)
    test_items: int = 0  # evaluate on the first N test utterances (0 = all)
    seed_items: int = 200  # utterances of the labeled seed set
    pool_items: int = 600  # utterances of the unlabeled pool (disjoint from the seed set)
    rounds: int = 4  # select -> label -> fine-tune -> evaluate rounds per strategy
    budget: str | float = "100"  # selected per round: utterances (100) or hours ("0.05h")
    strategies: list[str] = field(default_factory=lambda: ["random", "confidence", "egl"])  # compared strategies
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # one seed set, pool and seed model per seed
    nbest: int = 4  # N-best size for entropy and EGL
    egl_params: list[str] = field(default_factory=list)  # EGL parameter-name prefixes (empty = all parameters)
    select_batch_size: int = 8  # utterances scored together
    finetune_epochs: int = 6  # epochs of each round's fine-tuning on the labeled set
    finetune_lr: float = 1e-3  # peak learning rate of the fine-tuning
    finetune_warmup_steps: int = 20  # warm-up steps of the fine-tuning
    out_dir: str = "exp/active_learning"  # runs, results.csv, wer.png
    threads: int = 1  # torch threads for selection and evaluation (training uses train.threads)
    train: TrainConfig = field(default_factory=TrainConfig)  # the seed model's training (data.train, out_dir, seed are set here)


def _split(cfg: SimConfig, seed: int) -> tuple[list[dict], list[dict]]:
    items = read_manifest(cfg.corpus, needs_text=True)
    if cfg.seed_items + cfg.pool_items > len(items):
        raise UsageError(f"{cfg.corpus}: {len(items)} utterances, fewer than seed_items + pool_items "
                         f"({cfg.seed_items} + {cfg.pool_items})")
    random.Random(seed).shuffle(items)
    return items[: cfg.seed_items], items[cfg.seed_items : cfg.seed_items + cfg.pool_items]


def _train(cfg: SimConfig, seed: int, labeled: Path, out_dir: Path, init_from: str = "") -> str:
    t = cfg.train
    run = replace(t, data=replace(t.data, train=str(labeled), dev=""), out_dir=str(out_dir), seed=seed,
                  init_from=init_from, average_last=0)
    if init_from:
        run = replace(run, epochs=cfg.finetune_epochs, max_steps=0,
                      optim=replace(t.optim, lr=cfg.finetune_lr, warmup_steps=cfg.finetune_warmup_steps))
    from asr.train import train

    train(run)
    for path in [*out_dir.glob("epoch-*.pt"), out_dir / "best.pt"]:  # only last.pt is used again
        path.unlink(missing_ok=True)
    return str(out_dir / "last.pt")


def evaluate_model(ckpt: str, items: list[dict]) -> tuple[float, float]:
    """Greedy ``(WER, CER)`` of a checkpoint on manifest items."""
    from asr.checkpoint import load_model
    from asr.decode import transcribe_items
    from asr.evaluate import error_rates
    from asr.text import normalize_text

    model, family, tokenizer, _ = load_model(ckpt)
    hyps = transcribe_items(model, family, tokenizer, items, batch_size=16, progress=False)
    rates = error_rates([normalize_text(it["text"]) for it in items], hyps)
    return float(rates["wer"]), float(rates["cer"])


def _result(run_dir: Path, compute) -> dict:
    path = run_dir / "result.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    with atomic_open(path, "w") as f:
        json.dump(result, f)
    return result


def _hours(items: list[dict]) -> float:
    return sum(float(it.get("duration", 0.0)) for it in items) / 3600


def simulate(cfg: SimConfig) -> list[dict]:
    """Run (or resume) the simulation; returns the result rows and writes the CSV and the plot."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    test = read_manifest(cfg.test, needs_text=True)
    test = test[: cfg.test_items] if cfg.test_items > 0 else test
    rows: list[dict] = []
    for seed in cfg.seeds:
        seed_items, pool = _split(cfg, seed)
        sdir = out / f"seed-{seed}"
        write_manifest(sdir / "seed.jsonl", seed_items)
        seed_ckpt = str(sdir / "round-0" / "last.pt")

        def train_seed() -> dict:
            t0 = time.monotonic()
            _train(cfg, seed, sdir / "seed.jsonl", sdir / "round-0")
            wer, cer = evaluate_model(seed_ckpt, test)
            return {"wer": wer, "cer": cer, "seconds": time.monotonic() - t0}

        base = _result(sdir / "round-0", train_seed)
        for strategy in cfg.strategies:
            rows.append(_row(strategy, seed, 0, seed_items, base))
            labeled, left, ckpt = list(seed_items), list(pool), seed_ckpt
            for r in range(1, cfg.rounds + 1):
                rdir = sdir / strategy / f"round-{r}"
                rdir.mkdir(parents=True, exist_ok=True)
                if not (rdir / "selected.jsonl").is_file():
                    write_manifest(rdir / "pool.jsonl", left)
                    run_selection(SelectOptions(
                        pool=str(rdir / "pool.jsonl"), budget=str(cfg.budget), out=str(rdir / "selected.jsonl"),
                        strategy=strategy, model=ckpt, nbest=cfg.nbest, batch_size=cfg.select_batch_size,
                        seed=seed * 1000 + r, params=list(cfg.egl_params), progress=False, device="cpu"))
                picked = {it["id"] for it in read_manifest(rdir / "selected.jsonl")}
                labeled += [it for it in left if it["id"] in picked]
                left = [it for it in left if it["id"] not in picked]
                write_manifest(rdir / "labeled.jsonl", labeled)
                prev = ckpt

                def finetune() -> dict:
                    t0 = time.monotonic()
                    _train(cfg, seed, rdir / "labeled.jsonl", rdir / "train", init_from=prev)
                    wer, cer = evaluate_model(str(rdir / "train" / "last.pt"), test)
                    return {"wer": wer, "cer": cer, "seconds": time.monotonic() - t0}

                rows.append(_row(strategy, seed, r, labeled, _result(rdir, finetune)))
                ckpt = str(rdir / "train" / "last.pt")
            log.info("seed %d, %s: WER %s", seed, strategy,
                     " -> ".join(f"{row['wer']:.3f}" for row in rows if row["strategy"] == strategy and row["seed"] == seed))
    write_csv(rows, out / "results.csv")
    plot(rows, out / "wer.png")
    return rows


def _row(strategy: str, seed: int, rnd: int, labeled: list[dict], result: dict) -> dict:
    return {"strategy": strategy, "seed": seed, "round": rnd, "labeled_utts": len(labeled),
            "labeled_hours": round(_hours(labeled), 5), "wer": result["wer"], "cer": result["cer"]}


def write_csv(rows: list[dict], path: Path) -> None:
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["strategy"])
        writer.writeheader()
        writer.writerows(rows)


def summarize(rows: list[dict], metric: str = "wer") -> dict[str, list[tuple[float, float, float]]]:
    """Per strategy and round: (mean labeled hours, mean ``metric``, its standard deviation over seeds)."""
    out: dict[str, list[tuple[float, float, float]]] = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        points = []
        for rnd in sorted({r["round"] for r in rows if r["strategy"] == strategy}):
            sel = [r for r in rows if r["strategy"] == strategy and r["round"] == rnd]
            hours = torch.tensor([r["labeled_hours"] for r in sel], dtype=torch.float64)
            values = torch.tensor([r[metric] for r in sel], dtype=torch.float64)
            std = float(values.std(unbiased=True)) if len(sel) > 1 else 0.0
            points.append((float(hours.mean()), float(values.mean()), std))
        out[strategy] = points
    return out


def plot(rows: list[dict], path: Path) -> None:
    """Test WER (left) and CER (right), in %, against labeled hours: one line per strategy,
    error bars = standard deviation over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = len({r["seed"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("wer", "cer")):
        for strategy, points in summarize(rows, metric).items():
            x, y, e = zip(*points)
            ax.errorbar(x, [100 * v for v in y], yerr=[100 * v for v in e], marker="o", capsize=3, label=strategy)
        ax.set_xlabel("labeled hours")
        ax.set_ylabel(f"test {metric.upper()} (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"active learning: mean ± std over {seeds} seed{'s' if seeds != 1 else ''}")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m asr.active.simulate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="YAML config (see recipes/active_learning/conf)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys for sections)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        cfg = load_config(SimConfig, args.config, args.overrides)
        rows = simulate(cfg)
    except ToolkitError as e:
        print(f"asr.active.simulate: error: {e}", file=sys.stderr)
        return 2
    for strategy, points in summarize(rows).items():  # WER (%) per round: labeled hours, mean ± std
        print(strategy + "\t" + "  ".join(f"{h:.3f}h {100 * w:.1f}±{100 * s:.1f}" for h, w, s in points))
    print(f"results\t{Path(cfg.out_dir) / 'results.csv'}")
    print(f"plot\t{Path(cfg.out_dir) / 'wer.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
