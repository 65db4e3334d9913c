"""Beam search of the attention encoder-decoder family and the CTC prefix scorer: beam 1 is greedy,
batching changes nothing, wide beams find the brute-force optimum, the CTC prefix probabilities
equal sums over alignments, and the length guard ends hypotheses that never emit <eos>."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from asr.decode.ctc_prefix_score import CTCPrefixScorer
from asr.decode.seq2seq import attention_beam_search, attention_decode_nbest
from asr.models.config import AttentionConfig, EncoderConfig, ModelConfig
from asr.models.seq2seq import EOS, AttentionModel, attention_decode, attention_greedy

KINDS = ["lstm", "transformer"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(kind: str, vocab: int = 12, ctc_weight: float = 0.0, seed: int = 0) -> AttentionModel:
    torch.manual_seed(seed)
    att = AttentionConfig(decoder=kind, dim=16, layers=2, heads=2, att_dim=8, conv_channels=3, conv_kernel=5,
                          dropout=0.0, ctc_weight=ctc_weight)
    cfg = ModelConfig(family="attention", encoder=EncoderConfig(dim=8, layers=1, dropout=0.0), attention=att)
    model = AttentionModel(cfg, vocab_size=vocab).eval()
    with torch.no_grad():  # peakier distributions than the default init: longer, more varied outputs
        model.decoder.output.weight.mul_(4.0)
        if model.ctc_head is not None:
            model.ctc_head.linear.weight.mul_(4.0)
    return model


def random_enc(model: AttentionModel, lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    T = max(int(lengths.max()), 1)
    enc = torch.randn(len(lengths), T, model.encoder.output_dim, generator=g)
    enc = enc * (torch.arange(T) < lengths.unsqueeze(1)).unsqueeze(-1)
    return enc, lengths


def att_score(model: AttentionModel, enc: torch.Tensor, tokens: list[int]) -> float:
    """Teacher-forced log p(tokens + <eos>) of one utterance ``enc (1, T, D)``."""
    ys_in = torch.tensor([[EOS] + tokens])
    with torch.no_grad():
        lp = model.decoder(enc, torch.tensor([enc.shape[1]]), ys_in).log_softmax(-1)[0]
    return float(lp.gather(1, torch.tensor(tokens + [EOS]).unsqueeze(1)).sum())


def ctc_score(log_probs: torch.Tensor, tokens: list[int]) -> float:
    """log p_ctc(tokens) of one utterance ``(T, V)`` (-inf when it does not fit)."""
    if not tokens:
        return float(log_probs[:, 0].sum())
    loss = F.ctc_loss(log_probs.double().unsqueeze(1), torch.tensor([tokens]), torch.tensor([log_probs.shape[0]]),
                      torch.tensor([len(tokens)]), reduction="none", zero_infinity=False)
    return -float(loss[0])


def sequences(labels: list[int], max_len: int):
    for n in range(max_len + 1):
        yield from (list(s) for s in itertools.product(labels, repeat=n))


@pytest.mark.parametrize("kind", KINDS)
def test_beam_one_is_greedy(kind):
    model = make_model(kind)
    enc, lengths = random_enc(model, [9, 6, 1, 0, 4])
    greedy = attention_greedy(model, enc, lengths)
    beam = attention_beam_search(model, enc, lengths, beam=1)
    assert [nb[0].tokens for nb in beam] == greedy
    assert len({len(g) for g in greedy}) > 2  # the case is not trivial
    assert all(len(nb) == 1 for nb in beam)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ctc_weight", [0.0, 0.3])
def test_batched_equals_one_by_one(kind, ctc_weight):
    model = make_model(kind, ctc_weight=max(ctc_weight, 0.1))
    enc, lengths = random_enc(model, [8, 3, 6, 1])
    batched = attention_beam_search(model, enc, lengths, beam=4, nbest=3, ctc_weight=ctc_weight)
    for b in range(len(lengths)):
        T = int(lengths[b])
        alone = attention_beam_search(model, enc[b:b + 1, :T], lengths[b:b + 1], beam=4, nbest=3,
                                      ctc_weight=ctc_weight)[0]
        assert [h.tokens for h in batched[b]] == [h.tokens for h in alone]
        for h, a in zip(batched[b], alone):
            assert h.score == pytest.approx(a.score, abs=1e-4)
        scores = [h.score for h in batched[b]]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scoring", [{}, {"length_penalty": 0.7}, {"length_norm": True}, {"ctc_weight": 0.5}])
def test_early_stop_changes_nothing(kind, scoring):
    model = make_model(kind, ctc_weight=0.3, seed=11)
    enc, lengths = random_enc(model, [12, 7, 10, 3], seed=5)
    stopped = attention_beam_search(model, enc, lengths, beam=3, **scoring)
    full = attention_beam_search(model, enc, lengths, beam=3, early_stop=False, **scoring)
    for a, b in zip(stopped, full):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-6)


class TableDecoder(torch.nn.Module):
    """A decoder whose next-token distribution is looked up by the prefix (ids: 3 = a, 4 = x)."""

    def __init__(self, table: dict, default: list[float]):
        super().__init__()
        self.table = {k: torch.tensor(v).log() for k, v in table.items()}
        self.default = torch.tensor(default).log()

    def init_state(self, enc, lengths):
        return {"prefix": torch.zeros(enc.shape[0], 0, dtype=torch.long)}

    def step(self, token, state, enc, mask):
        prefix = torch.cat([state["prefix"], token.unsqueeze(1)], dim=1)
        rows = [self.table.get(tuple(p[1:].tolist()), self.default) for p in prefix]
        return torch.stack(rows), {"prefix": prefix}

    @staticmethod
    def reorder_state(state, index):
        return {"prefix": state["prefix"].index_select(0, index)}


def table_model(table: dict):
    from types import SimpleNamespace

    #              pad    unk    eos   a      x
    default = [0.005, 0.005, 0.97, 0.01, 0.01]
    return SimpleNamespace(decoder=TableDecoder(table, default), ctc_head=None, max_len_ratio=1.0, vocab_size=5)


def test_search_goes_on_while_a_live_hypothesis_can_win():
    # "" ends first (-1.20), then "a" (-2.12): two ended, but the live "a x" (-0.73) goes on to win.
    model = table_model({(): [0.0, 0.0, 0.3, 0.6, 0.1], (3,): [0.0, 0.0, 0.2, 0.0, 0.8], (3, 4): [0, 0, 0.99, 0, 0.01]})
    enc, lengths = torch.zeros(1, 5, 2), torch.tensor([5])
    best = attention_beam_search(model, enc, lengths, beam=2)[0]
    assert [h.tokens for h in best] == [[3, 4], []]
    assert best[0].score == pytest.approx(math.log(0.6 * 0.8 * 0.99), abs=1e-6)


def test_search_bound_counts_the_length_bonus():
    # with a bonus of 1 per token "a x" (raw -1.40, +2) beats "" (-0.69) and "a" (-1.39 + 1), although its
    # raw score was below both ended ones when they ended
    model = table_model({(): [0.0, 0.0, 0.5, 0.5, 0.0], (3,): [0.0, 0.0, 0.5, 0.0, 0.5], (3, 4): [0, 0, 0.99, 0, 0.01]})
    enc, lengths = torch.zeros(1, 5, 2), torch.tensor([5])
    best = attention_beam_search(model, enc, lengths, beam=2, length_penalty=1.0)[0]
    assert best[0].tokens == [3, 4]
    assert best[0].score == pytest.approx(math.log(0.25 * 0.99) + 2.0, abs=1e-6)
    assert best[0].am_score == pytest.approx(math.log(0.25 * 0.99), abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_wide_beam_finds_brute_force_optimum(kind):
    model = make_model(kind, vocab=4, seed=3)
    enc, lengths = random_enc(model, [5])
    nbest = attention_beam_search(model, enc, lengths, beam=40, max_len=3)[0]
    brute = sorted(((att_score(model, enc, s), s) for s in sequences([0, 1, 3], 3)), reverse=True)
    assert len(brute) == 40 and len(nbest) == 40
    assert nbest[0].tokens == brute[0][1]
    assert nbest[0].score == pytest.approx(brute[0][0], abs=1e-4)
    assert [h.score for h in nbest] == pytest.approx([s for s, _ in brute], abs=1e-4)
    for h in nbest:
        assert h.score == pytest.approx(att_score(model, enc, h.tokens), abs=1e-4)
        assert h.am_score == pytest.approx(h.extra["att"], abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ctc_weight", [0.4, 1.0])
def test_joint_ctc_wide_beam_finds_brute_force_optimum(kind, ctc_weight):
    model = make_model(kind, vocab=4, ctc_weight=0.3, seed=5)
    enc, lengths = random_enc(model, [4], seed=2)
    hyps = attention_beam_search(model, enc, lengths, beam=16, max_len=3, ctc_weight=ctc_weight, ctc_beam=2)[0]
    with torch.no_grad():
        ctc_lp = model.ctc_head(enc)[0]
    brute = []
    for s in sequences([1, 3], 3):
        c = ctc_score(ctc_lp, s)
        a = att_score(model, enc, s) if ctc_weight < 1 else 0.0
        brute.append(((1 - ctc_weight) * a + ctc_weight * c, s))
    brute.sort(reverse=True)
    assert any(math.isinf(s) for s, _ in brute)  # some sequences do not fit the 4 frames
    assert hyps[0].tokens == brute[0][1]
    assert hyps[0].score == pytest.approx(brute[0][0], abs=1e-4)
    finite = [s for s, _ in brute if s > float("-inf")]
    assert [h.score for h in hyps] == pytest.approx(finite, abs=1e-4)
    for h in hyps:
        assert h.extra["ctc"] == pytest.approx(ctc_score(ctc_lp, h.tokens), abs=1e-4)


def test_pure_ctc_search_uses_all_labels_by_default():
    model = make_model("lstm", vocab=4, ctc_weight=0.3, seed=7)
    enc, lengths = random_enc(model, [5, 3], seed=4)
    out = attention_beam_search(model, enc, lengths, beam=16, max_len=3, ctc_weight=1.0)
    for b, nbest in enumerate(out):
        T = int(lengths[b])
        with torch.no_grad():
            ctc_lp = model.ctc_head(enc[b:b + 1, :T])[0]
        best = max(sequences([1, 3], 3), key=lambda s: ctc_score(ctc_lp, s))
        assert nbest[0].tokens == best
        assert nbest[0].score == pytest.approx(ctc_score(ctc_lp, best), abs=1e-4)


def test_length_penalty_and_norm():
    model = make_model("transformer", vocab=4, seed=3)
    enc, lengths = random_enc(model, [5])
    long = attention_beam_search(model, enc, lengths, beam=40, max_len=3, length_penalty=100.0)[0]
    assert len(long[0].tokens) == 3
    assert long[0].score == pytest.approx(long[0].am_score + 300.0, abs=1e-4)
    norm = attention_beam_search(model, enc, lengths, beam=40, max_len=3, length_norm=True)[0]
    brute = max(att_score(model, enc, s) / (len(s) + 1) for s in sequences([0, 1, 3], 3))
    assert norm[0].score == pytest.approx(brute, abs=1e-4)
    with pytest.raises(ValueError):
        attention_beam_search(model, enc, lengths, beam=2, length_norm=True, length_penalty=1.0)
    with pytest.raises(ValueError):
        attention_beam_search(model, enc, lengths, beam=2, ctc_weight=0.5)  # no CTC head


@pytest.mark.parametrize("kind", KINDS)
def test_length_guard_ends_a_model_that_never_emits_eos(kind):
    model = make_model(kind)
    with torch.no_grad():
        model.decoder.output.weight[EOS] = 0.0
        model.decoder.output.bias[EOS] = -1e4
    enc, lengths = random_enc(model, [4, 2, 0])
    out = attention_beam_search(model, enc, lengths, beam=3, max_len_ratio=1.5)
    for nbest, limit in zip(out, [6, 3, 0]):
        assert nbest and all(len(h.tokens) == limit for h in nbest)
        assert all(h.score < -1e3 for h in nbest)  # the forced <eos> is scored
    assert [nb[0].tokens for nb in out][2] == []


def test_decode_nbest_on_a_batch():
    model = make_model("lstm", ctc_weight=0.3)
    g = torch.Generator().manual_seed(0)
    batch = {"wav": torch.randn(2, 4000, generator=g), "wav_lengths": torch.tensor([4000, 2400])}
    one = attention_decode_nbest(model, batch, beam=1)
    assert [nb[0].tokens for nb in one] == attention_decode(model, batch)
    joint = attention_decode_nbest(model, batch, beam=3, ctc_weight=0.3, length_penalty=0.5)
    assert len(joint) == 2 and all(1 <= len(nb) <= 3 for nb in joint)


# --- CTC prefix scorer -------------------------------------------------------------------------

def collapse(path) -> list[int]:
    out, prev = [], None
    for p in path:
        if p != prev and p != 0:
            out.append(p)
        prev = p
    return out


def walk(scorer: CTCPrefixScorer, utt: int, tokens: list[int]) -> list[tuple[float, float]]:
    """(log psi(prefix), log p(prefix exactly)) for every prefix of ``tokens`` (the empty one first)."""
    state = scorer.init_state(torch.tensor([utt]))
    out = []
    for k in range(len(tokens) + 1):
        nxt = tokens[k] if k < len(tokens) else 3
        scores, ext = scorer.extend(state, torch.tensor([[nxt, EOS, 0]]))
        assert scores[0, 2] == float("-inf")  # blank is never a label
        out.append((float(state.score[0]), float(scores[0, 1])))
        state = scorer.select(state, ext, torch.tensor([0]), torch.tensor([0]))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ctc_prefix_scores_equal_sums_over_alignments(seed):
    g = torch.Generator().manual_seed(seed)
    V, lengths = 4, torch.tensor([5, 3, 0, 1])
    log_probs = (torch.randn(4, 5, V, generator=g) * 2).log_softmax(-1)
    scorer = CTCPrefixScorer(log_probs, lengths, blank=0, eos=EOS)
    for b in range(4):
        T = int(lengths[b])
        paths = [(collapse(p), float(sum(log_probs[b, t, s] for t, s in enumerate(p))))
                 for p in itertools.product(range(V), repeat=T)]

        def brute(pred):
            return torch.logsumexp(torch.tensor([lp for c, lp in paths if pred(c)] or [float("-inf")],
                                                dtype=torch.float64), 0).item()

        for seq in sequences([1, 3], 3):
            for k, (psi, full) in enumerate(walk(scorer, b, seq)):
                prefix = seq[:k]
                want_psi = brute(lambda c: c[:len(prefix)] == prefix)
                want_full = brute(lambda c: c == prefix)
                for got, want in ((psi, want_psi), (full, want_full)):
                    if want == float("-inf"):
                        assert got == float("-inf")
                    else:
                        assert got == pytest.approx(want, abs=1e-5)


def test_ctc_prefix_scorer_batches_hypotheses_and_candidates():
    g = torch.Generator().manual_seed(3)
    log_probs = torch.randn(2, 6, 5, generator=g).log_softmax(-1)
    scorer = CTCPrefixScorer(log_probs, torch.tensor([6, 4]))
    state = scorer.init_state(torch.tensor([0, 1, 1]))
    cands = torch.tensor([[1, 3, 4, EOS], [3, 1, 4, EOS], [4, 4, 1, EOS]])
    scores, ext = scorer.extend(state, cands)
    for r, u in enumerate([0, 1, 1]):
        single = CTCPrefixScorer(log_probs[u:u + 1, : [6, 4][u]], torch.tensor([[6, 4][u]]).view(1))
        s, _ = single.extend(single.init_state(torch.tensor([0])), cands[r:r + 1])
        assert torch.allclose(scores[r], s[0], atol=1e-9)
    assert bool((scores[:, :3] <= 0).all())
