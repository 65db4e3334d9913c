"""Word and character error rates (jiwer) with per-utterance alignments.

Example:
    >>> r = error_rates(["THE CAT SAT", "HELLO"], ["THE HAT SAT DOWN", "HELLO"])
    >>> round(r["wer"], 3), r["substitutions"], r["insertions"]
    (0.5, 1, 1)
    >>> print(format_alignment("THE CAT SAT", "THE HAT SAT DOWN"))
    REF: THE CAT SAT ****
    HYP: THE HAT SAT DOWN
             S       I
"""

from __future__ import annotations

import os
from typing import Sequence

import jiwer

from asr.utils import atomic_open


def _word_counts(refs: Sequence[str], hyps: Sequence[str]) -> dict:
    pairs = [(r, h) for r, h in zip(refs, hyps) if r.split()]
    counts = {"substitutions": 0, "deletions": 0, "insertions": 0, "hits": 0}
    if pairs:
        out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
        counts = {k: int(getattr(out, k)) for k in counts}
    # jiwer refuses empty references: every word hypothesised for one is an insertion
    counts["insertions"] += sum(len(h.split()) for r, h in zip(refs, hyps) if not r.split())
    return counts


def _char_errors(refs: Sequence[str], hyps: Sequence[str]) -> tuple[int, int]:
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    errors = sum(len(h) for r, h in zip(refs, hyps) if not r)
    if pairs:
        out = jiwer.process_characters([r for r, _ in pairs], [h for _, h in pairs])
        errors += out.substitutions + out.deletions + out.insertions
    return errors, sum(len(r) for r in refs)


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> dict:
    """Corpus WER and CER (errors over reference words / characters, spaces included in CER)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    counts = _word_counts(refs, hyps)
    words = sum(len(r.split()) for r in refs)
    char_errors, chars = _char_errors(refs, hyps)
    errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
    return {
        "wer": errors / max(words, 1),
        "cer": char_errors / max(chars, 1),
        "words": words,
        "chars": chars,
        "utterances": len(refs),
        **counts,
    }


def format_alignment(ref: str, hyp: str) -> str:
    """Three lines, sclite style: REF and HYP aligned word by word, then S/D/I marks."""
    r, h = ref.split(), hyp.split()
    if not r:
        cols = [("*" * len(w), w, "I") for w in h]
    else:
        cols = []
        for chunk in jiwer.process_words(ref, hyp).alignments[0]:
            rw, hw = r[chunk.ref_start_idx : chunk.ref_end_idx], h[chunk.hyp_start_idx : chunk.hyp_end_idx]
            if chunk.type == "insert":
                cols += [("*" * len(w), w, "I") for w in hw]
            elif chunk.type == "delete":
                cols += [(w, "*" * len(w), "D") for w in rw]
            else:
                mark = "" if chunk.type == "equal" else "S"
                cols += [(a, b, mark) for a, b in zip(rw, hw)]
    widths = [max(len(a), len(b)) for a, b, _ in cols]
    line = lambda i: " ".join(c[i].ljust(w) for c, w in zip(cols, widths)).rstrip()
    return f"REF: {line(0)}\nHYP: {line(1)}\n     {line(2)}".rstrip()


def write_alignments(path: str | os.PathLike, ids: Sequence[str], refs: Sequence[str], hyps: Sequence[str]) -> None:
    """One block per utterance (id, its error counts, the alignment), written atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        for uid, ref, hyp in zip(ids, refs, hyps):
            c = _word_counts([ref], [hyp])
            f.write(f"id: {uid}  S={c['substitutions']} D={c['deletions']} I={c['insertions']} "
                    f"words={len(ref.split())}\n{format_alignment(ref, hyp)}\n\n")
        total = error_rates(refs, hyps)
        f.write(f"WER {100 * total['wer']:.2f}% ({total['substitutions']} sub, {total['deletions']} del, "
                f"{total['insertions']} ins / {total['words']} words)  CER {100 * total['cer']:.2f}%\n")
