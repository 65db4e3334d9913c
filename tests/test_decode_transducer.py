"""RNN-T beam searches against brute force on tiny random models.

On T <= 3 frames and a vocabulary of 3 (blank + 2 labels) the probability of every label
sequence is computed by enumeration, independently of the decoders: the predictor's
full-sequence ``forward`` gives the output after each prefix, the joiner's log-softmax the
token probabilities, and a forward recursion over the (frame, label) lattice sums over all
alignments (any number of symbols per frame for the standard search; one token per frame,
a label moving on to the next frame, for the modified search).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torchaudio.functional as AF

from asr.decode.transducer import modified_beam_search, transducer_beam_search, transducer_decode_nbest
from asr.models.config import EncoderConfig, ModelConfig, SpecAugmentConfig, TransducerConfig
from asr.models.transducer import TransducerModel, transducer_greedy


def tiny_model(vocab: int, predictor: str = "lstm", seed: int = 0, sharpen: float = 1.0,
               blank_bias: float = 0.0) -> TransducerModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        family="transducer",
        specaugment=SpecAugmentConfig(enabled=False),
        encoder=EncoderConfig(dim=8, layers=1, dropout=0.0),
        transducer=TransducerConfig(predictor=predictor, pred_dim=8, joint_dim=8, context=2),
    )
    model = TransducerModel(cfg, vocab).eval()
    with torch.no_grad():  # peakier, less uniform distributions make the searches disagree more
        model.joiner.out.weight.mul_(sharpen)
        model.joiner.out.bias[0] += blank_bias
    return model


def random_enc(model: TransducerModel, *shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, model.encoder.output_dim, generator=g)


def lattice_log_probs(model: TransducerModel, enc: torch.Tensor, seq: tuple[int, ...]) -> torch.Tensor:
    """``(T, U+1, V)`` log-probabilities of every token at every (frame, labels emitted)."""
    with torch.no_grad():
        pred = model.predictor(torch.tensor([seq], dtype=torch.long).view(1, len(seq)))  # (1, U+1, D)
        return model.joiner(enc.unsqueeze(0), pred)[0].log_softmax(-1).double()


def logp_any_symbols(lp: torch.Tensor, seq: tuple[int, ...]) -> float:
    """log P(seq): all alignments, any number of labels per frame, a blank ends each frame."""
    T, U = lp.shape[0], len(seq)
    alpha = [[-math.inf] * (U + 1) for _ in range(T)]
    for t in range(T):
        for u in range(U + 1):
            if t == 0 and u == 0:
                a = 0.0
            else:
                a = -math.inf
                if t > 0:
                    a = logadd(a, alpha[t - 1][u] + float(lp[t - 1, u, 0]))
                if u > 0:
                    a = logadd(a, alpha[t][u - 1] + float(lp[t, u - 1, seq[u - 1]]))
            alpha[t][u] = a
    return alpha[T - 1][U] + float(lp[T - 1, U, 0])


def logp_one_symbol(lp: torch.Tensor, seq: tuple[int, ...]) -> float:
    """log P(seq) when every frame takes exactly one token (blank or a label)."""
    T, U = lp.shape[0], len(seq)
    total = -math.inf
    for frames in itertools.combinations(range(T), U):  # the frames that emit the labels
        s, u = 0.0, 0
        for t in range(T):
            if u < U and frames[u] == t:
                s += float(lp[t, u, seq[u]])
                u += 1
            else:
                s += float(lp[t, u, 0])
        total = logadd(total, s)
    return total


def logadd(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def all_sequences(vocab: int, max_len: int):
    for n in range(max_len + 1):
        yield from itertools.product(range(1, vocab), repeat=n)


def exhaustive(model, enc, max_len, fn) -> dict[tuple[int, ...], float]:
    return {seq: fn(lattice_log_probs(model, enc, seq), seq) for seq in all_sequences(model.vocab_size, max_len)}


def assert_sorted(nbest):
    scores = [h.score for h in nbest]
    assert scores == sorted(scores, reverse=True)
    assert len({tuple(h.tokens) for h in nbest}) == len(nbest)  # duplicates were merged


def test_enumeration_matches_rnnt_loss():
    """The brute-force probability agrees with torchaudio's RNN-T loss (checks the checker)."""
    model = tiny_model(4, sharpen=3.0)
    enc = random_enc(model, 3)
    for seq in [(1,), (2, 3), (3, 1, 1), (1, 2, 3, 2)]:
        lp = lattice_log_probs(model, enc, seq)
        loss = AF.rnnt_loss(lp.float().unsqueeze(0), torch.tensor([seq], dtype=torch.int32),
                            torch.tensor([3], dtype=torch.int32), torch.tensor([len(seq)], dtype=torch.int32),
                            blank=0, reduction="none", fused_log_softmax=False)
        assert logp_any_symbols(lp, seq) == pytest.approx(-float(loss), abs=1e-4)


