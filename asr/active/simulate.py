"""An active-learning experiment: a useful seed model, a pool with something to find, strategies
compared at equal budgets over several seeds.

The data (:mod:`asr.active.conditions`): a seed set of clean utterances of some voices; a pool
and a test set that mix that condition (``seen``) with shifted ones the seed model never heard
(``noisy`` at 0-10 dB SNR, ``fast``/``slow`` speech, unheard ``voices``). The seed model is
trained once on the seed set (or given as ``seed_model``). For each simulation seed a pool is
drawn, and for each strategy, ``rounds`` times: ``asr select`` picks ``budget`` (utterances, or
hours such as ``"0.04h"``) from what is left of the pool with the current model; the transcripts
of the picks join the labeled set (the pool's transcripts play the human labeler); the current
model is fine-tuned on the new picks plus as many utterances again drawn from what was labeled
before (the seed set and earlier picks: ``replay``, so that it does not forget), which keeps the
cost of a round constant (``finetune_from: seed`` instead fine-tunes the seed model on every pick
so far plus replay); greedy WER/CER on the test set, overall and per condition, are recorded.
Every strategy of a seed starts from the same model and pool, and the first round's scores of the pool are shared by strategies that compute the
same thing (one scoring of EGL serves ``egl``, ``egl-kcenter`` and ``egl-per-second``).

Strategies (:data:`PRESETS`): ``random``, ``confidence``, ``entropy``, ``egl`` (all parameters),
``egl-output`` (the output layer only, closed form for CTC), ``egl-kcenter`` (EGL's best
candidates, picked by greedy k-center for diversity) and ``egl-per-second`` (EGL per second of
audio: what an hour budget pays for).

Writes in ``out_dir``:
``results.csv`` (strategy, seed, round, selected utterances and hours, WER, CER, WER per condition),
``selections.csv`` (per round: utterances, hours, mean duration and share of each condition of what was picked),
``correlation.csv`` (per seed, over the whole first-round pool: Spearman correlation of EGL with
confidence, entropy and duration), ``wer.png`` (WER and CER against selected hours and utterances,
mean ± std over seeds), ``egl_vs_confidence.png`` and ``summary.md`` (the tables of the README).
Each evaluated round is cached in its run folder (``result.json``), so a killed run started
again goes on where it stopped.

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

from asr.active.conditions import PoolSpec, split
from asr.active.select import SelectOptions, read_scores, run_selection
from asr.config import dump_config, load_config
from asr.data.manifest import read_manifest, write_manifest
from asr.errors import ToolkitError, UsageError
from asr.train_config import TrainConfig
from asr.utils import atomic_open, setup_logging

log = logging.getLogger("asr.active")

PRESETS: dict[str, dict] = {
    "random": {"strategy": "random"},
    "confidence": {"strategy": "confidence"},
    "entropy": {"strategy": "entropy"},
    "egl": {"strategy": "egl"},
    "egl-output": {"strategy": "egl", "params": ["output"]},
    "egl-kcenter": {"strategy": "egl", "diversity": "kcenter"},
    "egl-per-second": {"strategy": "egl", "normalize": "duration"},
}


@dataclass
class SimConfig:
    corpus: str = "data/synthetic/manifests/asr/train.jsonl"  # transcribed utterances of the seed voices (seed set, seen/noisy/fast/slow items)
    heldout: list[str] = field(default_factory=lambda: ["data/synthetic/manifests/asr/dev.jsonl",
                                                        "data/synthetic/manifests/asr/test.jsonl"])  # transcribed utterances of other voices (the voices condition)
    pool: PoolSpec = field(default_factory=PoolSpec)  # the conditions and their mixture
    seed_items: int = 1600  # utterances of the labeled seed set (clean seed voices)
    test_items: int = 200  # utterances of the test set (the pool's mixture; fixed)
    pool_items: int = 480  # utterances of the unlabeled pool (drawn per seed)
    seed_model: str = ""  # a trained checkpoint to start from ("" = train one on the seed set with `train`)
    rounds: int = 3  # select -> label -> fine-tune -> evaluate rounds per strategy
    budget: str | float = "0.04h"  # selected per round: utterances ("55") or hours ("0.04h")
    strategies: list[str] = field(default_factory=lambda: list(PRESETS))  # compared strategies (names of PRESETS)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # one pool, random draw and fine-tuning seed per seed
    nbest: int = 4  # N-best size for entropy and EGL
    select_batch_size: int = 8  # utterances scored together
    finetune_epochs: int = 6  # epochs of each round's fine-tuning
    finetune_lr: float = 7e-4  # peak learning rate of the fine-tuning
    finetune_warmup_steps: int = 10  # warm-up steps of the fine-tuning
    finetune_from: str = "previous"  # previous: this round's picks from the current model | seed: all picks so far from the seed model
    replay: float = 1.0  # utterances labeled before (seed set, earlier picks) added to each fine-tuning, per new one
    out_dir: str = "exp/active_learning"  # runs, CSVs, plots
    threads: int = 2  # torch threads for selection and evaluation (training uses train.threads)
    train: TrainConfig = field(default_factory=TrainConfig)  # the seed model's training (data.train, out_dir, seed are set here)


def _check(cfg: SimConfig) -> None:
    unknown = [s for s in cfg.strategies if s not in PRESETS]
    if unknown:
        raise UsageError(f"unknown strategies {unknown} (known: {', '.join(PRESETS)})")
    if not cfg.strategies or not cfg.seeds or cfg.rounds < 1:
        raise UsageError("need at least one strategy, one seed and one round")
    if cfg.finetune_from not in ("previous", "seed"):
        raise UsageError(f"finetune_from must be previous or seed, got {cfg.finetune_from!r}")
    if cfg.seed_model and not Path(cfg.seed_model).is_file():
        raise UsageError(f"{cfg.seed_model}: seed model not found")


def _train(cfg: SimConfig, seed: int, labeled: Path, out_dir: Path, init_from: str = "") -> str:
    t = cfg.train
    run = replace(t, data=replace(t.data, train=str(labeled), dev=""), out_dir=str(out_dir), seed=seed,
                  init_from=init_from, average_last=0)
    if init_from:
        run = replace(run, epochs=cfg.finetune_epochs, max_steps=0, max_minutes=0,
                      optim=replace(t.optim, lr=cfg.finetune_lr, warmup_steps=cfg.finetune_warmup_steps))
    from asr.train import train

    train(run)
    for path in [*out_dir.glob("epoch-*.pt"), out_dir / "best.pt"]:  # only last.pt is used again
        path.unlink(missing_ok=True)
    return str(out_dir / "last.pt")


def evaluate_model(ckpt: str, items: list[dict]) -> dict:
    """Greedy WER and CER of a checkpoint on manifest items: ``wer``, ``cer`` and ``wer_<condition>``."""
    from asr.checkpoint import load_model
    from asr.decode import transcribe_items
    from asr.evaluate import error_rates
    from asr.text import normalize_text

    model, family, tokenizer, _ = load_model(ckpt)
    hyps = transcribe_items(model, family, tokenizer, items, batch_size=16, progress=False)
    refs = [normalize_text(it["text"]) for it in items]
    rates = error_rates(refs, hyps)
    out = {"wer": float(rates["wer"]), "cer": float(rates["cer"])}
    for cond in dict.fromkeys(it.get("condition", "") for it in items):
        if cond:
            idx = [i for i, it in enumerate(items) if it.get("condition") == cond]
            out[f"wer_{cond}"] = float(error_rates([refs[i] for i in idx], [hyps[i] for i in idx])["wer"])
    return out


def _result(run_dir: Path, compute) -> dict:
    path = run_dir / "result.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        json.dump(result, f)
    return result


def _hours(items: list[dict]) -> float:
    return sum(float(it.get("duration", 0.0)) for it in items) / 3600


def _timed_eval(train_fn, ckpt: str, test: list[dict]) -> dict:
    t0 = time.monotonic()
    train_fn()
    return dict(evaluate_model(ckpt, test), seconds=time.monotonic() - t0)


def simulate(cfg: SimConfig) -> list[dict]:
    """Run (or resume) the experiment; returns the result rows and writes the CSVs, plots and summary."""
    _check(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    seed_set, test, _ = split(cfg.pool, cfg.corpus, cfg.heldout, cfg.seed_items, cfg.test_items, 0, cfg.seeds[0], out)
    write_manifest(out / "seed.jsonl", seed_set)
    write_manifest(out / "test.jsonl", test)
    seed_ckpt = cfg.seed_model or str(out / "seed-model" / "last.pt")
    base = _result(out / "seed-model", lambda: _timed_eval(
        lambda: cfg.seed_model or _train(cfg, cfg.seeds[0], out / "seed.jsonl", out / "seed-model"), seed_ckpt, test))
    log.info("seed model: WER %.3f, CER %.3f on the test mixture", base["wer"], base["cer"])
    rows, picks, corr = [], [], []
    for seed in cfg.seeds:
        _, _, pool = split(cfg.pool, cfg.corpus, cfg.heldout, cfg.seed_items, cfg.test_items, cfg.pool_items, seed, out)
        sdir = out / f"seed-{seed}"
        write_manifest(sdir / "pool.jsonl", pool)
        replay = list(seed_set)
        random.Random(seed).shuffle(replay)
        for name in cfg.strategies:
            preset = PRESETS[name]
            rows.append(_row(name, seed, 0, [], base))
            chosen, left, ckpt = [], list(pool), seed_ckpt
            for r in range(1, cfg.rounds + 1):
                rdir = sdir / name / f"round-{r}"
                rdir.mkdir(parents=True, exist_ok=True)
                if not (rdir / "selected.jsonl").is_file():
                    write_manifest(rdir / "pool.jsonl", left)
                    shared = sdir / "round-1-scores" if r == 1 else ""  # same model and pool for every strategy
                    run_selection(SelectOptions(
                        pool=str(rdir / "pool.jsonl"), budget=str(cfg.budget), out=str(rdir / "selected.jsonl"),
                        strategy=preset["strategy"], model=ckpt, nbest=cfg.nbest, batch_size=cfg.select_batch_size,
                        seed=seed * 1000 + r, params=list(preset.get("params", [])),
                        diversity=preset.get("diversity", "none"), normalize=preset.get("normalize", "none"),
                        work_dir=str(shared), progress=False, device="cpu"))
                picked_ids = {it["id"] for it in read_manifest(rdir / "selected.jsonl")}
                picked = [it for it in left if it["id"] in picked_ids]
                chosen += picked
                left = [it for it in left if it["id"] not in picked_ids]
                picks.append(_pick_row(name, seed, r, picked, cfg.pool.mixture))
                if cfg.finetune_from == "seed":  # everything selected so far, from the seed model
                    labeled, init = chosen + replay[: round(cfg.replay * len(chosen))], seed_ckpt
                else:  # this round's picks, from the current model; replay from what it learned before
                    earlier = [it for it in chosen if it["id"] not in picked_ids]
                    old = replay + earlier
                    random.Random(seed * 1000 + r).shuffle(old)
                    labeled, init = picked + old[: round(cfg.replay * len(picked))], ckpt
                write_manifest(rdir / "labeled.jsonl", labeled)
                ckpt_r = str(rdir / "train" / "last.pt")
                result = _result(rdir, lambda d=rdir, c=ckpt_r, s=seed, i=init: _timed_eval(
                    lambda: _train(cfg, s, d / "labeled.jsonl", d / "train", init_from=i), c, test))
                rows.append(_row(name, seed, r, chosen, result))
                ckpt = ckpt_r
            log.info("seed %d, %s: WER %s", seed, name,
                     " -> ".join(f"{row['wer']:.3f}" for row in rows if row["strategy"] == name and row["seed"] == seed))
        corr += _correlations(sdir, seed, cfg.strategies, pool)
    write_csv(rows, out / "results.csv")
    write_csv(picks, out / "selections.csv")
    if corr:
        write_csv(corr, out / "correlation.csv")
        plot_scores(out / f"seed-{cfg.seeds[0]}", cfg.strategies, out / "egl_vs_confidence.png")
    plot(rows, out / "wer.png")
    with atomic_open(out / "summary.md", "w") as f:
        f.write(summary_markdown(rows, picks, corr))
    return rows


def _row(strategy: str, seed: int, rnd: int, chosen: list[dict], result: dict) -> dict:
    row = {"strategy": strategy, "seed": seed, "round": rnd, "labeled_utts": len(chosen),
           "labeled_hours": round(_hours(chosen), 5), "wer": result["wer"], "cer": result["cer"]}
    row.update({k: v for k, v in sorted(result.items()) if k.startswith("wer_")})
    return row


def _pick_row(strategy: str, seed: int, rnd: int, picked: list[dict], mixture: dict) -> dict:
    n = max(1, len(picked))
    row = {"strategy": strategy, "seed": seed, "round": rnd, "utts": len(picked), "hours": round(_hours(picked), 5),
           "mean_duration": round(sum(float(it["duration"]) for it in picked) / n, 3)}
    for cond in mixture:
        row[f"share_{cond}"] = round(sum(it.get("condition") == cond for it in picked) / n, 4)
    return row


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties).

    >>> spearman([1, 2, 3, 4], [10, 20, 30, 40]), spearman([1, 2, 3], [3, 2, 1])
    (1.0, -1.0)
    """
    def ranks(v: list[float]) -> torch.Tensor:
        t = torch.tensor(v, dtype=torch.float64)
        order = torch.argsort(t, stable=True)
        r = torch.empty_like(t)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for value in torch.unique(t):  # ties share their mean rank
            same = t == value
            if int(same.sum()) > 1:
                r[same] = r[same].mean()
        return r

    a, b = ranks(x), ranks(y)
    a, b = a - a.mean(), b - b.mean()
    den = float((a.square().sum() * b.square().sum()).sqrt())
    return float((a * b).sum()) / den if den > 0 else 0.0


