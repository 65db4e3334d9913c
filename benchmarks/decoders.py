"""Real-time factor and WER of every decoder at several beams, for trained checkpoints.

For each checkpoint (one per family) and each of its decoders (greedy; beam; the
transducer's modified beam; CTC beam with a word 3-gram LM when ``--lm`` is given) at
beams ``--beams``, decodes the first ``--limit`` utterances of ``--manifest`` in batches
of 16 on one CPU thread and prints the real-time factor (decoding seconds, encoder
included, over audio seconds) and the WER/CER.

    python benchmarks/decoders.py --models exp/synthetic/ctc/best.pt exp/synthetic/transducer/best.pt \\
        exp/synthetic/attention/best.pt --manifest data/synthetic/manifests/asr/test.jsonl \\
        --lm exp/synthetic/lm3.arpa --limit 100
"""

import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from asr.data.manifest import read_manifest  # noqa: E402
from asr.decode import DecodeOptions, transcribe_items  # noqa: E402
from asr.evaluate import error_rates  # noqa: E402
from asr.text import normalize_text  # noqa: E402
from asr.train import load_model  # noqa: E402


def settings(family: str, beams: list[int], lm: str, lm_weight: float, word_bonus: float):
    yield "greedy", DecodeOptions()
    for beam in beams:
        yield f"beam {beam}", DecodeOptions(decoder="beam", beam=beam)
        if family == "transducer":
            yield f"modified_beam {beam}", DecodeOptions(decoder="modified_beam", beam=beam)
        if family == "ctc" and lm:
            yield f"beam {beam} + 3-gram LM", DecodeOptions(decoder="beam", beam=beam, lm=lm, lm_weight=lm_weight,
                                                            word_bonus=word_bonus)
        if family == "attention":
            yield f"beam {beam} + CTC 0.3", DecodeOptions(decoder="beam", beam=beam, ctc_weight=0.3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", required=True, help="checkpoints, one per family")
    ap.add_argument("--manifest", required=True, help="test manifest with text")
    ap.add_argument("--limit", type=int, default=100, help="first N utterances (default 100)")
    ap.add_argument("--beams", default="4,8,16", help="beam widths besides greedy (default 4,8,16; 1 = greedy-like)")
    ap.add_argument("--lm", default="", help="ARPA word LM for CTC shallow fusion (asr lm --manifest train.jsonl)")
    ap.add_argument("--lm-weight", type=float, default=0.5, help="LM weight (default 0.5)")
    ap.add_argument("--word-bonus", type=float, default=1.0, help="word insertion bonus with the LM (default 1.0)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    items = read_manifest(args.manifest, needs_text=True)[: args.limit]
    refs = [normalize_text(it["text"]) for it in items]
    audio = sum(it["duration"] for it in items)
    beams = [int(b) for b in args.beams.split(",")]
    print(f"{len(items)} utterances ({audio / 60:.1f} min) of {args.manifest}, 1 CPU thread, batches of 16; "
          f"RTF = decoding time (encoder included) / audio time")
    print("| model | decoder | RTF | WER % | CER % |")
    print("|---|---|---|---|---|")
    for path in args.models:
        model, family, tokenizer, _ = load_model(path)
        for name, options in settings(family.name, beams, args.lm, args.lm_weight, args.word_bonus):
            t0 = time.perf_counter()
            hyps = transcribe_items(model, family, tokenizer, items, 16, "cpu", progress=False, options=options)
            rtf = (time.perf_counter() - t0) / audio
            r = error_rates(refs, hyps)
            print(f"| {family.name} | {name} | {rtf:.3f} | {100 * r['wer']:.2f} | {100 * r['cer']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
