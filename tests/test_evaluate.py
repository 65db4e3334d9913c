import jiwer
import pytest

from asr.evaluate import error_rates, format_alignment, write_alignments

REFS = ["THE CAT SAT ON THE MAT", "A QUICK TEST", "HELLO WORLD", ""]
HYPS = ["THE HAT SAT THE MAT NOW", "A QUICK TEST", "HELO", "UH"]


def test_rates_against_jiwer():
    r = error_rates(REFS[:3], HYPS[:3])
    assert r["wer"] == pytest.approx(jiwer.wer(REFS[:3], HYPS[:3]))
    assert r["cer"] == pytest.approx(jiwer.cer(REFS[:3], HYPS[:3]))


def test_empty_reference_counts_insertions():
    r = error_rates(REFS, HYPS)
    base = error_rates(REFS[:3], HYPS[:3])
    assert r["insertions"] == base["insertions"] + 1 and r["words"] == base["words"]
    assert r["wer"] == pytest.approx((base["wer"] * base["words"] + 1) / base["words"])


def test_alignment_marks():
    text = format_alignment("THE CAT SAT ON THE MAT", "THE HAT SAT THE MAT NOW")
    ref, hyp, ops = text.splitlines()
    assert ref.split() == ["REF:", "THE", "CAT", "SAT", "ON", "THE", "MAT", "***"]
    assert hyp.split() == ["HYP:", "THE", "HAT", "SAT", "**", "THE", "MAT", "NOW"]
    assert ops.split() == ["S", "D", "I"]
    assert len(ref) == len(hyp)


def test_write_alignments(tmp_path):
    write_alignments(tmp_path / "ali.txt", ["a", "b", "c", "d"], REFS, HYPS)
    text = (tmp_path / "ali.txt").read_text()
    assert "id: a  S=1 D=1 I=1 words=6" in text and "id: d  S=0 D=0 I=1 words=0" in text
    assert text.strip().splitlines()[-1].startswith("WER ")


def test_length_mismatch():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_rates(["A", "B"], ["A"])
