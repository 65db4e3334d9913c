"""Active learning: strategies against brute force, batched per-hypothesis gradients against the
naive loop, the selection job (budgets, resume, speaker cap, k-center, 2 gloo processes),
``init_from`` and a tiny end-to-end simulation."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.active.adapters import adapter_for, select_parameters
from asr.active.gradients import naive_sq_grad_norms, sq_grad_norms
from asr.active.select import SelectOptions, read_scores, run_selection
from asr.active.selection import Budget, parse_budget, select
from asr.active.strategies import (confidence_scores, decode_nbest, egl_scores, entropy_scores, make_scorer,
                                   nbest_posteriors, random_scores)
from asr.audio import read_audio, write_audio
from asr.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from asr.config import to_dict
from asr.data.manifest import read_manifest, write_manifest
from asr.decode.hypothesis import Hypothesis
from asr.features import FeatureConfig
from asr.models import get_family
from asr.models.config import AttentionConfig, EncoderConfig, ModelConfig, SpecAugmentConfig, TransducerConfig
from asr.text import CharTokenizer
from asr.train_config import DataConfig, OptimConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
SR = 16000
WORDS = ["AB", "BA", "CAB", "BC", "ACE"]


# ---------------------------------------------------------------------------
# tiny models, batches, pools
# ---------------------------------------------------------------------------


def tiny_config(family: str = "ctc", kind: str = "conformer", **kw) -> ModelConfig:
    enc = EncoderConfig(kind=kind, dim=16, layers=1, heads=2, conv_channels=4, conv_kernel=5, dropout=0.1)
    return ModelConfig(family=family, features=FeatureConfig(n_mels=20), encoder=enc,
                       specaugment=SpecAugmentConfig(enabled=True), **kw)


VARIANTS = {
    "ctc-conformer": ("ctc", "conformer", {}),
    "ctc-gru": ("ctc", "rnn", {}),
    "transducer-lstm": ("transducer", "conformer", {"transducer": TransducerConfig(pred_dim=8, joint_dim=8)}),
    "transducer-stateless": ("transducer", "rnn", {"transducer": TransducerConfig(predictor="stateless", pred_dim=8,
                                                                                  joint_dim=8)}),
    "attention-lstm": ("attention", "conformer", {"attention": AttentionConfig(dim=16, att_dim=8, conv_channels=2,
                                                                               conv_kernel=3, ctc_weight=0.3)}),
    "attention-transformer": ("attention", "conformer", {"attention": AttentionConfig(decoder="transformer", dim=16,
                                                                                      heads=2, ctc_weight=0.0)}),
}


def tiny_model(variant: str, vocab: int = 9, seed: int = 0):
    family, kind, kw = VARIANTS[variant]
    torch.manual_seed(seed)
    return get_family(family).build(tiny_config(family, kind, **kw), vocab).eval(), family


def waves(lengths, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    wav = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wav[i, :n] = torch.randn(n, generator=g)
    return wav, torch.tensor(lengths)


HYPS = [[[3, 4, 5], [3, 4], [6, 6]], [[5, 7], [7]], [[3], [4, 8, 4], [5, 3], [8]]]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    mask = b != 0
    assert torch.equal(mask, a != 0)
    return float(((a - b).abs()[mask] / b.abs()[mask]).max())


def clip(path: Path, seconds: float, freq: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    write_audio(path, (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)).astype("float32"), SR)


def make_corpus(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` short clips (tones + noise) with texts over a 5-letter alphabet and 3 speakers."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        dur = float(rng.uniform(0.4, 0.9))
        path = folder / f"u{i:03d}.wav"
        clip(path, dur, float(rng.uniform(200, 2000)), seed * 1000 + i)
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 3))))
        items.append({"id": f"u{i:03d}", "audio": str(path), "duration": round(dur, 4), "text": text,
                      "speaker": f"s{i % 3}"})
    return write_manifest(folder / "corpus.jsonl", items)


def save_tiny_checkpoint(path: Path, family: str = "ctc", seed: int = 0, cmvn: float = 0.0) -> Path:
    tok = CharTokenizer.english()
    torch.manual_seed(seed)
    cfg = TrainConfig(model=tiny_config(family, "conformer"))
    model = get_family(family).build(cfg.model, tok.vocab_size)
    if cmvn:
        model.frontend.set_cmvn(torch.full((20,), cmvn), torch.full((20,), 2.0))
    save_checkpoint({"format": FORMAT, "family": family, "config": to_dict(cfg), "model": model.state_dict(),
                     "tokenizer": tok.state_dict(), "labels": None}, path)
    return path


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pool")
    make_corpus(d, 12)
    save_tiny_checkpoint(d / "model.pt")
    return d


# ---------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------


def test_scores_against_hand_computation():
    nb = [Hypothesis([5, 6, 7], score=-3.0, am_score=-3.0), Hypothesis([5, 6], score=-4.0, am_score=-4.0),
          Hypothesis([5], score=-6.0, am_score=-6.0)]
    z = math.exp(-3) + math.exp(-4) + math.exp(-6)
    p = [math.exp(-3) / z, math.exp(-4) / z, math.exp(-6) / z]
    assert nbest_posteriors(nb).tolist() == pytest.approx(p, rel=1e-12)
    assert entropy_scores([nb])[0] == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-12)
    assert confidence_scores([nb])[0] == pytest.approx(3.0 / 3)  # -(-3) / 3 tokens
    sq = torch.tensor([[1.0, 4.0, 9.0]])
    assert egl_scores([nb], sq)[0] == pytest.approx(p[0] * 1 + p[1] * 4 + p[2] * 9, rel=1e-12)
    # a sure model: entropy 0; a flat one: log N; no hypothesis: least confident of all
    assert entropy_scores([[nb[0]]])[0] == 0.0
    flat = [Hypothesis([i], -2.0, -2.0) for i in range(4)]
    assert entropy_scores([flat])[0] == pytest.approx(math.log(4))
    assert confidence_scores([[]])[0] == math.inf
    # the less confident utterance scores higher
    low = [Hypothesis([5, 6], -8.0, -8.0)]
    assert confidence_scores([low])[0] > confidence_scores([nb])[0]


def test_random_scores_depend_on_seed_and_id_only():
    a = random_scores([f"u{i}" for i in range(200)], seed=3)
    assert a == random_scores([f"u{i}" for i in range(200)], seed=3)
    assert random_scores(["u7", "u3"], seed=3) == [a[7], a[3]]
    assert a != random_scores([f"u{i}" for i in range(200)], seed=4)
    assert all(0 <= x < 1 for x in a) and 0.4 < float(np.mean(a)) < 0.6


def test_egl_equals_definition_with_plain_autograd(one_thread):
    """sum_k p_k ||grad family.loss(x, y_k)||^2 over all parameters, one backward per pair."""
    model, family = tiny_model("ctc-conformer")
    wav, wl = waves([7000, 5000], seed=1)
    batch = {"ids": ["a", "b"], "wav": wav, "wav_lengths": wl}
    nbests = decode_nbest(model, "ctc", batch, 3)
    nbests = [[h for h in nb if h.tokens] or [Hypothesis([3], 0.0, 0.0)] for nb in nbests]  # family.loss drops empty
    expected = []
    for b, nb in enumerate(nbests):
        p = nbest_posteriors(nb)
        total = 0.0
        for pk, h in zip(p, nb):
            one = {"wav": wav[b : b + 1, : int(wl[b])], "wav_lengths": wl[b : b + 1],
                   "tokens": torch.tensor([h.tokens]), "token_lengths": torch.tensor([len(h.tokens)])}
            model.zero_grad()
            get_family("ctc").loss(model, one).loss.backward()
            total += float(pk) * sum(float(q.grad.double().pow(2).sum()) for q in model.parameters() if q.grad is not None)
        expected.append(total)
    sq = sq_grad_norms(model, adapter_for(model, "ctc"), wav, wl, [[h.tokens for h in nb] for nb in nbests])
    assert egl_scores(nbests, sq) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_adapter_loss_is_the_family_loss(variant, one_thread):
    model, family = tiny_model(variant)
    wav, wl = waves([6000, 8000], seed=2)
    tokens, lengths = torch.tensor([[3, 4, 5], [6, 0, 0]]), torch.tensor([3, 1])
    batch = {"wav": wav, "wav_lengths": wl, "tokens": tokens, "token_lengths": lengths}
    with torch.no_grad():
        rows = adapter_for(model, family).row_losses(model, wav, wl, tokens, lengths)
        ref = get_family(family).loss(model, batch).loss
    assert float(rows.sum()) == pytest.approx(float(ref), rel=1e-5)


# ---------------------------------------------------------------------------
# batched gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batched_grad_norms_equal_naive_loop(variant, one_thread):
    model, family = tiny_model(variant)
    wav, wl = waves([9000, 6500, 4000], seed=3)
    adapter = adapter_for(model, family)
    fast = sq_grad_norms(model, adapter, wav, wl, HYPS)
    slow = naive_sq_grad_norms(model, adapter, wav, wl, HYPS)
    assert fast.shape == (3, 4)
    assert bool(torch.isfinite(fast).all()) and bool((fast[fast != 0] > 0).all())
    assert fast[1, 2:].tolist() == [0.0, 0.0]  # the second utterance has two hypotheses
    assert rel_err(fast, slow) <= 1e-4


def test_batched_grad_norms_do_not_depend_on_the_batch(one_thread):
    model, _ = tiny_model("ctc-conformer")
    wav, wl = waves([9000, 6500, 4000], seed=3)
    adapter = adapter_for(model, "ctc")
    full = sq_grad_norms(model, adapter, wav, wl, HYPS)
    alone = sq_grad_norms(model, adapter, wav[2:, :4000], wl[2:], HYPS[2:])
    small_chunks = sq_grad_norms(model, adapter, wav, wl, HYPS, max_chunk_bytes=1)  # one utterance per vmap chunk
    assert rel_err(alone[0], full[2]) <= 1e-4 and rel_err(small_chunks, full) <= 1e-4


def test_closed_form_output_layer_equals_autograd(one_thread):
    model, _ = tiny_model("ctc-conformer")
    wav, wl = waves([9000, 6500, 4000], seed=4)
    adapter = adapter_for(model, "ctc")
    for names in (["head.linear.weight", "head.linear.bias"], ["head.linear.weight"], ["head.linear.bias"]):
        closed = sq_grad_norms(model, adapter, wav, wl, HYPS, params=names)
        vmapped = sq_grad_norms(model, adapter, wav, wl, HYPS, params=names, closed_form=False)
        autograd = naive_sq_grad_norms(model, adapter, wav, wl, HYPS, params=names)
        assert rel_err(closed, autograd) <= 1e-4 and rel_err(vmapped, autograd) <= 1e-4
    # the output layer is part of, and smaller than, the whole
    everything = sq_grad_norms(model, adapter, wav, wl, HYPS)
    assert bool((everything >= closed).all()) and bool((everything[everything > 0] > closed[everything > 0]).any())


def test_parameter_subset_by_prefix(one_thread):
    model, _ = tiny_model("ctc-conformer")
    wav, wl = waves([8000, 5000], seed=5)
    adapter = adapter_for(model, "ctc")
    names = select_parameters(model, ["encoder.blocks.0.ff1"])
    assert names and all(n.startswith("encoder.blocks.0.ff1") for n in names)
    hyps = HYPS[:2]
    assert rel_err(sq_grad_norms(model, adapter, wav, wl, hyps, params=names),
                   naive_sq_grad_norms(model, adapter, wav, wl, hyps, params=names)) <= 1e-4
    with pytest.raises(ValueError, match="no trainable parameter"):
        select_parameters(model, ["nothing."])


def test_egl_scorer_end_to_end_for_every_family(one_thread):
    wav, wl = waves([8000, 6000], seed=6)
    batch = {"ids": ["a", "b"], "wav": wav, "wav_lengths": wl}
    for variant in ("ctc-conformer", "transducer-lstm", "attention-lstm"):
        model, family = tiny_model(variant, vocab=9, seed=1)
        scores = make_scorer("egl", model, family, nbest=3)(batch)
        nbests = decode_nbest(model, family, batch, 3)
        ref = egl_scores(nbests, naive_sq_grad_norms(model, adapter_for(model, family), wav, wl,
                                                     [[h.tokens for h in nb] for nb in nbests]))
        assert all(math.isfinite(s) and s > 0 for s in scores), (variant, scores)
        assert scores == pytest.approx(ref, rel=1e-4)


# ---------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------


def test_budget_parsing():
    assert parse_budget("12") == Budget(12, "utterances") and parse_budget("0.5h") == Budget(0.5, "hours")
    for bad in ("", "h", "-3", "2.5", "0", "3 hours"):
        with pytest.raises(ValueError):
            parse_budget(bad)


def pool_items(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"u{i:02d}", "duration": float(rng.uniform(1, 10)), "score": float(rng.uniform()),
             "speaker": f"s{i % 4}"} for i in range(n)]


def test_select_by_utterances_hours_and_speaker_cap(caplog):
    items = pool_items(40)
    by_score = sorted(items, key=lambda it: -it["score"])
    assert [it["id"] for it in select(items, Budget(5))] == [it["id"] for it in by_score[:5]]
    hours = select(items, Budget(30 / 3600, "hours"))
    assert sum(it["duration"] for it in hours) <= 30 + 1e-9
    assert sum(it["duration"] for it in hours) > 30 - min(it["duration"] for it in items)  # nothing else fits
    assert hours[0] is by_score[0]
    capped = select(items, Budget(12), max_per_speaker=2)
    per = {}
    for it in capped:
        per[it["speaker"]] = per.get(it["speaker"], 0) + 1
    assert len(capped) == 8 and max(per.values()) == 2  # 4 speakers x 2
    with caplog.at_level("WARNING"):
        assert len(select(items, Budget(100))) == 40
    assert "whole pool" in caplog.text


def test_kcenter_picks_diverse_items():
    # 3 clusters of near-duplicates; the best 4 scores all lie in cluster 0
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    items, emb = [], []
    for i in range(12):
        c = 0 if i < 6 else (1 if i < 9 else 2)
        items.append({"id": f"u{i:02d}", "duration": 1.0, "score": 1.0 - 0.01 * i})
        emb.append(centers[c] + 0.01 * torch.randn(2, generator=torch.Generator().manual_seed(i)))
    emb = torch.stack(emb)
    plain = [it["id"] for it in select(items, Budget(3))]
    assert plain == ["u00", "u01", "u02"]
    diverse = [it["id"] for it in select(items, Budget(3), diversity="kcenter", embeddings=emb, candidates=4)]
    assert diverse[0] == "u00" and {int(i[1:]) // 3 for i in diverse} == {0, 2, 3}  # one per cluster
    with pytest.raises(ValueError, match="embedding"):
        select(items, Budget(3), diversity="kcenter")


def options(d: Path, out: str, **kw) -> SelectOptions:
    base = dict(pool=str(d / "corpus.jsonl"), budget="4", out=str(d / out), strategy="egl", model=str(d / "model.pt"),
                nbest=3, batch_size=3, shard_size=4, progress=False, device="cpu")
    base.update(kw)
    return SelectOptions(**base)


def test_selection_job_budgets_and_scores_file(pool_dir, one_thread):
    summary = run_selection(options(pool_dir, "utt/sel.jsonl"))
    assert summary["complete"] and summary["shards"] == 3 and summary["selected"] == 4
    selected = read_manifest(pool_dir / "utt" / "sel.jsonl")
    rows = read_scores(pool_dir / "utt" / "sel.scores.tsv")
    assert [r["id"] for r in rows] == [it["id"] for it in read_manifest(pool_dir / "corpus.jsonl")]
    assert all(math.isfinite(r["score"]) and r["score"] > 0 for r in rows)
    best = {r["id"] for r in sorted(rows, key=lambda r: -r["score"])[:4]}
    assert {it["id"] for it in selected} == best == {r["id"] for r in rows if r["selected"]}
    assert all(Path(it["audio"]).is_file() for it in selected)
    # hours
    summary = run_selection(options(pool_dir, "hours/sel.jsonl", budget=f"{2.0 / 3600}h", strategy="confidence"))
    assert 0 < summary["selected_hours"] * 3600 <= 2.0
    assert summary["selected_hours"] * 3600 > 2.0 - 0.9  # no shorter clip fits beside them


def test_selection_job_resumes_after_a_kill(pool_dir, one_thread):
    opts = options(pool_dir, "resume/sel.jsonl", strategy="entropy", max_per_speaker=1, budget="3")
    first = run_selection(SelectOptions(**{**opts.__dict__, "max_shards": 1}))
    assert first == {**first, "complete": False, "scored": 1}
    assert not (pool_dir / "resume" / "sel.jsonl").exists()
    shard = next(Path(first["work_dir"]).glob("shard-00000.pt"))
    stamp = shard.stat().st_mtime_ns
    second = run_selection(opts)
    assert second["complete"] and second["scored"] == 2 and shard.stat().st_mtime_ns == stamp
    fresh = run_selection(SelectOptions(**{**opts.__dict__, "out": str(pool_dir / "fresh" / "sel.jsonl")}))
    assert fresh["scored"] == 3
    assert (pool_dir / "resume" / "sel.jsonl").read_text() == (pool_dir / "fresh" / "sel.jsonl").read_text()
    assert (pool_dir / "resume" / "sel.scores.tsv").read_text() == (pool_dir / "fresh" / "sel.scores.tsv").read_text()
    speakers = [it["speaker"] for it in read_manifest(pool_dir / "resume" / "sel.jsonl")]
    assert len(speakers) == 3 and len(set(speakers)) == 3  # one per speaker
    again = run_selection(opts)  # everything cached: nothing scored
    assert again["scored"] == 0 and again["selected"] == 3


def test_select_command_errors_name_the_file(pool_dir, tmp_path, capsys):
    from asr.cli import main

    args = ["select", "--pool", str(pool_dir / "corpus.jsonl"), "--budget", "3", "--out", str(tmp_path / "s.jsonl")]
    assert main(args + ["--model", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(args + ["--model", str(bad)]) == 2
    assert "bad.pt" in capsys.readouterr().err
    args[2] = str(tmp_path / "nopool.jsonl")
    assert main(args + ["--model", str(pool_dir / "model.pt")]) == 2
    assert "nopool.jsonl" in capsys.readouterr().err
    args[2] = str(pool_dir / "corpus.jsonl")
    assert main(args + ["--strategy", "egl"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(args + ["--strategy", "random", "--budget", "50"]) == 0  # bigger than the pool: everything
    assert len(read_manifest(tmp_path / "s.jsonl")) == 12


def test_kcenter_through_the_job(pool_dir, one_thread):
    summary = run_selection(options(pool_dir, "kc/sel.jsonl", strategy="random", diversity="kcenter", budget="5"))
    assert summary["selected"] == 5 and len(read_manifest(pool_dir / "kc" / "sel.jsonl")) == 5


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_two_gloo_processes_select_like_one(pool_dir, tmp_path):
    common = ["--model", str(pool_dir / "model.pt"), "--pool", str(pool_dir / "corpus.jsonl"), "--budget", "5",
              "--strategy", "egl", "--nbest", "3", "--batch-size", "3", "--shard-size", "4", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "asr", "select", *common, "--out", str(tmp_path / "one.jsonl")],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "asr", "select", *common, "--out", str(tmp_path / "two.jsonl")],
                         env=_env(), capture_output=True, text=True, timeout=180)
    assert two.returncode == 0, two.stderr
    assert (tmp_path / "one.jsonl").read_text() == (tmp_path / "two.jsonl").read_text()
    a, b = read_scores(tmp_path / "one.scores.tsv"), read_scores(tmp_path / "two.scores.tsv")
    assert [r["id"] for r in a] == [r["id"] for r in b] and len(a) == 12
    assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], rel=1e-5)
    assert "(rank 1)" in two.stderr  # rank 1 really scored shards


# ---------------------------------------------------------------------------
# init_from, simulation
# ---------------------------------------------------------------------------


def test_init_from_starts_from_the_given_weights(tmp_path, one_thread):
    from asr.train import train

    corpus = make_corpus(tmp_path, 6, seed=1)
    init = save_tiny_checkpoint(tmp_path / "init.pt", seed=7, cmvn=0.5)
    cfg = TrainConfig(model=tiny_config("ctc"), data=DataConfig(train=str(corpus), batch_size=3, num_workers=0),
                      optim=OptimConfig(lr=0.0, warmup_steps=0, schedule="constant"), epochs=1, threads=1,
                      tensorboard=False, out_dir=str(tmp_path / "run"), init_from=str(init))
    train(cfg)
    start, after = load_checkpoint(init), load_checkpoint(tmp_path / "run" / "last.pt")
    assert after["tokenizer"] == start["tokenizer"]  # the checkpoint's 28 letters, not the corpus' 5
    assert after["train_state"]["step"] == 2  # it trained (with lr 0), a fresh run from step 0
    for k, v in start["model"].items():
        assert torch.equal(after["model"][k], v), k  # CMVN buffers included: not recomputed
    # without init_from the same run starts from random weights and its own statistics
    train(TrainConfig(**{**cfg.__dict__, "init_from": "", "out_dir": str(tmp_path / "scratch")}))
    scratch = load_checkpoint(tmp_path / "scratch" / "last.pt")
    assert not torch.equal(scratch["model"]["frontend.cmvn.mean"], start["model"]["frontend.cmvn.mean"])
    assert scratch["tokenizer"] != start["tokenizer"]


def test_tiny_simulation_runs_and_resumes(tmp_path, one_thread):
    from asr.active.simulate import main

    corpus = make_corpus(tmp_path, 30, seed=2)
    (tmp_path / "other").mkdir()
    heldout = write_manifest(tmp_path / "other" / "voices.jsonl", [
        dict(it, id=f"v{it['id']}") for it in read_manifest(make_corpus(tmp_path / "other", 8, seed=3))])
    (tmp_path / "noise").mkdir()
    write_audio(tmp_path / "noise" / "hiss.wav", 0.1 * np.random.default_rng(0).standard_normal(SR).astype("float32"), SR)
    out = tmp_path / "sim"
    args = [f"corpus={corpus}", f"heldout=[{heldout}]", f"pool.noise_dir={tmp_path / 'noise'}",
            "pool.mixture={seen: 2, noisy: 1, fast: 1, voices: 1}", "test_items=5", "seed_items=10",
            "pool_items=10", "rounds=1", "budget=3", "strategies=[random,confidence,egl,egl-kcenter,egl-per-second]",
            "seeds=[0]", "train.epochs=1", "finetune_epochs=1", "threads=1",
            f"out_dir={out}", "train.model.encoder.dim=16", "train.model.encoder.layers=1",
            "train.model.encoder.heads=2", "train.model.encoder.conv_channels=4", "train.model.features.n_mels=20",
            "train.data.num_workers=0", "train.data.batch_size=3"]
    t0 = time.monotonic()
    assert main(args) == 0
    first = time.monotonic() - t0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    names = ["random", "confidence", "egl", "egl-kcenter", "egl-per-second"]
    assert [(r["strategy"], r["round"], r["labeled_utts"]) for r in rows] == [
        (n, rnd, utts) for n in names for rnd, utts in (("0", "0"), ("1", "3"))]
    assert all(0 <= float(r["wer"]) and 0 <= float(r["wer_noisy"]) for r in rows)
    for name in ("wer.png", "egl_vs_confidence.png"):
        assert (out / name).stat().st_size > 1000
    # the pool and the test set follow the mixture; the seed set is clean seed voices only
    pool = read_manifest(out / "seed-0" / "pool.jsonl")
    assert [sum(it["condition"] == c for it in pool) for c in ("seen", "noisy", "fast", "voices")] == [4, 2, 2, 2]
    assert {it["condition"] for it in read_manifest(out / "seed.jsonl")} == {"seen"}
    assert not {it["id"].split("-")[0] for it in pool} & {it["id"] for it in read_manifest(out / "seed.jsonl")}
    # egl, egl-kcenter and egl-per-second shared one scoring of the first-round pool
    shared = list((out / "seed-0" / "round-1-scores").glob("egl-*/shard-*.pt"))
    assert len(shared) == 1
    egl = {r["id"]: r["score"] for r in read_scores(out / "seed-0" / "egl" / "round-1" / "selected.scores.tsv")}
    per_sec = read_scores(out / "seed-0" / "egl-per-second" / "round-1" / "selected.scores.tsv")
    dur = {it["id"]: it["duration"] for it in pool}
    assert all(r["score"] == pytest.approx(egl[r["id"]] / dur[r["id"]], rel=1e-6) for r in per_sec)
    # selections: shares per condition sum to one; correlation over the whole pool
    with open(out / "selections.csv") as f:
        picks = list(csv.DictReader(f))
    assert len(picks) == 5 and all(
        sum(float(p[f"share_{c}"]) for c in ("seen", "noisy", "fast", "voices")) == pytest.approx(1.0, abs=1e-3) for p in picks)
    with open(out / "correlation.csv") as f:
        corr = {r["egl_vs"]: r for r in csv.DictReader(f)}
    assert set(corr) == {"confidence", "duration"} and corr["confidence"]["n"] == "10"
    assert "WER vs random" in (out / "summary.md").read_text()
    stamp = (out / "seed-0" / "egl" / "round-1" / "result.json").stat().st_mtime_ns
    t0 = time.monotonic()
    assert main(args) == 0  # everything cached: resumes without training again
    assert time.monotonic() - t0 < first and (out / "seed-0" / "egl" / "round-1" / "result.json").stat().st_mtime_ns == stamp


def test_shifted_conditions_are_what_they_say(tmp_path):
    from asr.active.conditions import PoolSpec, Shifter
    from asr.augment import snr

    corpus = read_manifest(make_corpus(tmp_path, 2, seed=4))
    (tmp_path / "noise").mkdir()
    noise = 0.1 * np.random.default_rng(1).standard_normal(3 * SR).astype("float32")
    write_audio(tmp_path / "noise" / "n.wav", noise, SR)
    spec = PoolSpec(noise_dir=str(tmp_path / "noise"), snr_db=[3.0, 7.0], fast=[1.4, 1.4], slow=[0.7, 0.7])
    shifter = Shifter(spec, tmp_path / "out")
    src = corpus[0]
    clean, _ = read_audio(src["audio"], SR)
    noisy = shifter.item(src, "noisy")
    wav, _ = read_audio(noisy["audio"], SR)
    assert noisy["id"] == f"{src['id']}-noisy" and 3.0 <= noisy["snr_db"] <= 7.0
    assert float(snr(clean, wav - clean)) == pytest.approx(noisy["snr_db"], abs=0.3)  # 16-bit rounding
    assert shifter.item(src, "noisy") == noisy  # a function of the id: the same file and numbers again
    for cond, factor in (("fast", 1.4), ("slow", 0.7)):
        item = shifter.item(src, cond)
        assert item["duration"] == pytest.approx(src["duration"] / factor, abs=2e-3)
        assert read_audio(item["audio"], SR)[0].numel() == round(item["duration"] * SR)
    assert shifter.item(src, "voices") == dict(src, condition="voices")


def test_spearman_against_brute_force():
    from asr.active.simulate import spearman

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 12).tolist(), rng.normal(size=12).tolist()  # ties in x

    def avg_ranks(v):
        return [sum(u < w for u in v) + (sum(u == w for u in v) - 1) / 2 for w in v]

    rx, ry = np.array(avg_ranks(x)), np.array(avg_ranks(y))
    assert spearman(x, y) == pytest.approx(float(np.corrcoef(rx, ry)[0, 1]), abs=1e-12)


def test_output_layer_params_and_per_second_scores(pool_dir, tmp_path, one_thread):
    base = dict(pool=str(pool_dir / "corpus.jsonl"), model=str(pool_dir / "model.pt"), strategy="egl", progress=False)
    run_selection(SelectOptions(**base, budget="4", out=str(tmp_path / "a.jsonl"), params=["head.linear"]))
    run_selection(SelectOptions(**base, budget="4", out=str(tmp_path / "b.jsonl"), params=["output"]))
    a, b = read_scores(tmp_path / "a.scores.tsv"), read_scores(tmp_path / "b.scores.tsv")
    assert [r["score"] for r in a] == [r["score"] for r in b]  # "output" is the CTC output layer
    run_selection(SelectOptions(**base, budget="0.001h", out=str(tmp_path / "c.jsonl"), params=["output"],
                                normalize="auto", work_dir=str(tmp_path / "b.work")))
    c = read_scores(tmp_path / "c.scores.tsv")  # hours budget: auto = per second, from the same cached shards
    assert [r["score"] for r in c] == pytest.approx([r["score"] / r["duration"] for r in b], rel=1e-3)
    picked = [r for r in c if r["selected"]]
    assert picked and sum(r["duration"] for r in picked) <= 3.6
