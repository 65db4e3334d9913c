"""Word timestamps and confidences of trained models against the synthesizer's word boundaries.

Synthesizes ``--sentences`` held-out sentences (:func:`asr.data.sentences.generate_sentences` with a
seed the corpus does not use) with the espeak-ng speakers of the synthetic corpus's *test* split
(:func:`asr.data.tts.list_speakers`: voices and variants no model trained on, with their pitch,
speed, word gap and warp), through libespeak-ng's word events
(:func:`asr.data.tts.synthesize_words`), so every word's true start is known. Then, per model:

* ``reference``: the model's alignment of the reference transcript (``Family.align``: CTC forced
  alignment, the RNN-T lattice's best path, the joint CTC head of attention models); the start
  error over all words;
* per decoder (``greedy``, ``beam``; ``--lm`` adds ``beam+lm``, CTC shallow fusion): the decoded words with
  :func:`asr.decode.transcribe_items` ``timestamps=True``; the start error over the correctly
  recognised words (matched to a reference word by a jiwer word alignment), and the AUC of the word
  confidence for telling correct words from wrong ones (0.5 = no better than chance).

Prints one markdown table: WER, words, mean / median |start error| (seconds), share within 0.1 s,
AUC, correct / wrong words.

    python benchmarks/timestamps.py exp/synthetic/ctc/best.pt exp/synthetic/transducer/best.pt \\
        [--sentences 100] [--beam 4] [--lm data/lm.arpa] [--device cpu]
"""

import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from asr.audio import read_audio, resample, write_audio  # noqa: E402
from asr.checkpoint import load_model  # noqa: E402
from asr.data.sentences import generate_sentences, normalize_transcript  # noqa: E402
from asr.data.tts import list_speakers, synthesize_words  # noqa: E402
from asr.decode import DecodeOptions, transcribe_items  # noqa: E402
from asr.decode.ctc import WordSplitter  # noqa: E402
from asr.decode.timestamps import confidence_auc, frame_seconds, words_from_alignment  # noqa: E402
from asr.evaluate import error_rates  # noqa: E402

SENTENCE_SEED = 7919  # not the synthetic corpus's seed: sentences it did not train on


def synthesize_test_set(folder: Path, n: int, seed: int) -> list[dict]:
    """``n`` held-out sentences by the test-split espeak-ng speakers, written to ``folder``; each item
    carries ``starts``, the synthesizer's word starts in seconds of the written file."""
    speakers = [s for s in list_speakers(seed, use_flite=False) if s.split == "test" and s.engine == "espeak"]
    rng = np.random.default_rng(seed)
    items = []
    for i, sentence in enumerate(generate_sentences(n, seed=SENTENCE_SEED + seed)):
        spk = speakers[i % len(speakers)]
        text = normalize_transcript(sentence)
        wav, sr, words = synthesize_words(sentence, spk.voice, spk.variant, rate=spk.speed, pitch=spk.pitch,
                                          word_gap=spk.word_gap)
        if [normalize_transcript(w) for w, _ in words] != text.split():
            continue  # the synthesizer reported other words than the transcript has (rare)
        # as the corpus does: a voice "warp" (read at sr * warp: times shrink by 1 / warp), lead-in and tail
        warp = spk.warp
        wav = resample(wav, int(round(sr * warp)), sr)
        lead, tail = (np.zeros(int(rng.uniform(0.05, 0.25) * sr), np.float32) for _ in range(2))
        wav = np.concatenate([lead, wav, tail])
        wav = (wav * (rng.uniform(0.3, 0.95) / max(float(np.abs(wav).max()), 1e-6))).astype(np.float32)
        path = folder / f"t{i:04d}.wav"
        write_audio(path, wav, sr)
        items.append({"id": path.stem, "audio": str(path), "duration": len(wav) / sr, "text": text,
                      "starts": [t / warp + len(lead) / sr for _, t in words], "speaker": spk.name})
    return items


def reference_errors(model, family, tokenizer, items: list[dict], batch_size: int, device: str) -> list[float]:
    """Start errors (signed seconds) of the words of the reference transcripts as the model aligns them."""
    splitter, seconds = WordSplitter(tokenizer), frame_seconds(model)
    sr = model.frontend.features.config.sample_rate
    errors = []
    for s in range(0, len(items), batch_size):
        chunk = items[s : s + batch_size]
        wavs = [read_audio(it["audio"], sr)[0] for it in chunk]
        batch = {"wav": torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True).to(device),
                 "wav_lengths": torch.tensor([w.shape[0] for w in wavs], device=device)}
        refs = [tokenizer.encode(it["text"]) for it in chunk]
        with torch.no_grad():
            alignments = family.align(model, batch, refs)
        for it, ref, ali in zip(chunk, refs, alignments):
            words = words_from_alignment(ref, ali, splitter, tokenizer, seconds)
            if len(words) == len(it["starts"]):
                errors += [w.start - t for w, t in zip(words, it["starts"])]
    return errors


