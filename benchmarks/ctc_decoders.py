"""CTC beam search: this toolkit's prefix beam search vs pyctcdecode vs torchaudio (flashlight).

All decoders get the same CTC log-probabilities, computed once from a trained checkpoint over a
manifest (``--model``, ``--manifest``), or, with ``--synthetic N``, made up from N sentences
(peaky frames of their characters with noise, to check that the script runs without a model).
One CPU thread. For each decoder and beam (default 1, 4, 8, 16) prints the real-time factor
(decode seconds / audio seconds; best of ``--repeats``) and the WER against the references.

With ``--lm-text MANIFEST`` (or ``--lm ARPA``) a word 3-gram (interpolated Kneser-Ney, built
here with :func:`asr.decode.lm.build_ngram`) is fused as well: ours reads the ARPA file;
torchaudio reads it through flashlight's KenLM, with a lexicon of the LM's words (so it only
outputs in-vocabulary words); pyctcdecode only with the ``kenlm`` Python module installed.
Peer settings are their defaults apart from the beam (pyctcdecode prunes tokens below
ln p = -5 and hypotheses 10 below the best; torchaudio merges hypotheses by max, not sum).
LM weight and word bonus mean the same for all three (torchaudio's weight is scaled by ln 10
because flashlight's KenLM scores are log10); ours and pyctcdecode also charge -10 for
out-of-vocabulary words (ours: ``oov_penalty``).

"ours" is :func:`asr.decode.ctc.ctc_beam_search_batch` over all utterances at once (how the
toolkit decodes a batch; each frame is a few array operations over every beam), "ours 1 utt
at a time" calls :func:`ctc_prefix_beam_search` per utterance; ``--threshold T`` adds rows
with ``beam_threshold=T`` (prefixes more than T below the best are dropped, like the peers do).
torchaudio also gets the whole padded batch in one call; pyctcdecode decodes one by one (its
batch call only adds a process pool).

    python benchmarks/ctc_decoders.py --model exp/synthetic/ctc/best.pt \\
        --manifest data/synthetic/manifests/asr/test.jsonl \\
        [--lm-text data/synthetic/manifests/asr/train.jsonl --lm-weight 0.5 --word-bonus 1]
    python benchmarks/ctc_decoders.py --synthetic 100
"""

import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from torch.nn.utils.rnn import pad_sequence  # noqa: E402

from asr.decode.ctc import ctc_beam_search_batch, ctc_prefix_beam_search  # noqa: E402
from asr.decode.lm import BOS, EOS, UNK, NGramLM, build_ngram, texts_from_manifest  # noqa: E402
from asr.evaluate import error_rates  # noqa: E402
from asr.models.ctc import ctc_greedy  # noqa: E402
from asr.text import CharTokenizer, normalize_text  # noqa: E402

FRAME_SECONDS_SYNTHETIC = 0.04


# ------------------------------------------------------------------ log-probabilities
@torch.no_grad()
def model_log_probs(model_path: str, manifest: str, limit: int | None, batch_size: int = 16):
    """``(list of (T, V) log-probs, references, audio seconds, tokenizer)`` from a checkpoint."""
    from asr.data.dataset import AudioDataset, collate_batch
    from asr.data.manifest import read_manifest
    from asr.train import load_model

    model, family, tokenizer, _ = load_model(model_path, "cpu")
    if family.name != "ctc":
        raise SystemExit(f"{model_path}: a {family.name!r} model, not CTC")
    items = read_manifest(manifest, needs_text=True)[:limit]
    sr = model.frontend.features.config.sample_rate
    dataset = AudioDataset(items, sample_rate=sr)
    out, refs, seconds = [], [], 0.0
    for start in range(0, len(items), batch_size):
        batch = collate_batch([dataset[i] for i in range(start, min(start + batch_size, len(items)))])
        lp, lengths = model(batch["wav"], batch["wav_lengths"])
        for b, n in enumerate(lengths.tolist()):
            out.append(lp[b, :n].float().contiguous())
        refs += [normalize_text(t) for t in batch["texts"]]
        seconds += float(batch["wav_lengths"].sum()) / sr
    return out, refs, seconds, tokenizer