@pytest.mark.parametrize("predictor", ["lstm", "stateless"])
@pytest.mark.parametrize("T,seed", [(1, 0), (2, 1), (3, 2), (3, 3), (3, 4)])
def test_beam_search_exact_with_wide_beam(predictor, T, seed):
    """With a beam wider than every reachable prefix the search is exhaustive: every sequence of
    <= max_symbols_per_frame labels is found, with its exact probability (all alignments)."""
    model = tiny_model(3, predictor, seed=seed, sharpen=4.0, blank_bias=1.0)
    enc = random_enc(model, T, seed=seed)
    k = 3
    truth = exhaustive(model, enc, k, logp_any_symbols)
    nbest = transducer_beam_search(model, enc, beam=1024, nbest=1024, max_symbols_per_frame=k)
    assert_sorted(nbest)
    found = {tuple(h.tokens): h.am_score for h in nbest if len(h.tokens) <= k}
    assert found.keys() == truth.keys()
    for seq, lp in truth.items():
        assert found[seq] == pytest.approx(lp, abs=1e-4), seq


def peaky_model(c: float = 4.0, after: float = 0.5, repeat: float = 2.0) -> TransducerModel:
    """A hand-set model over blank + 2 labels whose encoder frames each favour one token.

    Stateless predictor with one token of context: its output is a column of ``M`` picked by
    the last label (a blank bonus after a label, a penalty on repeating it). Joiner:
    ``c * tanh(enc[:3] + M[:, last])``. Most mass is on sequences of at most one label per
    frame, so enumerating sequences up to length 6 leaves almost nothing out.
    """
    cfg = ModelConfig(
        family="transducer", specaugment=SpecAugmentConfig(enabled=False),
        encoder=EncoderConfig(dim=8, layers=1, dropout=0.0),
        transducer=TransducerConfig(predictor="stateless", pred_dim=3, joint_dim=3, context=1),
    )
    model = TransducerModel(cfg, 3).eval()
    M = torch.zeros(3, 3)
    M[0, 1:] = after
    M[1, 1] = M[2, 2] = -repeat
    with torch.no_grad():
        p, j = model.predictor, model.joiner
        p.embedding.weight.copy_(torch.eye(3))
        p.linear.weight.copy_(M)
        p.linear.bias.zero_()
        j.enc_proj.weight.zero_()
        j.enc_proj.weight[:, :3] = torch.eye(3)
        j.enc_proj.bias.zero_()
        j.pred_proj.weight.copy_(torch.eye(3))
        j.out.weight.copy_(c * torch.eye(3))
        j.out.bias.zero_()
    return model