def decoded_scores(transcripts, items: list[dict]) -> tuple[list[float], list[float], list[bool], list[str]]:
    """Start errors of the correctly decoded words, every word's confidence and correctness, the texts."""
    import jiwer

    errors, confidence, correct, texts = [], [], [], []
    for t, it in zip(transcripts, items):
        texts.append(t.text)
        ok = np.zeros(len(t.words), dtype=bool)
        if t.words:
            for chunk in jiwer.process_words(it["text"], " ".join(w.word for w in t.words)).alignments[0]:
                if chunk.type == "equal":
                    for k in range(chunk.hyp_end_idx - chunk.hyp_start_idx):
                        h, r = chunk.hyp_start_idx + k, chunk.ref_start_idx + k
                        ok[h] = True
                        errors.append(t.words[h].start - it["starts"][r])
        confidence += [w.confidence for w in t.words]
        correct += ok.tolist()
    return errors, confidence, correct, texts


def row(name: str, decoder: str, wer: float | None, errors, auc: float | None, correct=None) -> str:
    e = np.abs(np.asarray(errors, dtype=np.float64))
    stats = (f"{e.mean():>6.3f} | {np.median(e):>6.3f} | {(e <= 0.1).mean():>6.1%}" if len(e)
             else f"{'-':>6} | {'-':>6} | {'-':>6}")
    ok = "" if correct is None else f"{sum(correct)} / {len(correct) - sum(correct)}"
    wer_s = "" if wer is None else f"{wer:.1%}"
    auc_s = "" if auc is None else f"{auc:.3f}"
    return f"| {name:<28} | {decoder:<9} | {wer_s:>6} | {len(e):>5} | {stats} | {auc_s:>5} | {ok:>11} |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path, help="checkpoints (CTC, transducer, attention with a CTC head)")
    ap.add_argument("--sentences", type=int, default=100, help="held-out sentences to synthesize (default 100)")
    ap.add_argument("--beam", type=int, default=4, help="beam width of the beam rows (default 4)")
    ap.add_argument("--lm", type=Path, default=None,
                    help="an ARPA LM: adds a beam+lm row (shallow fusion: CTC models; the others ignore it)")
    ap.add_argument("--seed", type=int, default=0, help="the speakers' seed, as `asr prepare synthetic` (default 0)")
    ap.add_argument("--batch-size", type=int, default=16, help="utterances decoded together (default 16)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        items = synthesize_test_set(Path(tmp), args.sentences, args.seed)
        speakers = sorted({it["speaker"] for it in items})
        print(f"{len(items)} held-out sentences ({sum(len(it['starts']) for it in items)} words, "
              f"{sum(it['duration'] for it in items) / 60:.1f} min) by {len(speakers)} test speakers "
              f"({', '.join(speakers)}), synthesized in {time.perf_counter() - t0:.0f} s; |start error| in seconds; "
              f"AUC of word confidence, correct vs wrong words", file=sys.stderr)
        sys.stderr.flush()
        print(f"| {'model':<28} | {'decoder':<9} | {'WER':>6} | {'words':>5} | {'mean':>6} | {'median':>6} | "
              f"{'<=0.1 s':>6} | {'AUC':>5} | {'right/wrong':>11} |")
        print(f"|{'-' * 30}|{'-' * 11}|{'-' * 8}|{'-' * 7}|{'-' * 8}|{'-' * 8}|{'-' * 9}|{'-' * 7}|{'-' * 13}|")
        for path in args.models:
            model, family, tokenizer, _ = load_model(path, args.device, purpose="timestamps benchmark",
                                                     recognizer=True)
            name = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
            name = f"{name} ({family.name})"[:28]
            print(row(name, "reference", None, reference_errors(model, family, tokenizer, items, args.batch_size,
                                                                args.device), None), flush=True)
            decoders = ["greedy", "beam"] + (["beam+lm"] if args.lm else [])
            for decoder in decoders:
                options = DecodeOptions(decoder=decoder.split("+")[0], beam=args.beam,
                                        lm=str(args.lm) if decoder.endswith("+lm") else "")
                transcripts = transcribe_items(model, family, tokenizer, items, args.batch_size, args.device,
                                               progress=False, options=options, timestamps=True)
                errors, confidence, correct, texts = decoded_scores(transcripts, items)
                wer = error_rates([it["text"] for it in items], texts)["wer"]
                print(row(name, decoder, wer, errors, confidence_auc(confidence, correct), correct), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