def synthetic_log_probs(n: int, seed: int = 0):
    """Made-up emissions: each character of a random sentence over a few frames, plus noise."""
    words = ("THE CAT SAT ON A MAT DOG RAN AFTER RED BALL BIG SMALL HOUSE NEAR RIVER OLD MAN "
             "WALKED SLOWLY WINDOW OPEN WINTER DAY LOVELY").split()
    tok = CharTokenizer.english()
    g = torch.Generator().manual_seed(seed)
    out, refs, frames = [], [], 0
    for _ in range(n):
        k = int(torch.randint(3, 9, (1,), generator=g))
        text = " ".join(words[int(i)] for i in torch.randint(len(words), (k,), generator=g))
        logits = []
        for tid in tok.encode(text):
            for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
                row = torch.zeros(tok.vocab_size)
                row[tid], row[0] = 6.0, 2.0
                logits.append(row)
            row = torch.zeros(tok.vocab_size)
            row[0] = 6.0
            logits.append(row)
        logits = torch.stack(logits) + 1.2 * torch.randn(len(logits), tok.vocab_size, generator=g)
        out.append(torch.log_softmax(logits, -1))
        refs.append(text)
        frames += len(logits)
    return out, refs, frames * FRAME_SECONDS_SYNTHETIC, tok


