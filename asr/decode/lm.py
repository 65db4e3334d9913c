"""Word n-gram language models: ARPA reading/writing and interpolated Kneser-Ney training.

:class:`NGramLM` holds a backoff n-gram model (read with :meth:`NGramLM.from_arpa`) and scores
one word at a time, which is what shallow fusion in the CTC beam search needs. States are
hashable tuples of the last ``order - 1`` words (``("<s>",)`` at the start of a sentence).
Scores are natural logarithms (ARPA files hold log10; they are converted on reading).

:func:`build_ngram` trains a model on normalised text with *interpolated Kneser-Ney*
smoothing (one absolute discount per order, ``D = n1 / (n1 + 2 n2)`` from the counts of
counts, kept within [0.1, 0.9]). Lower orders use continuation counts (the number of distinct
words seen before an n-gram), except n-grams that begin with ``<s>``, which keep their raw
counts because nothing can precede ``<s>``. The unigram distribution is interpolated with a
uniform one over the vocabulary, so ``<unk>`` and every word get some mass and each context's
distribution over ``vocabulary + </s>`` (``<s>`` excluded, ``<unk>`` included) sums to one.
An interpolated model is exactly an ARPA backoff model whose backoff weight for a context is
its interpolation weight, so the file written is a plain ARPA file any toolkit reads.

Example:
    >>> lm = build_ngram(["the cat sat", "the cat ran", "a dog sat"], order=2)
    >>> lp, state = lm.score(lm.start_state, "THE")
    >>> state
    ('THE',)
    >>> round(sum(math.exp(lm.score(state, w)[0]) for w in lm.vocab), 6)
    1.0
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Iterable, Sequence

from asr.errors import ToolkitError, UsageError
from asr.text import normalize_text
from asr.utils import atomic_open

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LN10 = math.log(10.0)
ARPA_NO_PROB = -99.0  # log10 probability written for <s>, which is never predicted


class ARPAError(ToolkitError, ValueError):
    """A malformed ARPA file; the message starts with ``path:line:``."""


State = tuple  # the last order-1 words


class NGramLM:
    """A backoff word n-gram model.

    Args:
        order: the highest n-gram order.
        probs: ``{words tuple: natural-log probability}`` for every order.
        backoffs: ``{context tuple: natural-log backoff weight}`` (missing means 0).
        oov_log10: log10 probability given to an out-of-vocabulary word when the model has
            no ``<unk>`` unigram (a floor; kenlm uses -100, which all but forbids such words).
    """

    def __init__(self, order: int, probs: dict[tuple, float], backoffs: dict[tuple, float] | None = None,
                 oov_log10: float = -10.0):
        if order < 1:
            raise UsageError(f"order must be >= 1, got {order}")
        self.order = order
        self.probs = probs
        self.backoffs = backoffs or {}
        self.oov_logp = oov_log10 * LN10
        self.unigrams = {k[0] for k in probs if len(k) == 1}
        self.has_unk = UNK in self.unigrams
        self.start_state: State = (BOS,) if order > 1 else ()
        self._cache: dict[tuple, tuple[float, State]] = {}
        self._prefixes: frozenset[str] | None = None

    @property
    def vocab(self) -> list[str]:
        """Every word the model predicts: the unigrams except ``<s>`` (``</s>`` included)."""
        return sorted(w for w in self.unigrams if w != BOS)

    def __contains__(self, word: str) -> bool:
        return word in self.unigrams

    @property
    def word_prefixes(self) -> frozenset[str]:
        """Every beginning of an in-vocabulary word (``""`` and the words themselves included;
        ``<s>``, ``</s>`` and ``<unk>`` excluded), for spotting out-of-vocabulary partial words."""
        if self._prefixes is None:
            self._prefixes = frozenset(w[:i] for w in self.unigrams if w not in (BOS, EOS, UNK)
                                       for i in range(len(w) + 1)) | {""}
        return self._prefixes

    def score(self, state: State, word: str) -> tuple[float, State]:
        """``(ln P(word | state), next state)`` with standard backoff.

        An unknown word is scored as ``<unk>`` (from its unigram, else the ``oov_log10``
        floor) and appears as ``<unk>`` in the next state.
        """
        key = (state, word)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if word not in self.unigrams:
            word = UNK
        if word == UNK and not self.has_unk:
            logp = self.oov_logp
        else:
            logp, ctx = 0.0, tuple(state)
            while True:
                p = self.probs.get(ctx + (word,))
                if p is not None:
                    logp += p
                    break
                logp += self.backoffs.get(ctx, 0.0)
                ctx = ctx[1:]
        nxt = (tuple(state) + (word,))[max(0, len(state) + 2 - self.order):] if self.order > 1 else ()
        if len(self._cache) > 1_000_000:
            self._cache.clear()
        self._cache[key] = (logp, nxt)
        return logp, nxt

    def score_sentence(self, words: Sequence[str], eos: bool = True) -> float:
        """ln P of a word sequence from the start state (plus ``</s>`` when ``eos``)."""
        state, total = self.start_state, 0.0
        for w in list(words) + ([EOS] if eos else []):
            lp, state = self.score(state, w)
            total += lp
        return total

    # ------------------------------------------------------------------ ARPA I/O
    @classmethod
    def from_arpa(cls, path: str | os.PathLike, oov_log10: float = -10.0) -> "NGramLM":
        """Read an ARPA file. Raises :class:`ARPAError` naming ``path:line`` on malformed input."""
        path = str(path)
        probs: dict[tuple, float] = {}
        backoffs: dict[tuple, float] = {}
        counts: dict[int, int] = {}
        seen: dict[int, int] = defaultdict(int)
        section = None  # None (before \data\), "data", an int order, or "end"
        lineno = 0

        def fail(msg: str):
            raise ARPAError(f"{path}:{lineno}: {msg}")

        try:
            f = open(path, encoding="utf-8")
        except OSError as e:
            raise ARPAError(f"{path}: cannot read ARPA file ({e.strerror or e})") from None
        with f:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                if not line:
                    continue
                if section is None:  # text before \data\ is a free-form header
                    if line == "\\data\\":
                        section = "data"
                    continue
                if section == "end":
                    fail(f"text after '\\end\\': {line[:40]!r}")
                if line == "\\end\\":
                    if section == "data":
                        fail("'\\end\\' before any n-gram section")
                    section = "end"
                    continue
                if line.startswith("\\") and line.endswith("-grams:"):
                    try:
                        n = int(line[1:-len("-grams:")])
                    except ValueError:
                        fail(f"bad section header {line!r}")
                    if n not in counts:
                        fail(f"section {line!r} has no 'ngram {n}=' count in \\data\\")
                    if isinstance(section, int) and seen[section] != counts[section]:
                        fail(f"{section}-grams: \\data\\ announced {counts[section]}, found {seen[section]}")
                    if n != (1 if section == "data" else section + 1):
                        fail(f"section {line!r} out of order")
                    section = n
                    continue
                if section == "data":
                    if not line.startswith("ngram "):
                        fail(f"expected 'ngram N=COUNT' in \\data\\, got {line[:40]!r}")
                    try:
                        n_s, c_s = line[len("ngram "):].split("=")
                        n, c = int(n_s), int(c_s)
                    except ValueError:
                        fail(f"bad count line {line!r}")
                    if n < 1 or c < 0 or n in counts:
                        fail(f"bad count line {line!r}")
                    counts[n] = c
                    continue
                # an n-gram line: logp w1 .. wn [backoff]
                n = section
                fields = line.split()
                if len(fields) not in (n + 1, n + 2):
                    fail(f"a {n}-gram line needs a log10 probability, {n} word(s) and an optional backoff; "
                         f"got {len(fields)} fields")
                try:
                    logp = float(fields[0])
                    bo = float(fields[n + 1]) if len(fields) == n + 2 else None
                except ValueError:
                    fail(f"not a number in {line[:60]!r}")
                if logp > 0 or (bo is not None and not math.isfinite(bo)) or math.isnan(logp):
                    fail(f"invalid log10 value in {line[:60]!r}")
                words = tuple(fields[1:n + 1])
                if words in probs:
                    fail(f"duplicate {n}-gram {' '.join(words)!r}")
                probs[words] = logp * LN10
                if bo is not None:
                    backoffs[words] = bo * LN10
                seen[n] += 1
        if section != "end":
            lineno += 1
            fail("missing '\\end\\'" if section is not None else "empty file or no '\\data\\' header")
        for n, c in counts.items():
            if seen[n] != c:
                fail(f"{n}-grams: \\data\\ announced {c}, found {seen[n]}")
        if not counts.get(1):
            fail("no unigrams")
        return cls(max(counts), probs, backoffs, oov_log10)

    def write_arpa(self, path: str | os.PathLike) -> None:
        """Write the model as an ARPA file (atomically)."""
        by_order: dict[int, list[tuple]] = defaultdict(list)
        for words in self.probs:
            by_order[len(words)].append(words)
        with atomic_open(path, "w", encoding="utf-8") as f:
            f.write("\\data\\\n")
            for n in range(1, self.order + 1):
                f.write(f"ngram {n}={len(by_order[n])}\n")
            for n in range(1, self.order + 1):
                f.write(f"\n\\{n}-grams:\n")
                for words in sorted(by_order[n]):
                    lp = self.probs[words] / LN10
                    line = f"{lp:.8f}\t{' '.join(words)}"
                    bo = self.backoffs.get(words)
                    if bo is not None and n < self.order:
                        line += f"\t{bo / LN10:.8f}"
                    f.write(line + "\n")
            f.write("\n\\end\\\n")


# ---------------------------------------------------------------------- training
def texts_from_manifest(items: Iterable[dict] | str | os.PathLike) -> list[str]:
    """The ``text`` of manifest items (or of a manifest file), normalised; empty ones dropped."""
    if isinstance(items, (str, os.PathLike)):
        from asr.data.manifest import read_manifest

        items = read_manifest(items, needs_text=True)
    return [t for t in (normalize_text(it.get("text", "")) for it in items) if t]


def _discount(counts: dict[tuple, float]) -> float:
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    if n1 == 0 or n2 == 0:
        return 0.5
    return min(max(n1 / (n1 + 2 * n2), 0.1), 0.9)


def train_kneser_ney(texts: Iterable[str], order: int = 3) -> NGramLM:
    """Interpolated Kneser-Ney n-gram model of normalised ``texts`` (see the module doc)."""
    if order < 1:
        raise UsageError(f"order must be >= 1, got {order}")
    raw: list[dict[tuple, int]] = [defaultdict(int) for _ in range(order + 1)]  # raw[n][ngram]
    words_seen: set[str] = set()
    sentences = 0
    for text in texts:
        words = normalize_text(text).split()
        if not words:
            continue
        sentences += 1
        words_seen.update(words)
        sent = [BOS] + words + [EOS]
        for n in range(1, order + 1):
            for i in range(len(sent) - n + 1):
                raw[n][tuple(sent[i:i + n])] += 1
    if not sentences:
        raise UsageError("no text to train an n-gram model on")

    # adjusted counts: raw at the top order and for n-grams starting with <s>, continuation below
    adj: list[dict[tuple, float]] = [{} for _ in range(order + 1)]
    adj[order] = {k: float(v) for k, v in raw[order].items()}
    for n in range(order - 1, 0, -1):
        cont: dict[tuple, float] = defaultdict(float)
        for k in raw[n + 1]:
            cont[k[1:]] += 1.0
        for k, v in raw[n].items():
            adj[n][k] = float(v) if k[0] == BOS else cont.get(k, 0.0)
    adj[1].pop((BOS,), None)  # <s> is never predicted

    vocab = sorted(words_seen | {EOS, UNK})
    probs: dict[tuple, float] = {}
    backoffs: dict[tuple, float] = {}
    # unigrams: discounted continuation counts interpolated with a uniform distribution
    d1 = _discount(adj[1])
    total1 = sum(adj[1].values())
    types1 = sum(1 for c in adj[1].values() if c > 0)
    gamma1 = d1 * types1 / total1
    uni = {w: max(adj[1].get((w,), 0.0) - d1, 0.0) / total1 + gamma1 / len(vocab) for w in vocab}
    for w, p in uni.items():
        probs[(w,)] = math.log(p)
    probs[(BOS,)] = ARPA_NO_PROB * LN10
    # interpolated P of the order below; every suffix of a seen n-gram was seen one order down
    lower: dict[tuple, float] = {(w,): p for w, p in uni.items()}

    for n in range(2, order + 1):
        d = _discount(adj[n])
        ctx_total: dict[tuple, float] = defaultdict(float)
        ctx_types: dict[tuple, int] = defaultdict(int)
        for k, c in adj[n].items():
            if c > 0:
                ctx_total[k[:-1]] += c
                ctx_types[k[:-1]] += 1
        gammas = {h: d * ctx_types[h] / t for h, t in ctx_total.items()}
        current: dict[tuple, float] = {}
        for k, c in adj[n].items():
            if c <= 0:
                continue
            h = k[:-1]
            current[k] = max(c - d, 0.0) / ctx_total[h] + gammas[h] * lower[k[1:]]
        for h, g in gammas.items():
            backoffs[h] = math.log(g)
        for k, p in current.items():
            probs[k] = math.log(p)
        lower = current
    return NGramLM(order, probs, backoffs)


def build_ngram(texts: Iterable[str], order: int = 3, path: str | os.PathLike | None = None) -> NGramLM:
    """Train an interpolated Kneser-Ney word n-gram on ``texts`` (normalised here) and write
    it to ``path`` as an ARPA file (atomically) when given. Returns the model."""
    lm = train_kneser_ney(texts, order)
    if path is not None:
        lm.write_arpa(path)
    return lm