def _round1_scores(sdir: Path, strategy: str) -> dict[str, float]:
    path = sdir / strategy / "round-1" / "selected.scores.tsv"
    return {r["id"]: r["score"] for r in read_scores(path)} if path.is_file() else {}


def _correlations(sdir: Path, seed: int, strategies: list[str], pool: list[dict]) -> list[dict]:
    """Spearman correlations over the whole first-round pool (every item was scored by the seed model)."""
    if "egl" not in strategies:
        return []
    egl = _round1_scores(sdir, "egl")
    dur = {it["id"]: float(it["duration"]) for it in pool}
    ids = [i for i in egl if i in dur]
    out = []
    for other in ("confidence", "entropy", "egl-output"):
        scores = _round1_scores(sdir, other) if other in strategies else {}
        common = [i for i in ids if i in scores]
        if len(common) > 2:
            out.append({"seed": seed, "egl_vs": other, "n": len(common),
                        "spearman": round(spearman([egl[i] for i in common], [scores[i] for i in common]), 4)})
    out.append({"seed": seed, "egl_vs": "duration", "n": len(ids),
                "spearman": round(spearman([egl[i] for i in ids], [dur[i] for i in ids]), 4)})
    return out


def write_csv(rows: list[dict], path: Path) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r)) if rows else ["strategy"]
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def summarize(rows: list[dict], metric: str = "wer", x: str = "labeled_hours") -> dict[str, list[tuple[float, float, float]]]:
    """Per strategy and round: (mean ``x``, mean ``metric``, its standard deviation over seeds)."""
    out: dict[str, list[tuple[float, float, float]]] = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        points = []
        for rnd in sorted({r["round"] for r in rows if r["strategy"] == strategy}):
            sel = [r for r in rows if r["strategy"] == strategy and r["round"] == rnd]
            xs = torch.tensor([float(r[x]) for r in sel], dtype=torch.float64)
            values = torch.tensor([float(r[metric]) for r in sel], dtype=torch.float64)
            std = float(values.std(unbiased=True)) if len(sel) > 1 else 0.0
            points.append((float(xs.mean()), float(values.mean()), std))
        out[strategy] = points
    return out


