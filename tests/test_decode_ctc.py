import itertools
import math

import pytest
import torch

from asr.decode.ctc import (WordSplitter, ctc_beam_search_batch, ctc_decode_nbest, ctc_prefix_beam_search,
                            ctc_sequence_logprob)
from asr.decode.lm import build_ngram
from asr.models.ctc import ctc_decode, ctc_greedy
from asr.text import CharTokenizer, SentencePieceTokenizer


def random_log_probs(T: int, V: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(scale * torch.randn(T, V, generator=g, dtype=torch.float64), -1)


def collapse(path) -> tuple:
    out, prev = [], 0
    for s in path:
        if s != 0 and s != prev:
            out.append(s)
        prev = s
    return tuple(out)


def brute_force(log_probs: torch.Tensor) -> dict[tuple, float]:
    """ln P(labels) of every labeling, by enumerating all V^T frame paths."""
    T, V = log_probs.shape
    lp = log_probs.tolist()
    paths: dict[tuple, list[float]] = {}
    for path in itertools.product(range(V), repeat=T):
        paths.setdefault(collapse(path), []).append(sum(lp[t][s] for t, s in enumerate(path)))
    return {lab: float(torch.logsumexp(torch.tensor(v, dtype=torch.float64), 0)) for lab, v in paths.items()}


def fusion_score(splitter, lm, weight, bonus, penalty, prefix, final=True):
    """What the fused search adds to a prefix's CTC log-probability: per completed word
    ``weight * ln P_lm + bonus`` (+ ``penalty`` if the LM does not know it); an open word the LM
    has no word beginning with costs ``penalty``; at the end the open word completes and ``</s>``
    is scored. Returns ``(fusion score, LM log-prob, words)``."""
    words, cur = [], ""
    for t in prefix:
        if splitter.starts_word[t] and cur:
            words.append(cur)
            cur = ""
        cur += splitter.text[t]
    if final and cur:
        words.append(cur)
    lm_lp = lm.score_sentence(words, eos=final) if lm is not None else 0.0
    score = weight * lm_lp + bonus * len(words)
    if lm is not None:
        score += penalty * sum(w not in lm for w in words)
        if not final and cur and not any(w.startswith(cur) for w in lm.vocab if w not in ("</s>", "<unk>")):
            score += penalty
    return score, lm_lp, len(words)


@pytest.mark.parametrize("seed", range(6))
def test_beam_one_is_greedy(seed):
    B, T, V = 3, 5 + 17 * seed, 3 + 5 * seed
    lp = torch.log_softmax(3 * torch.randn(B, T, V, generator=torch.Generator().manual_seed(seed)), -1)
    lengths = torch.tensor([T, max(T - 4, 0), T // 2])
    greedy = ctc_greedy(lp, lengths)
    nbest = ctc_beam_search_batch(lp, lengths, beam=1)
    assert [n[0].tokens for n in nbest] == greedy
    for b, n in enumerate(nbest):
        assert len(n) == 1
        assert n[0].am_score == pytest.approx(ctc_sequence_logprob(lp[b, :lengths[b]], greedy[b]), abs=1e-6)


@pytest.mark.parametrize("T,V", [(1, 2), (2, 3), (3, 3), (4, 2), (4, 3), (5, 3), (6, 2), (6, 3)])
@pytest.mark.parametrize("seed", range(3))
def test_wide_beam_matches_brute_force(T, V, seed):
    lp = random_log_probs(T, V, seed=100 * T + 10 * V + seed)
    truth = brute_force(lp)
    nbest = ctc_prefix_beam_search(lp, beam=50)
    best = max(truth.values())
    assert nbest[0].am_score == pytest.approx(best, abs=1e-5)
    assert truth[tuple(nbest[0].tokens)] == pytest.approx(best, abs=1e-5)
    scores = [h.score for h in nbest]
    assert scores == sorted(scores, reverse=True)
    assert len({tuple(h.tokens) for h in nbest}) == len(nbest) == min(50, len(truth))
    for h in nbest:
        assert h.am_score == pytest.approx(truth[tuple(h.tokens)], abs=1e-5)
        assert h.score == h.am_score and h.lm_score == 0.0
    # the N-best list is the top of the brute-force ranking
    ranked = sorted(truth.values(), reverse=True)[: len(nbest)]
    assert scores == pytest.approx(ranked, abs=1e-5)
    assert ctc_prefix_beam_search(lp, beam=50, nbest=2) == nbest[:2]


def test_am_score_is_ctc_forward_probability():
    lp = random_log_probs(40, 8, seed=3)
    for h in ctc_prefix_beam_search(lp, beam=8):
        assert h.am_score <= ctc_sequence_logprob(lp, h.tokens) + 1e-9  # a pruned beam may miss alignments
    small = random_log_probs(5, 4, seed=4)  # at most 1 + 3 + ... + 3^5 = 364 prefixes: none pruned
    for h in ctc_prefix_beam_search(small, beam=400):
        assert h.am_score == pytest.approx(ctc_sequence_logprob(small, h.tokens), abs=1e-9)


def test_prune_topk_and_empty_input():
    lp = random_log_probs(30, 10, seed=7)
    exact = ctc_prefix_beam_search(lp, beam=4)
    assert ctc_prefix_beam_search(lp, beam=4, prune_topk=9) == exact  # every non-blank token: the same search
    pruned = ctc_prefix_beam_search(lp, beam=4, prune_topk=2)
    assert 1 <= len(pruned) <= 4
    empty = ctc_prefix_beam_search(lp[:0], beam=4)
    assert [h.tokens for h in empty] == [[]] and empty[0].am_score == 0.0


CHARS = CharTokenizer([" ", "A", "B", "C", "T"])


def frames(tok: CharTokenizer, spec: list[dict[str, float]]) -> torch.Tensor:
    """Log-probs from per-frame {symbol: probability}; the rest of the mass goes to blank."""
    rows = []
    for probs in spec:
        row = torch.full((tok.vocab_size,), 1e-6, dtype=torch.float64)
        for s, p in probs.items():
            row[tok.index[s]] = p
        row[0] = max(1.0 - row[1:].sum(), 1e-6)
        rows.append(row / row.sum())
    return torch.stack(rows).log()


def test_lm_fusion_resolves_ambiguous_word():
    lm = build_ngram(["CAT", "A CAT", "THE CAT SAT", "CAT"], order=2)
    # acoustics: "BAT" slightly ahead of "CAT"
    lp = frames(CHARS, [{"B": 0.52, "C": 0.46}, {"A": 0.98}, {"T": 0.98}])
    plain = ctc_prefix_beam_search(lp, beam=8, tokenizer=CHARS)
    assert CHARS.decode(plain[0].tokens) == "BAT"
    fused = ctc_prefix_beam_search(lp, beam=8, tokenizer=CHARS, lm=lm, lm_weight=1.0)
    best = fused[0]
    assert CHARS.decode(best.tokens) == "CAT"
    assert best.lm_score == pytest.approx(lm.score_sentence(["CAT"]))
    assert best.score == pytest.approx(best.am_score + best.lm_score)
    assert best.am_score == pytest.approx(ctc_sequence_logprob(lp, best.tokens))
    # an LM with no weight only reports its score
    weightless = ctc_prefix_beam_search(lp, beam=8, tokenizer=CHARS, lm=lm, lm_weight=0.0)
    assert [h.tokens for h in weightless] == [h.tokens for h in plain]
    assert weightless[0].lm_score == pytest.approx(lm.score_sentence(["BAT"]))


def test_word_bonus_adds_words():
    # "AB" or "A B": the space is less likely than blank at frame 1
    lp = frames(CHARS, [{"A": 0.9}, {" ": 0.3}, {"B": 0.9}])
    plain = ctc_prefix_beam_search(lp, beam=4, tokenizer=CHARS)
    assert CHARS.decode(plain[0].tokens) == "AB" and plain[0].extra["words"] == 1
    bonus = ctc_prefix_beam_search(lp, beam=4, tokenizer=CHARS, word_bonus=2.0)
    assert CHARS.decode(bonus[0].tokens) == "A B" and bonus[0].extra["words"] == 2
    assert bonus[0].score == pytest.approx(bonus[0].am_score + 2 * 2.0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("penalty", [0.0, -2.0])
def test_fused_search_matches_brute_force(seed, penalty):
    tok = CharTokenizer([" ", "A"])  # ids: 3 = space, 4 = A
    lm = build_ngram(["A", "AA A", "A AA AA"], order=2)  # "AAA" and longer are out of vocabulary
    splitter = WordSplitter(tok)
    lp = random_log_probs(4, tok.vocab_size, seed=seed, scale=1.5)
    truth = brute_force(lp)
    weight, bonus = 0.8, 0.5

    def fused(labels):
        score, lm_lp, words = fusion_score(splitter, lm, weight, bonus, penalty, labels)
        return truth[labels] + score, lm_lp, words

    kw = dict(tokenizer=tok, lm=lm, lm_weight=weight, word_bonus=bonus, oov_penalty=penalty)
    nbest = ctc_prefix_beam_search(lp, beam=1000, **kw)
    assert len(nbest) == len(truth)
    assert nbest[0].score == pytest.approx(max(fused(lab)[0] for lab in truth), abs=1e-6)
    for h in nbest:
        score, lm_lp, words = fused(tuple(h.tokens))
        assert (h.score, h.lm_score, h.extra["words"]) == (pytest.approx(score, abs=1e-6), pytest.approx(lm_lp), words)
        assert h.am_score == pytest.approx(truth[tuple(h.tokens)], abs=1e-6)
    # with a beam of one the fused search still runs (not greedy); its am_score misses pruned alignments
    one = ctc_prefix_beam_search(lp, beam=1, **kw)[0]
    score, lm_lp, words = fused(tuple(one.tokens))
    assert one.lm_score == pytest.approx(lm_lp) and one.extra["words"] == words
    assert one.score == pytest.approx(one.am_score + score - truth[tuple(one.tokens)])
    assert one.am_score <= truth[tuple(one.tokens)] + 1e-9


def test_word_splitter_char_and_sentencepiece():
    chars = WordSplitter(CHARS)
    assert chars.words(CHARS.encode(" ab  c at ")) == ["AB", "C", "AT"]
    texts = ["the cat sat on the mat", "a dog ran after the cat", "the mat is flat"] * 20
    sp = SentencePieceTokenizer.train(texts, vocab_size=40)
    splitter = WordSplitter(sp)
    for t in ["the cat sat", "a flat mat", "cat"]:
        assert splitter.words(sp.encode(t)) == t.upper().split()


def test_needs_tokenizer_for_words():
    lp = random_log_probs(5, 4, seed=0)
    with pytest.raises(ValueError, match="tokenizer"):
        ctc_prefix_beam_search(lp, beam=2, word_bonus=1.0)


def test_decode_nbest_runs_the_model():
    from asr.models.config import EncoderConfig, ModelConfig
    from asr.models.ctc import CTCModel

    torch.manual_seed(0)
    model = CTCModel(ModelConfig(family="ctc", encoder=EncoderConfig(dim=16, layers=1)), vocab_size=8).eval()
    batch = {"wav": torch.randn(2, 8000), "wav_lengths": torch.tensor([8000, 5000])}
    tok = CharTokenizer([" ", "A", "B", "C", "D"])
    assert [n[0].tokens for n in ctc_decode_nbest(model, batch, beam=1)] == ctc_decode(model, batch)
    nbest = ctc_decode_nbest(model, batch, beam=4, tokenizer=tok, word_bonus=0.5)
    assert len(nbest) == 2 and all(1 <= len(n) <= 4 for n in nbest)


def reference_search(lp: torch.Tensor, beam: int, score_words) -> list[tuple[tuple, float]]:
    """Textbook prefix beam search: expand every prefix by every token, keep the best ``beam``.

    ``score_words(prefix, final)`` is the fusion score of the prefix's completed words."""
    def lae(a: float, b: float) -> float:
        return float(torch.logaddexp(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)))

    T, V = lp.shape
    lp = lp.tolist()
    beams = {(): (0.0, -math.inf)}
    for t in range(T):
        nxt: dict[tuple, list[float]] = {}
        for pre, (pb, pnb) in beams.items():
            ptot = lae(pb, pnb)
            cell = nxt.setdefault(pre, [-math.inf, -math.inf])
            cell[0] = lae(cell[0], ptot + lp[t][0])
            if pre:
                cell[1] = lae(cell[1], pnb + lp[t][pre[-1]])
            for c in range(1, V):
                new = pre + (c,)
                cell = nxt.setdefault(new, [-math.inf, -math.inf])
                cell[1] = lae(cell[1], (pb if pre and pre[-1] == c else ptot) + lp[t][c])
        ranked = sorted(nxt.items(), key=lambda kv: -(lae(*kv[1]) + score_words(kv[0], False)))
        beams = {k: tuple(v) for k, v in ranked[:beam]}
    final = [(pre, lae(pb, pnb) + score_words(pre, True)) for pre, (pb, pnb) in beams.items()]
    return sorted(final, key=lambda x: -x[1])


@pytest.mark.parametrize("beam", [1, 2, 4, 8])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("fuse", [False, True])
def test_search_equals_textbook_search(beam, seed, fuse):
    """The vectorised search (candidate pruning, frames that skip the expansion) loses nothing."""
    tok = CharTokenizer([" ", "A", "B"])
    lm = build_ngram(["AB A", "A B BAA", "BAA AB", "A"], order=3)
    splitter = WordSplitter(tok)
    weight, bonus, penalty = (0.7, 0.4, -1.5) if fuse else (0.0, 0.0, 0.0)
    if not fuse and beam == 1:
        beam = 3

    def score_words(prefix, final):
        if not fuse:
            return 0.0
        return fusion_score(splitter, lm, weight, bonus, penalty, prefix, final)[0]

    g = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(40, tok.vocab_size, generator=g, dtype=torch.float64)
    logits[:, 0] += 3  # mostly blank, like a trained model
    lp = torch.log_softmax(logits, -1)
    ref = reference_search(lp, beam, score_words)
    got = ctc_prefix_beam_search(lp, beam, tokenizer=tok, lm=lm if fuse else None, lm_weight=weight,
                                 word_bonus=bonus, oov_penalty=penalty)
    assert [tuple(h.tokens) for h in got] == [r[0] for r in ref]
    assert [h.score for h in got] == pytest.approx([r[1] for r in ref], abs=1e-6)


@pytest.mark.parametrize("fuse", [False, True])
def test_batch_equals_one_at_a_time(fuse):
    tok = CharTokenizer([" ", "A", "B"])
    lm = build_ngram(["AB A", "A B BA", "BA AB", "A"], order=2) if fuse else None
    g = torch.Generator().manual_seed(5)
    logits = 3 * torch.randn(5, 30, tok.vocab_size, generator=g)
    logits[..., 0] += 2
    lp = torch.log_softmax(logits, -1)
    lengths = torch.tensor([30, 0, 17, 1, 25])
    kw = dict(tokenizer=tok, lm=lm, lm_weight=0.6 if fuse else 0.0, word_bonus=0.3 if fuse else 0.0)
    batch = ctc_beam_search_batch(lp, lengths, beam=5, **kw)
    small = ctc_beam_search_batch(lp, lengths, beam=5, max_batch=2, **kw)
    for b, n in enumerate(lengths.tolist()):
        one = ctc_prefix_beam_search(lp[b, :n], beam=5, **kw)
        for hyps in (batch[b], small[b]):
            assert [h.tokens for h in hyps] == [h.tokens for h in one]
            assert [h.score for h in hyps] == pytest.approx([h.score for h in one], abs=1e-9)
            assert [h.am_score for h in hyps] == pytest.approx([h.am_score for h in one], abs=1e-9)


def test_fusion_with_sentencepiece_words():
    texts = ["the cat sat on the mat", "a dog ran after the cat", "the mat is flat"] * 20
    sp = SentencePieceTokenizer.train(texts, vocab_size=40)
    lm = build_ngram(texts, order=2)
    splitter = WordSplitter(sp)
    lp = random_log_probs(25, sp.vocab_size, seed=1, scale=3.0)
    for h in ctc_prefix_beam_search(lp, beam=6, tokenizer=sp, lm=lm, lm_weight=0.5, word_bonus=0.7, oov_penalty=-4):
        score, lm_lp, words = fusion_score(splitter, lm, 0.5, 0.7, -4, h.tokens)
        assert h.extra["words"] == words
        assert h.lm_score == pytest.approx(lm_lp)
        assert h.score == pytest.approx(h.am_score + score)
