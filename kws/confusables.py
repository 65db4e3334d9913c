"""Phrases that sound like a wake word but are not it: negatives made from the phrase itself.

A detector trained on a phrase and on unrelated speech learns to fire on anything that shares
its loudest syllable. :func:`confusables` derives the near misses from the phrase's phonemes as
espeak-ng transcribes them (``computer`` -> ``k@mpj'u:t#3``):

- ``part``: the phrase cut at a syllable boundary, the front or the back (``k@m``, ``pj'u:t#3``),
  and each word of a phrase of several words alone (``hey``, ``computer`` of "hey computer");
  never a part that lacks only an unstressed reduced first syllable (``mpj'u:t#3``: a fast "computer");
- ``onset``: the consonant that opens a word or its stressed syllable replaced by one made at
  another place in the mouth (``t@mpj'u:t#3``, ``k@mtj'u:t#3``): one phoneme changed, never a
  voicing-only change (``k`` -> ``g`` is too close to be a reliable "no");
- ``vowel``: the stressed vowel replaced by a distant one (``k@mpj'A:t#3``);
- ``word``: real words of a small built-in lexicon (the synthetic sentence vocabulary, the
  Speech Commands words, digits) whose phonemes are within a third of the phrase word's length
  in edit distance, or share its first or last three phonemes (``commuter``-like words), but are
  not the word itself or an inflection of it.

Phoneme strings are spoken by espeak-ng's ``[[...]]`` input (espeak voices only); lexicon words
by any voice. The derivation is deterministic: the same phrase always gives the same list.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from asr.errors import ToolkitError, UsageError

__all__ = ["LEXICON_EXTRA", "Confusable", "confusables", "phonemes", "split_phonemes"]

# espeak-ng's English phoneme mnemonics, longest first for a greedy tokenizer; a trailing "#"
# or digit is a variant of the same phoneme and stays with it.
_VOWELS = ("aI@", "aU@", "i@3", "A@", "A:", "aI", "aU", "@L", "@5", "3:", "e@", "eI", "i:", "I@", "i@", "O:",
           "O@", "OI", "o@", "oU", "u:", "U@", "I2", "a2", "@2", "a", "A", "@", "3", "e", "E", "i", "I", "0",
           "O", "o", "u", "U", "V")
_CONSONANTS = ("tS", "dZ", "p", "b", "t", "d", "k", "g", "f", "v", "T", "D", "s", "z", "S", "Z", "h", "m", "n",
               "N", "l", "r", "j", "w", "x", "?")
# another place of articulation (and for vowels, another part of the vowel space)
_CONSONANT_SWAP = {"p": "t", "b": "d", "t": "k", "d": "g", "k": "p", "g": "b", "f": "s", "v": "z", "T": "f",
                   "D": "v", "s": "f", "z": "v", "S": "f", "Z": "v", "tS": "p", "dZ": "b", "m": "n", "n": "m",
                   "N": "m", "l": "r", "r": "l", "j": "l", "w": "r", "h": "s"}
_VOWEL_SWAP = {"a": "u:", "A": "i:", "A:": "i:", "A@": "i:", "aI": "u:", "aU": "i:", "@": "A:", "3": "i:",
               "3:": "i:", "e": "u:", "E": "u:", "e@": "u:", "eI": "u:", "i": "A:", "I": "A:", "i:": "A:",
               "I@": "A:", "0": "i:", "O": "i:", "O:": "i:", "OI": "i:", "oU": "i:", "o@": "i:", "u": "a",
               "U": "a", "u:": "a", "U@": "a", "V": "i:"}
LEXICON_EXTRA = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow", "backward", "forward", "follow", "learn", "visual", "hello", "hey", "okay", "hi"]
"""Words the lexicon holds besides the synthetic sentence vocabulary."""


@dataclass(frozen=True)
class Confusable:
    """One near miss: ``text`` for the synthesizer (``[[phonemes]]`` or a word), how it was made."""

    text: str
    how: str  # part, onset, vowel or word
    phonemes: str

    @property
    def espeak_only(self) -> bool:
        return self.text.startswith("[[")


def phonemes(words: Sequence[str], voice: str = "en-us") -> list[str]:
    """espeak-ng's phoneme mnemonics for each of ``words`` (one subprocess call)."""
    if shutil.which("espeak-ng") is None:
        raise ToolkitError("espeak-ng is not installed (apt-get install espeak-ng): it derives the confusable phrases")
    words = [w.strip() for w in words]
    if not words:
        return []
    proc = subprocess.run(["espeak-ng", "-q", "-x", "-v", voice], input="\n".join(words) + "\n",
                          capture_output=True, text=True, check=False)
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or len(lines) != len(words):  # lines merged or failed: one call per word
        lines = []
        for w in words:
            p = subprocess.run(["espeak-ng", "-q", "-x", "-v", voice, w], capture_output=True, text=True, check=False)
            lines.append(" ".join(p.stdout.split()))
    return lines