# ------------------------------------------------------------------ decoders
@contextlib.contextmanager
def quiet():
    """Silence what C/C++ code writes to stdout/stderr (KenLM's loading progress)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


class Emissions:
    """The log-probs as a list of ``(T, V)`` tensors and as one padded ``(N, T, V)`` batch."""

    def __init__(self, lps: list[torch.Tensor]):
        self.list = lps
        self.padded = pad_sequence(lps, batch_first=True).contiguous()
        self.lengths = torch.tensor([len(lp) for lp in lps])


def ours(tokenizer, lm, lm_weight, word_bonus, **kw):
    """Our batched search (:func:`ctc_beam_search_batch`, as ``asr transcribe`` runs it)."""
    def run(em: Emissions, beam):
        nbest = ctc_beam_search_batch(em.padded, em.lengths, beam, tokenizer=tokenizer, lm=lm, lm_weight=lm_weight,
                                      word_bonus=word_bonus, nbest=1, **kw)
        return [tokenizer.decode(n[0].tokens) for n in nbest]
    return run


def ours_single(tokenizer, **kw):
    """Our search one utterance at a time (:func:`ctc_prefix_beam_search`)."""
    def run(em: Emissions, beam):
        return [tokenizer.decode(ctc_prefix_beam_search(lp, beam, tokenizer=tokenizer, nbest=1, **kw)[0].tokens)
                for lp in em.list]
    return run


def greedy(tokenizer):
    def run(em: Emissions, beam):
        return [tokenizer.decode(t) for t in ctc_greedy(em.padded, em.lengths)]
    return run


def labels_of(tokenizer) -> list[str]:
    if hasattr(tokenizer, "symbols"):
        return list(tokenizer.symbols)
    return [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]


def pyctcdecode_decoder(tokenizer, arpa, lm_words, lm_weight, word_bonus):
    """``(run, note)``; ``run`` is None when pyctcdecode (or kenlm, for an LM) is missing."""
    try:
        import pyctcdecode  # noqa: F401
        from pyctcdecode import build_ctcdecoder
    except ImportError:
        return None, "pyctcdecode not installed (pip install pyctcdecode)"
    if arpa is not None:
        try:
            import kenlm  # noqa: F401
        except ImportError:
            return None, "pyctcdecode needs the kenlm module for an LM (not installed)"
    labels = labels_of(tokenizer)
    labels[0] = ""  # blank
    labels[1], labels[2] = "\u2047", "\u2048"  # unk, eos: single characters no reference contains
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
        if arpa is None:
            dec = build_ctcdecoder(labels)
        else:
            dec = build_ctcdecoder(labels, kenlm_model_path=str(arpa), unigrams=lm_words, alpha=lm_weight,
                                   beta=word_bonus)

    def run(em: Emissions, beam):
        return [dec.decode(lp.numpy(), beam_width=beam) for lp in em.list]
    return run, "defaults (token_min_logp=-5, beam_prune_logp=-10)"


def torchaudio_decoder(tokenizer, arpa, lm_words, lm_weight, word_bonus, workdir, beams):
    try:
        from torchaudio.models.decoder import ctc_decoder
    except ImportError as e:
        return None, f"torchaudio's ctc_decoder unavailable ({e}); pip install flashlight-text"
    if not hasattr(tokenizer, "symbols"):
        return None, "set up here for character models only"
    tokens = ["|" if s == " " else s for s in tokenizer.symbols]
    lexicon = None
    if arpa is not None:
        lexicon = Path(workdir) / "lexicon.txt"
        letters = set(tokens)
        with open(lexicon, "w") as f:
            for w in lm_words:
                if all(ch in letters for ch in w):
                    f.write(f"{w}\t{' '.join(w)} |\n")

    # built before timing (loading the LM is not decoding); flashlight's KenLM scores are log10,
    # so the weight is scaled to match our natural-log fusion
    decoders = {}
    for beam in beams:
        with quiet():
            decoders[beam] = ctc_decoder(
                lexicon=str(lexicon) if lexicon else None, tokens=tokens, lm=str(arpa) if arpa else None,
                beam_size=beam, lm_weight=lm_weight * math.log(10) if arpa else 0.0, word_score=word_bonus,
                blank_token=tokenizer.symbols[0], sil_token="|", unk_word=UNK)

    def run(em: Emissions, beam):
        dec = decoders[beam]
        out = []
        for hyps in dec(em.padded, em.lengths):  # the whole batch in one call
            hyp = hyps[0]
            if lexicon:
                out.append(" ".join(hyp.words))
            else:
                out.append("".join(dec.idxs_to_tokens(hyp.tokens)).replace("|", " "))
        return out
    return run, "defaults (log_add=False, beam_threshold=50)" + (", lexicon of the LM words" if arpa else "")


# ------------------------------------------------------------------ main
def clean(text: str) -> str:
    for special in ("\u2047", "\u2048", "<unk>", "<sos/eos>", "<blank>"):
        text = text.replace(special, " ")
    return normalize_text(text)


def time_decoder(run, em: Emissions, beam, repeats):
    best, hyps = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        hyps = run(em, beam)
        best = min(best, time.perf_counter() - t0)
    return best, [clean(h) for h in hyps]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="CTC checkpoint (e.g. exp/synthetic/ctc/best.pt)")
    ap.add_argument("--manifest", help="utterances to decode (e.g. data/synthetic/manifests/asr/test.jsonl)")
    ap.add_argument("--synthetic", type=int, default=0, help="made-up emissions for N sentences instead of a model")
    ap.add_argument("--limit", type=int, default=None, help="first N utterances of the manifest")
    ap.add_argument("--beams", default="1,4,8,16", help="comma-separated beam widths (default 1,4,8,16)")
    ap.add_argument("--lm", help="word n-gram ARPA file to fuse")
    ap.add_argument("--lm-text", help="manifest whose texts train a 3-gram to fuse (written to a temporary ARPA)")
    ap.add_argument("--lm-weight", type=float, default=0.5)
    ap.add_argument("--word-bonus", type=float, default=1.0)
    ap.add_argument("--threshold", type=float, default=None,
                    help="also time ours with this beam_threshold (prefixes this far below the best are dropped)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per decoder and beam; the best is kept")
    ap.add_argument("--decoders", default="ours,pyctcdecode,torchaudio", help="which decoders (default all)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    beams = [int(b) for b in args.beams.split(",")]

    if args.synthetic:
        lps, refs, seconds, tokenizer = synthetic_log_probs(args.synthetic)
        source = f"{args.synthetic} synthetic emission sequences"
    else:
        if not (args.model and args.manifest):
            ap.error("give --model and --manifest, or --synthetic N")
        t0 = time.perf_counter()
        lps, refs, seconds, tokenizer = model_log_probs(args.model, args.manifest, args.limit)
        source = (f"{args.model} on {len(lps)} utterances of {args.manifest} "
                  f"(log-probs in {time.perf_counter() - t0:.1f} s)")
    frames = sum(len(lp) for lp in lps)
    print(f"{source}: {seconds:.1f} s of audio, {frames} frames, vocabulary {lps[0].shape[1]}, 1 thread")

    workdir = tempfile.mkdtemp(prefix="ctc_bench_")
    arpa, lm, lm_words = None, None, None
    if args.lm or args.lm_text:
        arpa = Path(args.lm) if args.lm else Path(workdir) / "lm.arpa"
        if args.lm_text:
            build_ngram(texts_from_manifest(args.lm_text), order=3, path=arpa)
        lm = NGramLM.from_arpa(arpa)
        lm_words = [w for w in lm.vocab if w not in (BOS, EOS, UNK)]
        print(f"LM: {arpa} (order {lm.order}, {len(lm_words)} words), weight {args.lm_weight}, "
              f"word bonus {args.word_bonus}")

    emissions = Emissions(lps)
    wanted = args.decoders.split(",")
    decoders = [("greedy (ctc_greedy)", greedy(tokenizer), "beam ignored")]
    if "ours" in wanted:
        decoders.append(("ours", ours(tokenizer, None, 0.0, 0.0), "no LM, exact beam (no threshold), batched"))
        decoders.append(("ours 1 utt at a time", ours_single(tokenizer), "no LM, exact beam, unbatched"))
        if args.threshold is not None:
            decoders.append((f"ours thr={args.threshold:g}",
                             ours(tokenizer, None, 0.0, 0.0, beam_threshold=args.threshold),
                             f"no LM, beam_threshold={args.threshold:g}"))
    if "pyctcdecode" in wanted:
        run, note = pyctcdecode_decoder(tokenizer, None, None, 0.0, 0.0)
        decoders.append(("pyctcdecode", run, note))
    if "torchaudio" in wanted:
        run, note = torchaudio_decoder(tokenizer, None, None, 0.0, 0.0, workdir, beams)
        decoders.append(("torchaudio", run, note))
    if lm is not None:
        if "ours" in wanted:
            decoders.append(("ours + LM", ours(tokenizer, lm, args.lm_weight, args.word_bonus), "ARPA, exact beam"))
            if args.threshold is not None:
                decoders.append((f"ours thr={args.threshold:g} + LM",
                                 ours(tokenizer, lm, args.lm_weight, args.word_bonus, beam_threshold=args.threshold),
                                 f"ARPA, beam_threshold={args.threshold:g}"))
        if "pyctcdecode" in wanted:
            run, note = pyctcdecode_decoder(tokenizer, arpa, lm_words, args.lm_weight, args.word_bonus)
            decoders.append(("pyctcdecode + LM", run, note))
        if "torchaudio" in wanted:
            run, note = torchaudio_decoder(tokenizer, arpa, lm_words, args.lm_weight, args.word_bonus, workdir, beams)
            decoders.append(("torchaudio + LM", run, note))

    print(f"\n{'decoder':<24} {'beam':>4} {'RTF':>10} {'x ours':>7} {'WER %':>7}")
    ours_rtf: dict[tuple[bool, int], float] = {}
    notes = []
    for name, run, note in decoders:
        notes.append(f"  {name}: {note}")
        if run is None:
            print(f"{name:<24} {'-':>4} {'n/a':>10} {'':>7} {'':>7}  ({note})")
            continue
        for beam in beams if not name.startswith("greedy") else [1]:
            secs, hyps = time_decoder(run, emissions, beam, args.repeats)
            rtf = secs / seconds
            key = ("LM" in name, beam)
            if name in ("ours", "ours + LM"):
                ours_rtf[key] = rtf
            rel = f"{rtf / ours_rtf[key]:.2f}" if key in ours_rtf else ""
            wer = 100 * error_rates(refs, hyps)["wer"]
            print(f"{name:<24} {beam:>4} {rtf:>10.5f} {rel:>7} {wer:>7.2f}", flush=True)
    print("\nRTF = decode seconds / audio seconds (lower is faster); 'x ours' = RTF / ours at that beam.")
    print("\n".join(notes))


if __name__ == "__main__":
    main()