def peaky_enc(model: TransducerModel, T: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    favour = torch.tensor([[1.0, -1.0, -1.0], [0.0, 1.0, -1.5], [0.0, -1.5, 1.0]])  # blank, label 1, label 2
    enc = torch.zeros(T, model.encoder.output_dim)
    enc[:, :3] = favour[torch.randint(0, 3, (T,), generator=g)] + 0.5 * torch.randn(T, 3, generator=g)
    return enc


@pytest.mark.parametrize("T,seed", [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 3), (3, 4), (3, 8), (3, 14)])
def test_beam_search_finds_most_probable_sequence(T, seed):
    model = peaky_model()
    enc = peaky_enc(model, T, seed)
    truth = exhaustive(model, enc, 6, logp_any_symbols)
    best_seq, best_lp = max(truth.items(), key=lambda kv: kv[1])
    leftover = 1.0 - sum(math.exp(v) for v in truth.values())  # mass of all sequences longer than 6
    assert leftover < math.exp(best_lp)  # so no sequence left out can beat the best one
    for beam, k in [(1024, 3), (16, 4)]:
        nbest = transducer_beam_search(model, enc, beam=beam, nbest=beam, max_symbols_per_frame=k)
        assert_sorted(nbest)
        assert tuple(nbest[0].tokens) == best_seq
        assert nbest[0].am_score == pytest.approx(best_lp, abs=1e-4)
        for h in nbest:
            if len(h.tokens) <= 3:
                assert h.am_score <= truth[tuple(h.tokens)] + 1e-5


@pytest.mark.parametrize("seed", range(4))
def test_beam_search_narrow_beam_is_a_lower_bound(seed):
    """A narrow beam explores fewer alignments: its scores never exceed the true probability."""
    model = tiny_model(3, seed=seed, sharpen=4.0, blank_bias=1.0)
    enc = random_enc(model, 3, seed=seed)
    truth = exhaustive(model, enc, 4, logp_any_symbols)
    for beam in (1, 2, 4):
        nbest = transducer_beam_search(model, enc, beam=beam, max_symbols_per_frame=4)
        assert 1 <= len(nbest) <= beam
        assert_sorted(nbest)
        for h in nbest:
            if tuple(h.tokens) in truth:
                assert h.am_score <= truth[tuple(h.tokens)] + 1e-5


def test_beam_search_length_norm():
    """length_norm ranks by am_score / (length + 1); with nothing pruned it re-ranks the same set."""
    model = tiny_model(3, seed=6, sharpen=3.0, blank_bias=1.0)
    enc = random_enc(model, 3, seed=6)
    plain = transducer_beam_search(model, enc, beam=1024, nbest=1024, max_symbols_per_frame=2)
    normed = transducer_beam_search(model, enc, beam=1024, nbest=1024, max_symbols_per_frame=2, length_norm=True)
    assert_sorted(normed)
    assert {tuple(h.tokens): h.am_score for h in plain} == pytest.approx({tuple(h.tokens): h.am_score for h in normed})
    for h in normed:
        assert h.score == pytest.approx(h.am_score / (len(h.tokens) + 1))
    assert [h.tokens for h in normed] != [h.tokens for h in plain]  # the ranking did change
    model = tiny_model(6, seed=6, sharpen=3.0)
    narrow = transducer_beam_search(model, random_enc(model, 10, seed=6), beam=4, length_norm=True)
    assert_sorted(narrow)
    assert len(narrow) == 4


def test_beam_search_beats_greedy_on_a_random_model():
    model = tiny_model(6, sharpen=3.0)
    enc = random_enc(model, 12)
    greedy = transducer_greedy(model, enc.unsqueeze(0), torch.tensor([12]))[0]
    g_lp = logp_any_symbols(lattice_log_probs(model, enc, tuple(greedy)), tuple(greedy))
    best = transducer_beam_search(model, enc, beam=8)[0]
    assert best.am_score >= g_lp - 1e-4