_TOKEN = re.compile("|".join(re.escape(t) + r"[#0-9]?" for t in sorted(_VOWELS + _CONSONANTS, key=len, reverse=True))
                    + r"|['',]|\S")


def split_phonemes(ph: str) -> list[str]:
    """``"k@mpj'u:t#3"`` -> ``['k', '@', 'm', 'p', 'j', "'", 'u:', 't#', '3']`` (stress marks are tokens).

    >>> split_phonemes("a#l'Eks@")
    ['a#', 'l', "'", 'E', 'k', 's', '@']
    """
    return _TOKEN.findall(ph.replace(" ", ""))


_KNOWN = frozenset(_VOWELS + _CONSONANTS)


def _base(token: str) -> str:
    """The phoneme without its variant mark (``t#`` -> ``t``; ``3`` and ``@5`` are phonemes of their own)."""
    return token if token in _KNOWN or token[:-1] not in _KNOWN else token[:-1]


def _is_vowel(token: str) -> bool:
    return _base(token) in _VOWELS


def _is_onset_pair(first: str, second: str) -> bool:
    a, b = _base(first), _base(second)
    return (a in _CONSONANTS and b in ("l", "r", "j", "w") and a not in ("l", "r", "j", "w", "N", "h")) or \
        (a == "s" and b in ("p", "t", "k", "m", "n"))


def _syllables(tokens: list[str]) -> list[list[str]]:
    """Tokens grouped into syllables: one vowel each, a single consonant (and stress) before a vowel
    starts the next syllable, other consonants close the previous one."""
    vowels = [i for i, t in enumerate(tokens) if _is_vowel(t)]
    if len(vowels) < 2:
        return [tokens]
    starts = [0]
    for v in vowels[1:]:
        s = v
        while s > 0 and tokens[s - 1] in ("'", ","):
            s -= 1
        if s > 0 and not _is_vowel(tokens[s - 1]) and tokens[s - 1] not in ("'", ","):
            s -= 1
            if s > 0 and _is_onset_pair(tokens[s - 1], tokens[s]):  # "pj" of computer, "st", "pl"
                s -= 1
            while s > 0 and tokens[s - 1] in ("'", ","):  # a stress mark before the onset
                s -= 1
        starts.append(max(s, starts[-1] + 1))
    return [tokens[a:b] for a, b in zip(starts, starts[1:] + [len(tokens)])]


def _speakable(tokens: list[str]) -> str | None:
    """``[[...]]`` text with a primary stress on its first vowel if it has none; None without a vowel."""
    if not any(_is_vowel(t) for t in tokens):
        return None
    toks = [t for t in tokens if t != ","]
    while toks and toks[-1] == "'":
        toks.pop()
    if "'" not in toks:
        first = next(i for i, t in enumerate(toks) if _is_vowel(t))
        toks.insert(first, "'")
    return "[[" + "".join(toks) + "]]"


def _edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


_REDUCED = ("@", "a#", "I#", "3", "@L", "@2", "I2", "i")  # unstressed vowels a fast talker may swallow


def _swallowable(removed: list[str]) -> bool:
    """Whether a cut-off front is only what a talker may drop while still saying the phrase: one
    unstressed reduced vowel with at most one consonant ("k@" of computer, "a#" of alexa)."""
    sounds = [t for t in removed if t not in ("'", ",")]
    vowels = [t for t in sounds if _is_vowel(t)]
    return "'" not in removed and len(vowels) <= 1 and all(v in _REDUCED for v in vowels) and \
        len(sounds) - len(vowels) <= 1


