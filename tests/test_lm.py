import math

import pytest

from asr.decode.lm import ARPAError, NGramLM, build_ngram, texts_from_manifest

LN10 = math.log(10)

CORPUS = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat ran after the dog",
    "The cat, the dog!",
    "dog",
    "on the mat the cat sat",
]

TINY_ARPA = """some header text a tool wrote

\\data\\
ngram 1=5
ngram 2=3
ngram 3=1

\\1-grams:
-1.0\t<unk>
-99\t<s>\t-0.5
-0.6\t</s>
-0.4\tA\t-0.3
-0.7\tB\t-0.2

\\2-grams:
-0.2\t<s> A\t-0.1
-0.3\tA B\t-0.25
-0.5\tB </s>

\\3-grams:
-0.15\t<s> A B

\\end\\
"""


def contexts(lm: NGramLM) -> list[tuple]:
    """Every context the model has seen, plus some it has not."""
    n = lm.order - 1
    seen = {k[:-1][-n:] if n else () for k in lm.probs if len(k) > 1} | {lm.start_state}
    unseen = [("ZEBRA",) * n, (("THE",) + ("NEVER",) * n)[:n], (("NEVER",) + ("THE",) * n)[:n]]
    return sorted(seen) + unseen


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_kneser_ney_sums_to_one(order, tmp_path):
    lm = build_ngram(CORPUS, order=order, path=tmp_path / "lm.arpa")
    loaded = NGramLM.from_arpa(tmp_path / "lm.arpa")
    assert "</s>" in lm.vocab and "<unk>" in lm.vocab and "<s>" not in lm.vocab
    for ctx in contexts(lm):
        for model in (lm, loaded):
            total = sum(math.exp(model.score(ctx, w)[0]) for w in model.vocab)
            assert abs(total - 1.0) <= 1e-6, (order, ctx, total)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_arpa_round_trip(order, tmp_path):
    path = tmp_path / "lm.arpa"
    lm = build_ngram(CORPUS, order=order, path=path)
    loaded = NGramLM.from_arpa(path)
    assert loaded.order == order and loaded.vocab == lm.vocab
    assert set(loaded.probs) == set(lm.probs)
    for ctx in contexts(lm):
        for w in lm.vocab + ["OOV"]:
            a, sa = lm.score(ctx, w)
            b, sb = loaded.score(ctx, w)
            assert abs(a - b) < 1e-6 and sa == sb
    sentence = "THE CAT SAT ON THE LOG".split()
    assert abs(lm.score_sentence(sentence) - loaded.score_sentence(sentence)) < 1e-5
    # written again, the file is the same
    loaded.write_arpa(tmp_path / "again.arpa")
    assert (tmp_path / "again.arpa").read_text() == path.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_kneser_ney_prefers_seen_continuations():
    lm = build_ngram(CORPUS, order=3)
    ctx = ("THE", "CAT")
    assert lm.score(ctx, "SAT")[0] > lm.score(ctx, "LOG")[0]
    assert lm.score(lm.start_state, "THE")[0] > lm.score(lm.start_state, "AFTER")[0]
    # unseen words get the <unk> probability, and <unk> in the state
    lp, state = lm.score(ctx, "AARDVARK")
    assert lp == lm.score(ctx, "<unk>")[0] and state == ("CAT", "<unk>")


def test_backoff_against_hand_computed(tmp_path):
    path = tmp_path / "tiny.arpa"
    path.write_text(TINY_ARPA)
    lm = NGramLM.from_arpa(path)
    assert lm.order == 3 and lm.start_state == ("<s>",)

    def check(state, word, log10p, new_state):
        lp, st = lm.score(state, word)
        assert lp == pytest.approx(log10p * LN10, abs=1e-9)
        assert st == new_state

    check(("<s>",), "A", -0.2, ("<s>", "A"))  # bigram
    check(("<s>", "A"), "B", -0.15, ("A", "B"))  # trigram
    check(("A", "B"), "A", -0.25 - 0.2 - 0.4, ("B", "A"))  # bo(A B) + bo(B) + P(A)
    check(("<s>", "A"), "A", -0.1 - 0.3 - 0.4, ("A", "A"))  # bo(<s> A) + bo(A) + P(A)
    check(("A", "B"), "</s>", -0.25 - 0.5, ("B", "</s>"))  # bo(A B) + P(</s> | B)
    check(("B",), "</s>", -0.5, ("B", "</s>"))
    check(("<s>",), "ZEBRA", -0.5 - 1.0, ("<s>", "<unk>"))  # OOV: bo(<s>) + P(<unk>)
    check(("X", "Y"), "B", -0.7, ("Y", "B"))  # unknown context: no backoff weights
    assert lm.score_sentence(["A", "B"]) == pytest.approx((-0.2 - 0.15 - 0.25 - 0.5) * LN10)


def test_oov_floor_without_unk(tmp_path):
    path = tmp_path / "nounk.arpa"
    path.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-0.3\tA\n-0.3\t</s>\n\\end\\\n")
    lm = NGramLM.from_arpa(path, oov_log10=-7)
    assert lm.order == 1 and lm.start_state == ()
    assert lm.score((), "Q") == (pytest.approx(-7 * LN10), ())
    assert lm.score((), "A")[0] == pytest.approx(-0.3 * LN10)


@pytest.mark.parametrize("text,line,what", [
    (TINY_ARPA.replace("-0.3\tA B\t-0.25", "-0.3\tA B C D"), 17, "fields"),
    (TINY_ARPA.replace("-0.4\tA\t-0.3", "minus\tA\t-0.3"), 12, "not a number"),
    (TINY_ARPA.replace("ngram 2=3", "ngram 2=4"), 20, "announced 4, found 3"),
    (TINY_ARPA.replace("ngram 2=3", "ngram two"), 5, "count"),
    (TINY_ARPA.replace("\\end\\\n", ""), 23, "missing"),
    (TINY_ARPA.replace("\\3-grams:", "\\4-grams:"), 20, "no 'ngram 4='"),
    (TINY_ARPA.replace("-0.5\tB </s>", "0.5\tB </s>"), 18, "invalid"),
    (TINY_ARPA + "junk\n", 24, "after"),
    ("", 1, "no '\\data\\'"),
])
def test_malformed_arpa_names_file_and_line(tmp_path, text, line, what):
    path = tmp_path / "bad.arpa"
    path.write_text(text)
    with pytest.raises(ARPAError) as e:
        NGramLM.from_arpa(path)
    assert str(e.value).startswith(f"{path}:{line}:"), str(e.value)
    assert what in str(e.value)


def test_missing_arpa_file(tmp_path):
    with pytest.raises(ARPAError, match="nope.arpa"):
        NGramLM.from_arpa(tmp_path / "nope.arpa")


def test_texts_from_manifest(tmp_path):
    items = [{"id": "a", "text": "Hello, world"}, {"id": "b", "text": "  "}, {"id": "c"}]
    assert texts_from_manifest(items) == ["HELLO WORLD"]
    lm = build_ngram(texts_from_manifest(items), order=2)
    assert "HELLO" in lm and "WORLD" in lm
    with pytest.raises(ValueError):
        build_ngram(["", "!!"], order=2)