def relative_to_random(rows: list[dict], metric: str = "wer") -> dict[str, tuple[float, float]]:
    """Per strategy at the last round: mean and std over seeds of ``(metric - random's) / random's``
    (same seed); negative = better than random."""
    last = max(r["round"] for r in rows)
    base = {r["seed"]: float(r[metric]) for r in rows if r["strategy"] == "random" and r["round"] == last}
    out = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        rel = [(float(r[metric]) - base[r["seed"]]) / base[r["seed"]] for r in rows
               if r["strategy"] == strategy and r["round"] == last and base.get(r["seed"])]
        if rel:
            t = torch.tensor(rel, dtype=torch.float64)
            out[strategy] = (float(t.mean()), float(t.std(unbiased=True)) if len(rel) > 1 else 0.0)
    return out


def plot(rows: list[dict], path: Path) -> None:
    """Test WER (top) and CER (bottom), in %, against selected hours (left) and utterances (right):
    one line per strategy, error bars = standard deviation over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = len({r["seed"] for r in rows})
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for i, metric in enumerate(("wer", "cer")):
        for j, (x, label) in enumerate((("labeled_hours", "selected hours"), ("labeled_utts", "selected utterances"))):
            ax = axes[i][j]
            for strategy, points in summarize(rows, metric, x).items():
                xs, y, e = zip(*points)
                ax.errorbar(xs, [100 * v for v in y], yerr=[100 * v for v in e], marker="o", capsize=3,
                            label=strategy, linestyle="--" if strategy == "random" else "-")
            ax.set_xlabel(label)
            ax.set_ylabel(f"test {metric.upper()} (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"active learning: mean ± std over {seeds} seed{'s' if seeds != 1 else ''}")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def plot_scores(sdir: Path, strategies: list[str], path: Path) -> None:
    """EGL (log scale) against least confidence over the first-round pool, by condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "confidence" not in strategies:
        return
    egl, conf = _round1_scores(sdir, "egl"), _round1_scores(sdir, "confidence")
    cond = {it["id"]: it.get("condition", "") for it in read_manifest(sdir / "pool.jsonl")}
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for c in dict.fromkeys(cond.values()):
        ids = [i for i in egl if cond.get(i) == c and i in conf]
        ax.scatter([conf[i] for i in ids], [max(egl[i], 1e-6) for i in ids], s=8, alpha=0.6, label=c)
    ids = [i for i in egl if i in conf]
    rho = spearman([egl[i] for i in ids], [conf[i] for i in ids]) if len(ids) > 2 else float("nan")
    ax.set_yscale("log")
    ax.set_xlabel("least confidence (-log P per token)")
    ax.set_ylabel("EGL score")
    ax.set_title(f"{sdir.name}, first-round pool: Spearman ρ = {rho:.2f}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def summary_markdown(rows: list[dict], picks: list[dict], corr: list[dict]) -> str:
    """The experiment's tables in Markdown (what the README shows)."""
    last = max(r["round"] for r in rows)
    has_random = any(r["strategy"] == "random" for r in rows)
    rel = relative_to_random(rows) if has_random else {}
    rel_cer = relative_to_random(rows, "cer") if has_random else {}
    conds = [k[len("wer_"):] for k in rows[0] if k.startswith("wer_")]
    lines = ["| strategy | selected h | selected utts | WER % | CER % | "
             + " | ".join(f"WER {c} %" for c in conds) + " | WER vs random | CER vs random |",
             "|---" * (7 + len(conds)) + "|"]

    def ms(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
        t = torch.tensor(values, dtype=torch.float64) * scale
        std = float(t.std(unbiased=True)) if len(values) > 1 else 0.0
        return f"{float(t.mean()):.{digits}f} ± {std:.{digits}f}"

    seed_rows = [r for r in rows if r["round"] == 0 and r["strategy"] == rows[0]["strategy"]]
    lines.append("| seed model | 0 | 0 | " + ms([r["wer"] for r in seed_rows]) + " | " + ms([r["cer"] for r in seed_rows])
                 + " | " + " | ".join(ms([r[f"wer_{c}"] for r in seed_rows]) for c in conds) + " | | |")
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        sel = [r for r in rows if r["strategy"] == strategy and r["round"] == last]
        vs = rel.get(strategy)
        lines.append(f"| {strategy} | {ms([r['labeled_hours'] for r in sel], 1, 3)} | "
                     f"{ms([r['labeled_utts'] for r in sel], 1, 0)} | {ms([r['wer'] for r in sel])} | "
                     f"{ms([r['cer'] for r in sel])} | " + " | ".join(ms([r[f'wer_{c}'] for r in sel]) for c in conds)
                     + " | " + " | ".join(f"{100 * v[0]:+.1f}% ± {100 * v[1]:.1f}" if v else ""
                                          for v in (vs, rel_cer.get(strategy))) + " |")
    shares = [k for k in picks[0] if k.startswith("share_")] if picks else []
    lines += ["", "| strategy | round | utts | mean duration (s) | " + " | ".join(k[len("share_"):] for k in shares) + " |",
              "|---" * (4 + len(shares)) + "|"]
    for strategy in dict.fromkeys(p["strategy"] for p in picks):
        for rnd in sorted({p["round"] for p in picks}):
            sel = [p for p in picks if p["strategy"] == strategy and p["round"] == rnd]
            lines.append(f"| {strategy} | {rnd} | {ms([p['utts'] for p in sel], 1, 0)} | "
                         f"{ms([p['mean_duration'] for p in sel], 1, 2)} | "
                         + " | ".join(ms([p[k] for p in sel], 100, 0) + "%" for k in shares) + " |")
    if corr:
        lines += ["", "| EGL against | Spearman ρ (mean ± std over seeds) |", "|---|---|"]
        for other in dict.fromkeys(c["egl_vs"] for c in corr):
            lines.append(f"| {other} | {ms([c['spearman'] for c in corr if c['egl_vs'] == other], 1, 2)} |")
    return "\n".join(lines) + "\n"


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
        simulate(cfg)
    except ToolkitError as e:
        print(f"asr.active.simulate: error: {e}", file=sys.stderr)
        return 2
    print((Path(cfg.out_dir) / "summary.md").read_text(), end="")
    for name in ("results.csv", "selections.csv", "correlation.csv", "wer.png", "egl_vs_confidence.png"):
        if (Path(cfg.out_dir) / name).is_file():
            print(f"{name}\t{Path(cfg.out_dir) / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