def _word_variants(tokens: list[str]) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    syl = _syllables(tokens)
    cuts = []
    for k in range(1, len(syl)):
        head, tail = [t for s in syl[:k] for t in s], [t for s in syl[k:] for t in s]
        cuts += [(head, tail), (tail, head)]
    vowels = [i for i, t in enumerate(tokens) if _is_vowel(t)]
    if len(vowels) >= 2:  # the word without its last vowel ("alex" of alexa), without its first
        cuts += [(tokens[:vowels[-1]], tokens[vowels[-1]:]), (tokens[vowels[0] + 1:], tokens[:vowels[0] + 1])]
    for part, removed in cuts:
        # a lone vowel is no near miss; a part that lacks only a swallowable front is the phrase itself
        front_cut = tokens[len(tokens) - len(part):] == part
        if sum(t not in ("'", ",") for t in part) >= 2 and not (front_cut and _swallowable(removed)):
            out.append(("part", part))
    stressed = next((i for i, t in enumerate(tokens) if t == "'"), None)
    onsets = {next((i for i, t in enumerate(tokens) if t not in ("'", ",")), 0)}
    if stressed is not None:
        before = stressed - 1  # the consonant before the stress mark opens the stressed syllable
        if before >= 0 and not _is_vowel(tokens[before]):
            onsets.add(before)
        after = stressed + 1  # or a consonant after it (espeak puts the mark before the onset or the vowel)
        if after < len(tokens) and not _is_vowel(tokens[after]):
            onsets.add(after)
    for i in sorted(onsets):
        swap = _CONSONANT_SWAP.get(_base(tokens[i]))
        if swap:
            out.append(("onset", tokens[:i] + [swap] + tokens[i + 1:]))
    vowel = next((i for i in range((stressed or 0), len(tokens)) if _is_vowel(tokens[i])), None)
    if vowel is not None and _base(tokens[vowel]) in _VOWEL_SWAP:
        out.append(("vowel", tokens[:vowel] + [_VOWEL_SWAP[_base(tokens[vowel])]] + tokens[vowel + 1:]))
    return out


def confusables(phrase: str, lexicon: Sequence[str] | None = None, voice: str = "en-us") -> list[Confusable]:
    """Near misses of ``phrase`` (see the module docstring), without duplicates, in a fixed order.

    >>> [c.how for c in confusables("computer", lexicon=[])][:3]  # doctest: +SKIP
    ['part', 'part', 'part']
    """
    from asr.data.sentences import VOCABULARY

    words = phrase.lower().split()
    if not words:
        raise UsageError("an empty phrase has no confusables")
    lexicon = sorted(set(VOCABULARY) | set(LEXICON_EXTRA)) if lexicon is None else list(lexicon)
    lexicon = [w for w in lexicon if w not in words]
    ph_words = phonemes(words, voice)
    whole = " ".join(ph_words)
    seen = {whole.replace(" ", "")}
    out: list[Confusable] = []

    def add(text: str | None, how: str, ph: str) -> None:
        if text is not None and ph.replace(" ", "") not in seen:
            seen.add(ph.replace(" ", ""))
            out.append(Confusable(text, how, ph))

    if len(words) > 1:
        for w, ph in zip(words, ph_words):
            add(w, "part", ph)
    for w_index, ph in enumerate(ph_words):
        tokens = split_phonemes(ph)
        for how, toks in _word_variants(tokens):
            if len(words) > 1 and how != "part":  # the change inside the whole phrase
                spoken = [split_phonemes(p) for p in ph_words]
                spoken[w_index] = toks
                text = " ".join(filter(None, (_speakable(s) for s in spoken)))
                add(text or None, how, " ".join("".join(s) for s in spoken))
            else:
                add(_speakable(toks), how, "".join(toks))
    if lexicon:
        targets = [[t for t in split_phonemes(ph) if t not in ("'", ",")] for ph in ph_words]
        for word, ph in zip(lexicon, phonemes(lexicon, voice)):
            toks = [t for t in split_phonemes(ph) if t not in ("'", ",")]
            for target in targets:
                if len(target) < 3 or toks == target or any(word.startswith(w) for w in words):
                    continue
                close = _edit_distance(toks, target) <= max(1, len(target) // 3)
                shares = len(toks) >= 3 and (toks[:3] == target[:3] or toks[-3:] == target[-3:])
                if close or shares:
                    add(word, "word", ph)
                    break
    return out
