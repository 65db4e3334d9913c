import io

import pytest
import torch

from asr.text import (CharTokenizer, SentencePieceTokenizer, build_tokenizer, normalize_text,
                      tokenizer_from_state)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "She said: it's a lovely day, isn't it?",
    "A man walked slowly to the old house near the river",
    "Why would anyone open the window in winter",
] * 5


@pytest.mark.parametrize("raw,norm", [
    ("Hello,   World!", "HELLO WORLD"),
    ("naïve café", "NAIVE CAFE"),
    ("don\u2019t stop", "DON'T STOP"),
    ("well-known 42 things", "WELL KNOWN THINGS"),
    ("   ", ""),
])
def test_normalize(raw, norm):
    assert normalize_text(raw) == norm


def roundtrip_through_checkpoint(tok):
    buf = io.BytesIO()
    torch.save({"tokenizer": tok.state_dict()}, buf)
    buf.seek(0)
    return tokenizer_from_state(torch.load(buf, weights_only=True)["tokenizer"])


def test_char_roundtrip_and_specials():
    tok = CharTokenizer.from_texts(TEXTS)
    assert tok.symbols[:3] == ["<blank>", "<unk>", "<sos/eos>"]
    for t in TEXTS:
        ids = tok.encode(t)
        assert min(ids) >= 3
        assert tok.decode(ids) == normalize_text(t)
    tok2 = roundtrip_through_checkpoint(tok)
    assert tok2.symbols == tok.symbols


def test_char_oov_counts_unknowns():
    tok = CharTokenizer(list("AB "))
    assert tok.encode("abc") == [3, 4, tok.unk_id]
    assert tok.oov_count == 1
    assert tok.decode(tok.encode("abc")) == "AB"


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_sentencepiece_roundtrip(kind):
    tok = build_tokenizer(kind, TEXTS, vocab_size=60)
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.sp.id_to_piece(0) == "<blank>" and tok.sp.id_to_piece(2) == "<sos/eos>"
    for t in TEXTS:
        ids = tok.encode(t)
        assert min(ids) >= 3
        assert tok.decode(ids) == normalize_text(t)
    # pieces are longer than characters on average: the model really merged
    assert sum(len(tok.encode(t)) for t in TEXTS) < sum(len(normalize_text(t)) for t in TEXTS)
    tok2 = roundtrip_through_checkpoint(tok)
    assert [tok2.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]


def test_bpe_training_is_deterministic():
    a = build_tokenizer("bpe", TEXTS, vocab_size=50)
    b = build_tokenizer("bpe", TEXTS, vocab_size=50)
    assert a.model_proto == b.model_proto


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        build_tokenizer("words", TEXTS)
