"""CTC decoding: prefix beam search with optional word-level n-gram shallow fusion.

The search keeps, for every prefix (collapsed label sequence) in the beam, the log-probability
of all alignments of the frames so far that end in blank (``p_b``) and in its last label
(``p_nb``); alignments that collapse to the same prefix are merged, so a hypothesis'
``am_score`` is the exact CTC log-probability of its labels (log-sum over alignments) whenever
the beam kept all of them. Blank is id 0.

With a tokenizer, words are read off the prefixes: a character tokenizer's space token after
a non-space ends a word; a SentencePiece piece starting with "▁" ends the word before it. When
a token ends a word (and at the end of the utterance, where ``</s>`` is scored too) the prefix
gains ``lm_weight * ln P_lm(word | history) + word_bonus``; the LM state rides with the prefix.

Each frame is one vectorised step over the beams of a whole batch of utterances: every
prefix's extension by every candidate token is a cell of a ``(utterances, beam, K)`` score array
and each utterance's next beam is its top ``beam`` cells plus the prefixes that stay (blank or
repeated last label); :func:`ctc_beam_search_batch` searching many utterances at once is what
makes the search fast in Python (:func:`ctc_prefix_beam_search` is the batch of one). The
candidate tokens default to the ``beam + 1`` best of the frame among tokens that end a word and
among those that do not, which loses nothing: any other token's extension is beaten by ``beam``
extensions of the same prefix. A frame where no extension can beat the worst prefix of a full
beam only updates the prefixes' probabilities; this is exact too. ``prune_topk`` narrows the
candidates to the frame's ``k`` best tokens and ``beam_threshold`` drops prefixes that far below
the best (both faster and approximate). Prefixes live in a trie of integer nodes; beam 1 without
fusion is :func:`asr.models.ctc.ctc_greedy` itself.

Example:
    >>> lp = torch.log_softmax(torch.randn(20, 5, generator=torch.Generator().manual_seed(0)), -1)
    >>> nbest = ctc_prefix_beam_search(lp, beam=4)
    >>> len(nbest) <= 4 and nbest[0].score >= nbest[-1].score
    True
    >>> ctc_prefix_beam_search(lp, beam=1)[0].tokens == ctc_greedy(lp[None], torch.tensor([20]))[0]
    True
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from asr.decode.hypothesis import Hypothesis, NBest
from asr.decode.lm import EOS, NGramLM
from asr.errors import UsageError
from asr.models.ctc import BLANK, ctc_greedy
from asr.text import Tokenizer

NEG_INF = -math.inf
DEFAULT_OOV_PENALTY = -10.0  # natural-log units, added to the fused score (see ctc_prefix_beam_search)


class WordSplitter:
    """How the tokens of a tokenizer build words: per token id, whether it starts a new word
    (ending the one before) and the text it adds to the current word."""

    def __init__(self, tokenizer: Tokenizer):
        V = tokenizer.vocab_size
        self.starts_word = np.zeros(V, dtype=bool)
        self.text = [""] * V
        if hasattr(tokenizer, "symbols"):  # characters: the space separates words
            for i, s in enumerate(tokenizer.symbols):
                if s == " ":
                    self.starts_word[i] = True
                elif i >= 3:
                    self.text[i] = s
        elif hasattr(tokenizer, "sp"):  # SentencePiece: "▁" begins a word
            for i in range(3, V):
                piece = tokenizer.sp.id_to_piece(i)
                self.starts_word[i] = piece.startswith("\u2581")
                self.text[i] = piece.lstrip("\u2581")
        else:
            raise TypeError(f"cannot find word boundaries for a {type(tokenizer).__name__}")
        self.text[tokenizer.unk_id] = "\x00"  # makes the word out of vocabulary (<unk>)

    def words(self, tokens: Sequence[int]) -> list[str]:
        out, cur = [], ""
        for t in tokens:
            if self.starts_word[t] and cur:
                out.append(cur)
                cur = ""
            cur += self.text[t]
        if cur:
            out.append(cur)
        return out


class _Fusion:
    """The word-level scoring of a search: LM, word bonus and out-of-vocabulary penalty over a
    :class:`WordSplitter`.

    With an LM and a (negative) ``oov_penalty``, a word the LM does not know costs the penalty
    on top of its ``<unk>`` probability, and so does a prefix whose open word is no longer the
    beginning of any LM word (once, until the word ends). ``lexical_info(partial)`` gives a row of
    ``table``: the penalty of the open word after each token, for prefixes whose open word is
    ``partial``. Both are cached per search."""

    def __init__(self, splitter: WordSplitter, lm: NGramLM | None, lm_weight: float, word_bonus: float,
                 oov_penalty: float = 0.0):
        if oov_penalty > 0:
            raise UsageError(f"oov_penalty must be <= 0, got {oov_penalty}")
        self.splitter, self.lm, self.lm_weight, self.word_bonus = splitter, lm, lm_weight, word_bonus
        self.oov_penalty = oov_penalty if lm is not None else 0.0
        self.prefixes = lm.word_prefixes if self.oov_penalty else None
        self._lexical: dict[str, tuple[float, int]] = {}
        self._close: dict[tuple, tuple[float, float, object]] = {}
        self.table = np.zeros((16, len(splitter.text)))

    def word(self, state, word: str) -> tuple[float, float, object]:
        """``(fused score, LM log-prob, next LM state)`` of completing ``word``."""
        if self.lm is None:
            return self.word_bonus, 0.0, state
        lp, nxt = self.lm.score(state, word)
        fused = self.lm_weight * lp + self.word_bonus
        if self.oov_penalty and word not in self.lm:
            fused += self.oov_penalty
        return fused, lp, nxt

    def close(self, state, partial: str) -> tuple[float, float, object]:
        """:meth:`word` of the open word ``partial`` (nothing when empty), cached."""
        key = (state, partial)
        hit = self._close.get(key)
        if hit is None:
            hit = self._close[key] = self.word(state, partial) if partial else (0.0, 0.0, state)
        return hit

    def lexical_info(self, partial: str) -> tuple[float, int]:
        """``(penalty, penalty row)`` of a prefix whose open word is ``partial``, cached."""
        hit = self._lexical.get(partial)
        if hit is None:
            if self.prefixes is None:
                hit = (0.0, 0)
            else:
                row = len(self._lexical)
                if row == len(self.table):
                    self.table = np.concatenate([self.table, np.zeros_like(self.table)])
                text, starts, prefixes = self.splitter.text, self.splitter.starts_word, self.prefixes
                self.table[row] = [0.0 if (text[c] if starts[c] else partial + text[c]) in prefixes
                                   else self.oov_penalty for c in range(len(text))]
                hit = (0.0 if partial in prefixes else self.oov_penalty, row)
            self._lexical[partial] = hit
        return hit

    def end(self, state) -> tuple[float, float]:
        if self.lm is None:
            return 0.0, 0.0
        lp, _ = self.lm.score(state, EOS)
        return self.lm_weight * lp, lp

    @property
    def start_state(self):
        return self.lm.start_state if self.lm is not None else None

    def score_tokens(self, tokens: Sequence[int]) -> tuple[float, float, int]:
        """``(fused score, LM log-prob, words)`` of a complete token sequence."""
        state, fused, lm_total = self.start_state, 0.0, 0.0
        words = self.splitter.words(tokens)
        for w in words:
            f, lp, state = self.word(state, w)
            fused, lm_total = fused + f, lm_total + lp
        f, lp = self.end(state)
        return fused + f, lm_total + lp, len(words)


def _logaddexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def ctc_sequence_logprob(log_probs: torch.Tensor, tokens: Sequence[int]) -> float:
    """ln P(tokens | log_probs (T, V)) summed over all CTC alignments (float64)."""
    T = log_probs.shape[0]
    lp = log_probs.detach().to("cpu", torch.float64)[:, None, :]
    target = torch.tensor([list(tokens)], dtype=torch.long)
    nll = F.ctc_loss(lp, target, torch.tensor([T]), torch.tensor([len(tokens)]), blank=BLANK,
                     reduction="none", zero_infinity=False)
    return -float(nll[0])


def _frame_candidates(lp: np.ndarray, k: int, boundary: np.ndarray | None, prune_topk: int | None,
                      slack: float = 0.0) -> np.ndarray:
    """Candidate token ids of every frame ``(T, K)`` (blank excluded; see the module doc).

    Per class of tokens (ending a word or not), the ``k`` best of the frame and, with a
    ``slack`` < 0 (a penalty some extensions may get and others not), every token within
    ``-slack`` of the ``k``-th best; rows with fewer are padded with 0 (blank).
    """
    T, V = lp.shape
    work = lp.copy()
    work[:, BLANK] = NEG_INF
    if prune_topk is not None:
        k_eff = min(prune_topk, V - 1)
        return np.argpartition(-work, k_eff - 1, axis=1)[:, :k_eff] if k_eff < V - 1 else \
            np.broadcast_to(np.arange(1, V), (T, V - 1))
    ids = np.arange(1, V)
    if boundary is None or not boundary[1:].any() or boundary[1:].all():
        classes = [ids]
    else:
        classes = [ids[boundary[1:]], ids[~boundary[1:]]]
    cols = []
    for ids in classes:
        if k >= len(ids):
            cols.append(np.broadcast_to(ids, (T, len(ids))))
            continue
        sub = work[:, ids]
        if not slack:
            cols.append(ids[np.argpartition(-sub, k - 1, axis=1)[:, :k]])
            continue
        order = np.argsort(-sub, axis=1, kind="stable")
        ranked = np.take_along_axis(sub, order, axis=1)
        count = (ranked >= ranked[:, k - 1:k] + slack).sum(1)
        width = int(count.max()) if T else k
        chosen = ids[order[:, :width]]
        chosen[np.arange(width)[None, :] >= count[:, None]] = BLANK
        cols.append(chosen)
    return np.concatenate(cols, axis=1) if len(cols) > 1 else np.ascontiguousarray(cols[0])


def ctc_prefix_beam_search(
    log_probs: torch.Tensor,
    beam: int,
    tokenizer: Tokenizer | None = None,
    lm: NGramLM | None = None,
    lm_weight: float = 0.0,
    word_bonus: float = 0.0,
    prune_topk: int | None = None,
    nbest: int | None = None,
    beam_threshold: float | None = None,
    oov_penalty: float = DEFAULT_OOV_PENALTY,
) -> NBest:
    """CTC prefix beam search over one utterance's log-probabilities ``(T, V)``.

    For many utterances :func:`ctc_beam_search_batch` is several times faster (one set of
    array operations per frame serves them all).

    Args:
        log_probs: ``(T, V)`` log-softmax outputs, blank = 0.
        beam: prefixes kept per frame. ``beam=1`` without LM or bonus is exactly
            :func:`asr.models.ctc.ctc_greedy` (best path).
        tokenizer: needed for word boundaries (LM fusion, word bonus).
        lm, lm_weight, word_bonus: shallow fusion; each completed word adds
            ``lm_weight * ln P_lm(word | history) + word_bonus``, the end adds ``lm_weight * ln P(</s>)``.
        prune_topk: extend each frame by its ``k`` most likely tokens only (approximate).
        nbest: hypotheses returned (default: all of the final beam).
        beam_threshold: also drop prefixes scoring more than this below the frame's best
            (approximate; like pyctcdecode's ``beam_prune_logp`` and flashlight's ``beam_threshold``).
        oov_penalty: with an LM, added (<= 0) for each word the LM does not know, and to a
            prefix as soon as its open word stops being the beginning of an LM word.

    Returns:
        hypotheses best first; ``am_score`` = CTC log-probability of the tokens,
        ``lm_score`` = LM log-probability (natural log), ``score`` = the fused ranking score;
        ``extra["words"]`` counts words when a tokenizer is given.
    """
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must be (T, V), got {tuple(log_probs.shape)}")
    return ctc_beam_search_batch(log_probs[None], torch.tensor([log_probs.shape[0]]), beam, tokenizer=tokenizer,
                                 lm=lm, lm_weight=lm_weight, word_bonus=word_bonus, prune_topk=prune_topk,
                                 nbest=nbest, beam_threshold=beam_threshold, oov_penalty=oov_penalty)[0]


def ctc_beam_search_batch(
    log_probs: torch.Tensor,
    lengths: torch.Tensor,
    beam: int,
    tokenizer: Tokenizer | None = None,
    lm: NGramLM | None = None,
    lm_weight: float = 0.0,
    word_bonus: float = 0.0,
    prune_topk: int | None = None,
    nbest: int | None = None,
    beam_threshold: float | None = None,
    oov_penalty: float = DEFAULT_OOV_PENALTY,
    max_batch: int = 64,
) -> list[NBest]:
    """:func:`ctc_prefix_beam_search` over a batch ``(B, T, V)`` with frame counts ``(B,)``.

    The utterances are searched together (sorted by length, up to ``max_batch`` at a time):
    each frame is a few array operations over all their beams, which is what makes the
    search fast in Python. The result is the same as searching them one by one.
    """
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must be (B, T, V), got {tuple(log_probs.shape)}")
    if beam < 1:
        raise UsageError(f"beam must be >= 1, got {beam}")
    if (lm is not None or word_bonus) and tokenizer is None:
        raise UsageError("LM fusion and word_bonus need the tokenizer (to find word boundaries)")
    fusing = tokenizer is not None and ((lm is not None and lm_weight != 0) or word_bonus != 0)
    fusion = _Fusion(WordSplitter(tokenizer), lm, lm_weight, word_bonus, oov_penalty if fusing else 0.0) \
        if tokenizer is not None else None
    log_probs = log_probs.detach().cpu()
    lengths = [min(int(n), log_probs.shape[1]) for n in lengths.tolist()]

    if beam == 1 and not fusing:
        best = ctc_greedy(log_probs, torch.tensor(lengths))
        return [[_final(tokens, ctc_sequence_logprob(log_probs[b, :n], tokens), fusion, False)]
                for b, (tokens, n) in enumerate(zip(best, lengths))]

    V = log_probs.shape[2]
    order = sorted(range(len(lengths)), key=lambda b: lengths[b])
    results: list[NBest] = [[] for _ in lengths]
    start = 0
    while start < len(order):
        # a chunk of similar lengths, small enough that its padded log-probs stay modest
        end = start + 1
        while (end < len(order) and end - start < max_batch
               and (end - start + 1) * max(lengths[order[end]], 1) * V <= 8_000_000):
            end += 1
        chunk = order[start:end]
        T = max(lengths[b] for b in chunk)
        lp = log_probs[chunk, :T].to(torch.float64).numpy().copy()
        for u, b in enumerate(chunk):  # past its end an utterance sees certain blanks: nothing changes
            lp[u, lengths[b]:, 0] = 0.0
            lp[u, lengths[b]:, 1:] = NEG_INF
        search = _BatchSearch(lp, beam, fusion if fusing else None, prune_topk, beam_threshold,
                              fusion.start_state if fusion is not None else None)
        with np.errstate(invalid="ignore"):
            for t in range(T):
                search.step(t)
        for u, b in enumerate(chunk):
            hyps = search.result(u, fusion, fusing)
            results[b] = hyps[:nbest] if nbest else hyps
        start = end
    return results


def _final(tokens: list[int], am: float, fusion: _Fusion | None, fusing: bool) -> Hypothesis:
    if fusion is None:
        return Hypothesis(tokens, am, am)
    fused, lm_total, words = fusion.score_tokens(tokens)
    return Hypothesis(tokens, float(am + (fused if fusing else 0.0)), am, float(lm_total), extra={"words": words})


# the fields of _Trie.info[node]
FUSED, LM_TOTAL, WORDS, STATE, PARTIAL, CLOSE, CLOSE_LP, CLOSE_STATE, PEN, ROW = range(10)


class _Trie:
    """Every prefix the searches made, one integer node per prefix; node 0 is a sentinel
    parent of the utterances' roots (their empty prefixes).

    With fusion, ``info[node]`` is the prefix's word state: the fused score and LM log-prob of
    its completed words, their count, the LM state, the partial last word, what closing that
    word would add (fused score, LM log-prob, LM state), the open word's out-of-vocabulary
    penalty and its :meth:`_Fusion.lexical_info` row. Plain lists and tuples rather than node
    objects: little garbage-collector work however many prefixes are made."""

    def __init__(self, V: int, fusion: _Fusion | None, start_state, roots: int):
        self.V, self.fusion = V, fusion
        n = roots + 1
        self.parent, self.token = [0] * n, [-1] * n
        self.parent_np = np.zeros(max(1024, 4 * n), dtype=np.int64)
        self.children: dict[int, int] = {}  # parent * V + token -> node
        self.lexical = fusion is not None and fusion.prefixes is not None
        if fusion is not None:
            self.text, self.starts = fusion.splitter.text, fusion.splitter.starts_word.tolist()
            root = (0.0, 0.0, 0, start_state, "", 0.0, 0.0, start_state) + fusion.lexical_info("")
            self.info = [root] * n

    def __len__(self) -> int:
        return len(self.parent)

    def child(self, node: int, c: int) -> int:
        key = node * self.V + c
        new = self.children.get(key)
        if new is not None:
            return new
        new = self.children[key] = len(self.parent)
        self.parent.append(node)
        self.token.append(c)
        fusion = self.fusion
        if fusion is not None:
            fused, lm_total, words, state, partial, close, close_lp, close_state, _, _ = self.info[node]
            if self.starts[c]:  # the open word ends, a new one begins
                fused, lm_total, words = fused + close, lm_total + close_lp, words + (1 if partial else 0)
                state, partial = close_state, self.text[c]
            else:
                partial = partial + self.text[c]
            self.info.append((fused, lm_total, words, state, partial) + fusion.close(state, partial)
                             + fusion.lexical_info(partial))
        return new

    def sync(self) -> np.ndarray:
        """``parent`` as an array (grown as needed)."""
        n = len(self.parent)
        if n > len(self.parent_np):
            self.parent_np = np.zeros(2 * n, dtype=np.int64)
            self.parent_np[:n] = self.parent
        else:
            have = getattr(self, "_synced", 0)
            self.parent_np[have:n] = self.parent[have:n]
        self._synced = n
        return self.parent_np

    def tokens(self, node: int) -> list[int]:
        out = []
        while self.token[node] >= 0:
            out.append(self.token[node])
            node = self.parent[node]
        return out[::-1]


class _BatchSearch:
    """The beams of ``U`` utterances as ``(U, S)`` arrays (``S`` = beam slots) over trie nodes.

    Slot arrays: ``node`` (-1 = empty), ``pb``/``pnb`` (log-probabilities of the prefix's
    alignments ending in blank / in its last label), ``last`` (last label, 0 for none),
    ``fused``/``close`` (fusion score of the completed words / of closing the open word)
    and ``par`` (the slot holding the prefix's parent prefix, or -1). A frame where no
    extension can enter any beam only updates ``pb``/``pnb`` (exact); the others score every
    slot's extensions by the frame's candidate tokens as a ``(U, S, K)`` array.
    """

    def __init__(self, lp: np.ndarray, beam: int, fusion: _Fusion | None, prune_topk: int | None,
                 threshold: float | None, start_state):
        U, T, V = lp.shape
        S = beam
        self.lp, self.S, self.fusion = lp, S, fusion
        self.threshold = math.inf if threshold is None else float(threshold)
        boundary = fusion.splitter.starts_word if fusion is not None else None
        self.trie = _Trie(V, fusion, start_state, U)
        self.lexical = self.trie.lexical
        cands = _frame_candidates(lp.reshape(U * T, V), beam + 1, boundary, prune_topk,
                                  slack=fusion.oov_penalty if self.lexical else 0.0)
        self.cands = cands.reshape(U, T, cands.shape[1])
        self.lp_cands = np.take_along_axis(lp, self.cands, axis=2)
        self.lp_cands[self.cands == BLANK] = NEG_INF  # padding columns
        nonblank = lp[:, :, 1:]
        none = np.full((U, T), NEG_INF)
        if boundary is not None:
            self.bnd_cands = boundary[self.cands].astype(np.float64)
            b = boundary[1:]
            self.max_b = nonblank[:, :, b].max(2) if b.any() else none
            self.max_n = nonblank[:, :, ~b].max(2) if (~b).any() else none
        else:
            self.max_n = nonblank.max(2) if V > 1 else none
        self.slot_of = np.full(len(self.trie.parent_np), -1, dtype=np.int64)  # node -> its slot, or -1
        self.rows = np.arange(U)[:, None]
        node = np.full((U, S), -1, dtype=np.int64)
        node[:, 0] = np.arange(1, U + 1)
        pb = np.full((U, S), NEG_INF)
        pb[:, 0] = 0.0
        root_row = self.trie.info[1][ROW] if fusion is not None else 0
        fx = (np.zeros((U, S)), np.zeros((U, S)), np.zeros((U, S)), np.full((U, S), root_row, dtype=np.int64))
        self._set(node, pb, np.full((U, S), NEG_INF), np.zeros((U, S), dtype=np.int64), fx)

    def _set(self, node, pb, pnb, last, fx) -> None:
        old = self.node[self.valid] if hasattr(self, "node") else None
        self.node, self.pb, self.pnb, self.last = node, pb, pnb, last
        self.fused, self.close, self.pen, self.row = fx
        self.valid = node >= 0
        self.full = self.valid.all(1)
        parent = self.trie.sync()
        if len(self.slot_of) < len(parent):
            grown = np.full(len(parent), -1, dtype=np.int64)
            grown[:len(self.slot_of)] = self.slot_of
            self.slot_of = grown
        if old is not None:
            self.slot_of[old] = -1
        u, s = np.nonzero(self.valid)
        self.slot_of[node[u, s]] = s
        par = self.slot_of[parent[np.where(self.valid, node, 0)]]
        par[~self.valid] = -1
        self.cu, self.ci = np.nonzero(par >= 0)  # slots whose parent prefix is in the beam too
        self.cp = par[self.cu, self.ci]

    def step(self, t: int) -> None:
        pb, pnb, last, fusion, S = self.pb, self.pnb, self.last, self.fusion, self.S
        lp = self.lp[:, t]
        ptot = np.logaddexp(pb, pnb)
        lp_last = np.where(last > 0, lp[self.rows, last], NEG_INF)
        # staying: a blank, or the last label again
        stay_pb = ptot + lp[:, :1]
        stay_pnb = pnb + lp_last
        cu, ci, cp = self.cu, self.ci, self.cp
        if len(cu):  # the parent's extension by this label merges in; a repeat needs a blank between
            src = np.where(last[cu, cp] == last[cu, ci], pb[cu, cp], ptot[cu, cp]) + lp_last[cu, ci]
            stay_pnb[cu, ci] = np.logaddexp(stay_pnb[cu, ci], src)
        stay_score = np.logaddexp(stay_pb, stay_pnb)
        if fusion is not None:
            stay_score += self.fused + self.pen if self.lexical else self.fused

        # can any extension enter a beam (or any prefix fall out of the threshold)?
        if fusion is not None:
            base = ptot + self.fused
            bound = np.maximum((base + self.close).max(1) + self.max_b[:, t], base.max(1) + self.max_n[:, t])
        else:
            bound = ptot.max(1) + self.max_n[:, t]
        worst = np.where(self.valid, stay_score, math.inf).min(1)
        if self.threshold == math.inf:
            fast = (self.full & (bound < worst)) | (bound == NEG_INF)
        else:
            cutoff = stay_score.max(1) - self.threshold
            fast = (worst >= cutoff) & ((bound < cutoff) | (self.full & (bound < worst)))
        if fast.all():
            self.pb, self.pnb = stay_pb, stay_pnb
            return

        cols = self.cands[:, t]  # (U, K)
        K = cols.shape[1]
        ext = np.where(cols[:, None, :] == last[:, :, None], pb[:, :, None], ptot[:, :, None]) \
            + self.lp_cands[:, t][:, None, :]
        if len(cu):  # those extensions are already in the stays
            r, k = np.nonzero(cols[cu] == last[cu, ci][:, None])
            ext[cu[r], cp[r], k] = NEG_INF
        if fusion is not None:
            ext_score = ext + (self.fused[:, :, None] + self.close[:, :, None] * self.bnd_cands[:, t][:, None, :])
            if self.lexical:  # the penalty of the open word after the token
                ext_score += fusion.table[self.row[:, :, None], cols[:, None, :]]
        else:
            ext_score = ext
        scores = np.concatenate([stay_score, ext_score.reshape(len(cols), S * K)], axis=1)
        if self.threshold < math.inf:
            scores[scores < scores.max(1, keepdims=True) - self.threshold] = NEG_INF
        top = np.argpartition(-scores, S - 1, axis=1)[:, :S]  # the order of a beam does not matter
        rows = self.rows
        ok = scores[rows, top] > NEG_INF
        is_stay = top < S
        j = np.where(is_stay, top, (top - S) // K)
        k = np.where(is_stay, 0, (top - S) % K)
        new_pb = np.where(is_stay & ok, stay_pb[rows, j], NEG_INF)
        new_pnb = np.where(is_stay, stay_pnb[rows, j], ext[rows, j, k])
        new_pnb[~ok] = NEG_INF
        new_last = np.where(is_stay, last[rows, j], cols[rows, k])
        new_last[~ok] = 0
        new_node = np.where(is_stay & ok, self.node[rows, j], -1)
        eu, es = np.nonzero(ok & ~is_stay)
        trie = self.trie
        made = [trie.child(p, c) for p, c in zip(self.node[eu, j[eu, es]].tolist(), new_last[eu, es].tolist())]
        new_node[eu, es] = made
        if fusion is not None:
            fx = tuple(a[rows, j] for a in (self.fused, self.close, self.pen, self.row))
            info = trie.info
            for a, field in zip(fx, (FUSED, CLOSE, PEN, ROW)):
                a[eu, es] = [info[n][field] for n in made]
            self._set(new_node, new_pb, new_pnb, new_last, fx)
        else:
            self._set(new_node, new_pb, new_pnb, new_last, (self.fused, self.close, self.pen, self.row))

    def result(self, u: int, fusion: _Fusion | None, fusing: bool) -> NBest:
        trie, out = self.trie, []
        for s in np.flatnonzero(self.valid[u]).tolist():
            node = int(self.node[u, s])
            am = float(_logaddexp(float(self.pb[u, s]), float(self.pnb[u, s])))
            tokens = trie.tokens(node)
            if fusing:
                info = trie.info[node]
                fe, lpe = fusion.end(info[CLOSE_STATE])
                score = float(am + info[FUSED] + info[CLOSE] + fe)
                hyp = Hypothesis(tokens, score, am, float(info[LM_TOTAL] + info[CLOSE_LP] + lpe),
                                 extra={"words": info[WORDS] + (1 if info[PARTIAL] else 0)})
            else:
                hyp = _final(tokens, am, fusion, False)
            out.append(hyp)
        out.sort(key=lambda h: -h.score)
        return out


@torch.no_grad()
def ctc_decode_nbest(model: torch.nn.Module, batch: dict, beam: int, lm: NGramLM | None = None,
                     lm_weight: float = 0.0, word_bonus: float = 0.0, tokenizer: Tokenizer | None = None,
                     **kwargs) -> list[NBest]:
    """Run a CTC model over ``batch`` (``wav``, ``wav_lengths``) and beam-search every utterance."""
    log_probs, lengths = model(batch["wav"], batch["wav_lengths"])
    return ctc_beam_search_batch(log_probs, lengths, beam, tokenizer=tokenizer, lm=lm, lm_weight=lm_weight,
                                 word_bonus=word_bonus, **kwargs)


class CTCStreamDecoder:
    """Greedy CTC decoding carried across the chunks of a stream (the family's ``stream_decoder``).

    The state holds the emitted ``tokens`` and the best token of the last frame seen (so a
    repeat across a chunk boundary merges as it does offline). For word timestamps it also
    records, per token, the global encoder frames of its run on the best path (``starts``,
    ``ends``: first and last) and the sum of its posteriors over them (``post``); ``offset``
    counts the frames seen. These are the spans and mean posteriors the offline forced
    alignment of the greedy tokens gives (the best path is that alignment).
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def init_state(self, device: torch.device) -> dict:
        return {"tokens": [], "last": BLANK, "starts": [], "ends": [], "post": [], "offset": 0}

    def step(self, enc: torch.Tensor, state: dict) -> dict:
        """Encoder frames ``(1, t, D)`` of one stream -> its new state."""
        from asr.runtime import ctc_greedy_merge

        lp, best = self.model.head(enc)[0].max(-1)  # (t,), (t,)
        tokens, last = ctc_greedy_merge(best.tolist(), state["last"], state["tokens"], BLANK)
        # runs of the best path: a non-blank frame starts a token (new) or continues the one before
        prev = torch.cat([best.new_tensor([state["last"]]), best[:-1]])
        nonblank = best != BLANK
        new = nonblank & (best != prev)
        run = torch.cumsum(new.long(), 0)[nonblank]  # 0 = continues the previous chunk's last token
        frames = nonblank.nonzero().squeeze(1)
        k = int(new.sum())
        ends = torch.full((k + 1,), -1, dtype=torch.long).scatter_reduce(0, run.cpu(), frames.cpu(), "amax")
        post = torch.zeros(k + 1, dtype=torch.float64).index_add(0, run.cpu(), lp[nonblank].double().exp().cpu())
        offset = state["offset"]
        starts, ends_l, post_l = list(state["starts"]), list(state["ends"]), list(state["post"])
        if ends[0] >= 0:  # the last token's run goes on into this chunk
            ends_l[-1] = offset + int(ends[0])
            post_l[-1] += float(post[0])
        starts += (new.nonzero().squeeze(1).cpu() + offset).tolist()
        ends_l += (ends[1:] + offset).tolist()
        post_l += post[1:].tolist()
        return {"tokens": tokens, "last": last, "starts": starts, "ends": ends_l, "post": post_l,
                "offset": offset + best.shape[0]}

    def alignment(self, state: dict):
        """The emitted tokens' runs and mean posteriors (:class:`~asr.decode.timestamps.TokenAlignment`)."""
        from asr.decode.timestamps import TokenAlignment

        starts, ends = np.asarray(state["starts"], dtype=np.int64), np.asarray(state["ends"], dtype=np.int64)
        return TokenAlignment(starts, ends, np.asarray(state["post"], dtype=np.float64) / (ends - starts + 1))