@pytest.mark.parametrize("predictor", ["lstm", "stateless"])
@pytest.mark.parametrize("T,seed", [(1, 0), (2, 1), (3, 2), (3, 3), (3, 5)])
def test_modified_beam_search_exact_with_wide_beam(predictor, T, seed):
    model = tiny_model(3, predictor, seed=seed, sharpen=4.0)
    enc = random_enc(model, T, seed=seed)
    truth = exhaustive(model, enc, T, logp_one_symbol)
    assert sum(math.exp(v) for v in truth.values()) == pytest.approx(1.0, abs=1e-6)
    best_seq, best_lp = max(truth.items(), key=lambda kv: kv[1])
    (nbest,) = modified_beam_search(model, enc.unsqueeze(0), torch.tensor([T]), beam=64)
    assert_sorted(nbest)
    assert tuple(nbest[0].tokens) == best_seq
    assert len(nbest) == len(truth)  # every sequence, each once
    for h in nbest:
        assert h.am_score == pytest.approx(truth[tuple(h.tokens)], abs=1e-5), h.tokens


@pytest.mark.parametrize("T,seed", [(2, 1), (3, 1), (3, 3), (3, 8)])
def test_modified_beam_search_peaky_model(T, seed):
    model = peaky_model()
    enc = peaky_enc(model, T, seed)
    truth = exhaustive(model, enc, T, logp_one_symbol)
    best_seq, best_lp = max(truth.items(), key=lambda kv: kv[1])
    for beam in (64, 4):
        (nbest,) = modified_beam_search(model, enc.unsqueeze(0), torch.tensor([T]), beam=beam)
        assert_sorted(nbest)
        assert tuple(nbest[0].tokens) == best_seq
        assert nbest[0].am_score == pytest.approx(best_lp, abs=1e-5)


@pytest.mark.parametrize("predictor", ["lstm", "stateless"])
def test_modified_beam_one_is_greedy_one_symbol(predictor):
    model = tiny_model(8, predictor, seed=3, sharpen=2.0)
    enc = random_enc(model, 4, 15, seed=3)
    lengths = torch.tensor([15, 9, 1, 12])
    greedy = transducer_greedy(model, enc, lengths, max_symbols=1)
    beam1 = modified_beam_search(model, enc, lengths, beam=1)
    assert [n[0].tokens for n in beam1] == greedy
    assert any(greedy)  # not a trivially empty comparison


@pytest.mark.parametrize("predictor", ["lstm", "stateless"])
def test_modified_beam_batched_equals_per_utterance(predictor):
    model = tiny_model(7, predictor, seed=4, sharpen=2.0)
    enc = random_enc(model, 3, 11, seed=4)
    lengths = torch.tensor([7, 11, 4])
    batched = modified_beam_search(model, enc, lengths, beam=4, nbest=3)
    for b in range(3):
        (single,) = modified_beam_search(model, enc[b : b + 1, : lengths[b]], lengths[b : b + 1], beam=4, nbest=3)
        assert [h.tokens for h in batched[b]] == [h.tokens for h in single]
        assert [h.score for h in batched[b]] == pytest.approx([h.score for h in single], abs=1e-5)
        assert len(single) == 3
        assert_sorted(single)


def test_decode_nbest_from_audio():
    model = tiny_model(6, seed=5, sharpen=2.0)
    g = torch.Generator().manual_seed(0)
    batch = {"wav": 0.1 * torch.randn(2, 4000, generator=g), "wav_lengths": torch.tensor([4000, 2500])}
    with torch.no_grad():
        enc, lengths = model.encode(batch["wav"], batch["wav_lengths"])
    greedy = transducer_greedy(model, enc, lengths, max_symbols=1)
    out = transducer_decode_nbest(model, batch, decoder="modified_beam", beam=1)
    assert [n[0].tokens for n in out] == greedy
    out = transducer_decode_nbest(model, batch, decoder="beam", beam=3)
    assert len(out) == 2 and all(1 <= len(n) <= 3 for n in out)
    assert out[1][0].tokens == transducer_beam_search(model, enc[1, : lengths[1]], beam=3)[0].tokens
    with pytest.raises(ValueError):
        transducer_decode_nbest(model, batch, decoder="nope")
