"""Text normalisation and tokenizers (characters, SentencePiece BPE).

Every tokenizer reserves the same special ids, so CTC, transducer and attention
models share conventions: ``0 = <blank>`` (CTC/RNN-T blank; padding for attention),
``1 = <unk>``, ``2 = <sos/eos>``. A tokenizer serialises to a dict of plain Python
values (``state_dict``) that lives inside checkpoints and loads with
``torch.load(..., weights_only=True)``.

Example:
    >>> tok = CharTokenizer.from_texts(["hello world", "it's here"])
    >>> ids = tok.encode("Hello, World!")
    >>> tok.decode(ids)
    'HELLO WORLD'
    >>> tokenizer_from_state(tok.state_dict()).encode("hello") == tok.encode("hello")
    True
"""

from __future__ import annotations

import io
import logging
import re
import unicodedata
from typing import Iterable

from asr import constants
from asr.config import ConfigError
from asr.constants import BLANK_TOKEN, EOS_TOKEN, UNK_TOKEN
from asr.errors import UsageError

log = logging.getLogger(__name__)

BLANK, UNK, EOS = BLANK_TOKEN, UNK_TOKEN, EOS_TOKEN
SPECIALS = (BLANK, UNK, EOS)
_NOT_ALLOWED = re.compile(r"[^A-Z' ]+")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Upper-case letters, apostrophes and single spaces (the LibriSpeech convention).

    Accents are stripped, hyphens and other punctuation become spaces, digits are dropped.

    >>> normalize_text("  Café -- it's  NOT   the 2nd time! ")
    "CAFE IT'S NOT THE ND TIME"
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).upper()
    text = text.replace("\u2019", "'")
    text = _NOT_ALLOWED.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


class Tokenizer:
    """Interface shared by the tokenizers."""

    blank_id = constants.BLANK
    unk_id = constants.UNK
    eos_id = constants.EOS  # also used as start-of-sentence by attention decoders

    def __init__(self) -> None:
        self.oov_count = 0  # characters or pieces mapped to <unk> so far

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError


class CharTokenizer(Tokenizer):
    """One token per character of the normalised text (space included)."""

    def __init__(self, symbols: Iterable[str]):
        super().__init__()
        chars = [s for s in symbols if s not in SPECIALS]
        self.symbols = list(SPECIALS) + chars
        self.index = {s: i for i, s in enumerate(self.symbols)}
        if len(self.index) != len(self.symbols):
            raise ValueError("duplicate symbols in the character inventory")

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        chars = set()
        for t in texts:
            chars.update(normalize_text(t))
        return cls(sorted(chars))

    @classmethod
    def english(cls) -> "CharTokenizer":
        return cls([" ", "'"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)])

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    def encode(self, text: str) -> list[int]:
        ids = [self.index.get(ch, self.unk_id) for ch in normalize_text(text)]
        self.oov_count += sum(i == self.unk_id for i in ids)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        out = "".join(self.symbols[i] for i in ids if i >= len(SPECIALS))
        return _SPACES.sub(" ", out).strip()

    def state_dict(self) -> dict:
        return {"kind": "char", "symbols": self.symbols[len(SPECIALS):]}


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece (BPE or unigram) over normalised text, with the shared special ids."""

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        super().__init__()
        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        if (self.sp.pad_id(), self.sp.unk_id(), self.sp.eos_id()) != (0, 1, 2):
            raise UsageError("SentencePiece model must use pad=0 (<blank>), unk=1, eos=2")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 256, model_type: str = "bpe") -> "SentencePieceTokenizer":
        """Train on normalised ``texts`` in memory; deterministic for the same input."""
        import sentencepiece as spm

        sentences = [t for t in (normalize_text(x) for x in texts) if t]
        if not sentences:
            raise UsageError("no text to train a SentencePiece model on")
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab_size,
            model_type=model_type, character_coverage=1.0, pad_id=0, pad_piece=BLANK, unk_id=1,
            unk_piece=UNK, eos_id=2, eos_piece=EOS, bos_id=-1, hard_vocab_limit=False,
            num_threads=1, minloglevel=2,
        )
        return cls(buf.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        ids = self.sp.encode(normalize_text(text))
        self.oov_count += sum(i == self.unk_id for i in ids)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids if int(i) >= len(SPECIALS)])

    def state_dict(self) -> dict:
        return {"kind": "sentencepiece", "model_proto": self.model_proto}


def tokenizer_from_state(state: dict) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.state_dict`."""
    kind = state.get("kind")
    if kind == "char":
        return CharTokenizer(state["symbols"])
    if kind == "sentencepiece":
        return SentencePieceTokenizer(state["model_proto"])
    raise ConfigError(f"unknown tokenizer kind {kind!r}")


def build_tokenizer(kind: str, texts: Iterable[str], vocab_size: int = 256) -> Tokenizer:
    """``kind``: ``char`` or ``bpe``/``unigram`` (SentencePiece with ``vocab_size`` pieces)."""
    if kind == "char":
        return CharTokenizer.from_texts(texts)
    if kind in ("bpe", "unigram"):
        return SentencePieceTokenizer.train(texts, vocab_size, model_type=kind)
    raise ConfigError(f"unknown tokenizer kind {kind!r} (char, bpe or unigram)")
