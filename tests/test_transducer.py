"""The RNN-Transducer family: components, the loss against brute force, chunked loss,
batched greedy decoding, and a tiny model that learns to transcribe synthetic speech."""

from __future__ import annotations

import itertools
import shutil
import subprocess

import pytest
import torch

from asr.models import get_family
from asr.models.config import EncoderConfig, ModelConfig, SpecAugmentConfig, TransducerConfig
from asr.models.transducer import (
    Joiner,
    Predictor,
    StatelessPredictor,
    TransducerModel,
    transducer_greedy,
    transducer_loss,
)

V = 12


def tiny_config(predictor: str = "lstm", joint_chunk: int = 0, **enc) -> ModelConfig:
    enc = {"dim": 16, "layers": 1, "dropout": 0.0, **enc}
    return ModelConfig(
        family="transducer",
        specaugment=SpecAugmentConfig(enabled=False),
        encoder=EncoderConfig(**enc),
        transducer=TransducerConfig(predictor=predictor, pred_dim=16, joint_dim=24, context=3, joint_chunk=joint_chunk),
    )


def padded_batch(wav_lengths: list[int], token_lengths: list[int], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    B = len(wav_lengths)
    wav = torch.zeros(B, max(wav_lengths))
    tokens = torch.zeros(B, max(max(token_lengths), 1), dtype=torch.long)
    for i, (n, u) in enumerate(zip(wav_lengths, token_lengths)):
        wav[i, :n] = 0.1 * torch.randn(n, generator=g)
        tokens[i, :u] = torch.randint(3, V, (u,), generator=g)
    return {"wav": wav, "wav_lengths": torch.tensor(wav_lengths), "tokens": tokens,
            "token_lengths": torch.tensor(token_lengths)}


def test_component_shapes():
    tokens = torch.tensor([[4, 5, 6], [7, 0, 0]])
    predictors = [Predictor(V, 16, layers=2), StatelessPredictor(V, 16, context=2), StatelessPredictor(V, 16, context=1)]
    for pred in predictors:
        out = pred(tokens, torch.tensor([3, 1]))
        assert out.shape == (2, 4, 16)
        step_out, state = pred.step(torch.tensor([0, 0]), pred.init_state(2))
        assert step_out.shape == (2, 16) and all(s.shape[0] == 2 for s in state)
    joiner = Joiner(20, 16, 24, V)
    assert joiner(torch.randn(2, 7, 20), torch.randn(2, 4, 16)).shape == (2, 7, 4, V)
    assert joiner.step(torch.randn(3, 20), torch.randn(3, 16)).shape == (3, V)

    model = get_family("transducer").build(tiny_config(), V)
    assert isinstance(model, TransducerModel)
    enc, lengths = model.encode(torch.randn(2, 8000), torch.tensor([8000, 4000]))
    assert enc.shape == (2, 11, 32) and lengths.tolist() == [11, 5]
    logits, lengths = model.logits(torch.randn(2, 8000), torch.tensor([8000, 4000]), tokens)
    assert logits.shape == (2, 11, 4, V)


@pytest.mark.parametrize("kind", ["lstm", "stateless"])
def test_predictor_step_matches_forward(kind):
    torch.manual_seed(0)
    pred = Predictor(V, 16, layers=2) if kind == "lstm" else StatelessPredictor(V, 16, context=3)
    tokens = torch.tensor([[4, 5, 6, 7], [8, 9, 3, 10]])
    full = pred(tokens)
    state = pred.init_state(2)
    out, state = pred.step(torch.zeros(2, dtype=torch.long), state)
    steps = [out]
    for u in range(tokens.shape[1]):
        out, state = pred.step(tokens[:, u], state)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-5, atol=1e-5)


def brute_force_nll(log_probs: torch.Tensor, target: list[int]) -> torch.Tensor:
    """-log P(target) by enumerating every alignment. ``log_probs (T, U+1, V)``."""
    T, U = log_probs.shape[0], len(target)
    paths = []
    # an alignment is T blanks and U labels in T+U steps, the last step a blank
    for label_steps in itertools.combinations(range(T + U - 1), U):
        t = u = 0
        score = log_probs.new_zeros(())
        for step in range(T + U):
            if step in label_steps:
                score = score + log_probs[t, u, target[u]]
                u += 1
            else:
                score = score + log_probs[t, u, 0]
                t += 1
        assert (t, u) == (T, U)
        paths.append(score)
    return -torch.logsumexp(torch.stack(paths), 0)


@pytest.mark.parametrize("num_samples,target", [(3280, [4, 7]), (2960, [5, 5, 9])])
def test_loss_equals_brute_force(num_samples, target):
    torch.manual_seed(1)
    model = TransducerModel(tiny_config(), V).eval()
    batch = {"wav": 0.1 * torch.randn(1, num_samples), "wav_lengths": torch.tensor([num_samples]),
             "tokens": torch.tensor([target]), "token_lengths": torch.tensor([len(target)])}
    enc, lengths = model.encode(batch["wav"], batch["wav_lengths"])
    assert 2 <= int(lengths[0]) <= 4
    log_probs = model.joiner(enc, model.predictor(batch["tokens"]))[0].double().log_softmax(-1)
    expected = brute_force_nll(log_probs, target)
    out = transducer_loss(model, batch)
    assert out.weight == 1.0 and out.metrics["empty"] == 0.0
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-5, atol=1e-5)
    assert out.metrics["rnnt"] == pytest.approx(expected.item(), rel=1e-5)


def _loss_and_grads(model: TransducerModel, batch: dict, chunk: int):
    model.zero_grad()
    model.joint_chunk = chunk
    out = transducer_loss(model, batch)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("predictor", ["lstm", "stateless"])
def test_chunked_loss_matches_unchunked(predictor):
    torch.manual_seed(2)
    model = TransducerModel(tiny_config(predictor), V).eval()
    batch = padded_batch([8000, 3000, 6400, 4800, 9600], [5, 2, 7, 1, 3])
    ref, ref_grads = _loss_and_grads(model, batch, 0)
    assert ref.weight == 5.0 and len(ref_grads) == len(list(model.parameters()))
    for chunk in (1, 2):
        out, grads = _loss_and_grads(model, batch, chunk)
        assert out.weight == ref.weight
        torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-5)
        assert grads.keys() == ref_grads.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_empty_transcripts_excluded_and_counted():
    torch.manual_seed(3)
    model = TransducerModel(tiny_config(), V).eval()
    full = padded_batch([8000, 5000, 6000], [4, 0, 2])
    out = transducer_loss(model, full)
    assert out.weight == 2.0 and out.metrics["empty"] == 1.0
    kept = {k: v[[0, 2]] for k, v in full.items()}
    alone = transducer_loss(model, kept)
    torch.testing.assert_close(out.loss, alone.loss)
    assert alone.metrics["empty"] == 0.0

    none = transducer_loss(model, padded_batch([4000, 4000], [0, 0]))
    assert none.weight == 0.0 and none.metrics["empty"] == 2.0 and none.loss.item() == 0.0
    none.loss.backward()  # a batch with nothing to learn from must not break the training step


@pytest.mark.parametrize("predictor", ["lstm", "stateless"])
def test_greedy_batch_equals_single(predictor):
    torch.manual_seed(4)
    model = TransducerModel(tiny_config(predictor), V).eval()
    with torch.no_grad():  # favour labels so that the search emits (several per frame at times)
        model.joiner.out.bias[0] -= 2.0
    batch = padded_batch([8000, 3000, 6400, 480, 9600], [1] * 5)
    enc, lengths = model.encode(batch["wav"], batch["wav_lengths"])
    assert int(lengths.min()) == 0  # an utterance too short for one encoder frame
    hyps = transducer_greedy(model, enc, lengths, max_symbols=3)
    assert any(len(h) > int(n) for h, n in zip(hyps, lengths))  # some frames emitted several labels
    assert hyps[3] == []
    for i in range(len(hyps)):
        alone = transducer_greedy(model, enc[i : i + 1, : int(lengths[i])], lengths[i : i + 1], max_symbols=3)
        assert alone[0] == hyps[i]
        assert len(hyps[i]) <= 3 * int(lengths[i])
    assert get_family("transducer").decode(model, batch) == transducer_greedy(model, enc, lengths)


def test_stateless_predictor_trains():
    torch.manual_seed(5)
    model = TransducerModel(tiny_config("stateless", joint_chunk=2), V)
    batch = padded_batch([8000, 6000, 4000], [3, 2, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(15):
        out = transducer_loss(model, batch)
        opt.zero_grad()
        (out.loss / out.weight).backward()
        opt.step()
        first = first if first is not None else out.loss.item()
    print(f"loss after 15 steps / first loss: {out.loss.item() / first:.3f}")
    assert out.loss.item() < 0.7 * first  # measured here: 0.36 of the first loss
    model.eval()
    assert len(get_family("transducer").decode(model, batch)) == 3


def test_loss_under_autocast():
    torch.manual_seed(6)
    model = TransducerModel(tiny_config(), V)
    batch = padded_batch([8000, 5000], [3, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = transducer_loss(model, batch)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()


# ---------------------------------------------------------------------------
# learning test
# ---------------------------------------------------------------------------
TEXTS = ["yes no", "go stop", "up down"]


def _cer(refs: list[str], hyps: list[str]) -> float:
    def edits(a: str, b: str) -> int:
        row = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            prev, row[0] = row[0], i
            for j, cb in enumerate(b, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
        return row[-1]

    return sum(edits(r, h) for r, h in zip(refs, hyps)) / sum(len(r) for r in refs)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_tiny_transducer_overfits_synthetic_speech(tmp_path):
    from asr.data.dataset import AudioDataset, collate_batch
    from asr.features import compute_cmvn_stats
    from asr.text import CharTokenizer, normalize_text

    items = []
    for i, text in enumerate(TEXTS):
        path = tmp_path / f"utt{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), "-s", "200", text], check=True, capture_output=True)
        items.append({"id": f"utt{i}", "audio": str(path), "text": text})
    tok = CharTokenizer.from_texts(TEXTS)
    dataset = AudioDataset(items, tokenizer=tok)
    batch = collate_batch([dataset[i] for i in range(len(dataset))])

    torch.manual_seed(0)
    config = tiny_config(dim=32, subsampling=4, dropout=0.0)
    config.transducer = TransducerConfig(pred_dim=32, joint_dim=32, joint_chunk=2)
    family = get_family("transducer")
    model = family.build(config, tok.vocab_size)
    mean, std, _ = compute_cmvn_stats(items, model.frontend.features, progress=False)
    model.frontend.set_cmvn(mean, std)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)

    refs = [normalize_text(t) for t in TEXTS]
    hyps: list[str] = []
    for step in range(1, 301):
        model.train()
        out = family.loss(model, batch)
        opt.zero_grad()
        (out.loss / out.weight).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if step % 25 == 0:
            model.eval()
            hyps = [tok.decode(h) for h in family.decode(model, batch)]
            if hyps == refs:
                break
    print(f"step {step}: {hyps}")
    assert _cer(refs, hyps) <= 0.1, (step, hyps)  # measured here: exact at step 75 of 300
