"""Streaming ASR: the PyTorch recognizer against its ONNX exports (float32, int8), one thread.

For each streaming checkpoint given: export it (``asr export``, float32 and ``--int8``, into
``<checkpoint dir>/onnx`` and ``onnx_int8`` unless they exist), then feed every test utterance
in 200 ms chunks to each recognizer and report the real-time factor (compute seconds / audio
seconds, audio already decoded in memory), WER and CER (jiwer) and how many transcripts equal
the PyTorch streaming recognizer's.

    python benchmarks/asr_onnx.py exp/synthetic/ctc_streaming/best.pt exp/synthetic/transducer_streaming/best.pt \\
        [--manifest data/synthetic/manifests/asr/test.jsonl] [--limit 100]
"""

import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jiwer  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from asr.audio import read_audio  # noqa: E402
from asr.checkpoint import load_model  # noqa: E402
from asr.data.manifest import read_manifest  # noqa: E402
from asr.decode.streaming import Recognizer  # noqa: E402
from asr.export import export_streaming_onnx  # noqa: E402
from asr.runtime.recognizer import OnnxRecognizer  # noqa: E402
from asr.text import normalize_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def stream(rec, wav: np.ndarray, chunk: int, to_tensor: bool) -> tuple[str, float]:
    t = time.perf_counter()
    state = None
    x = torch.from_numpy(wav) if to_tensor else wav
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            _, state = rec.infer(x[i:i + chunk], state)
        text, _ = rec.infer(x[:0], state, final=True)
    return text, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path, help="streaming CTC/transducer checkpoints")
    ap.add_argument("--manifest", type=Path, default=REPO / "data/synthetic/manifests/asr/test.jsonl")
    ap.add_argument("--limit", type=int, default=0, help="only the first N utterances (default all)")
    ap.add_argument("--chunk-ms", type=float, default=200.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    items = read_manifest(args.manifest)
    items = items[: args.limit] if args.limit else items
    wavs = [read_audio(it["audio"], 16000)[0].numpy() for it in items]
    refs = [normalize_text(it["text"]) for it in items]
    audio = sum(len(w) for w in wavs) / 16000
    chunk = int(round(args.chunk_ms * 16))
    print(f"{len(items)} utterances, {audio / 60:.1f} min ({args.manifest}); {args.chunk_ms:g} ms chunks, one thread")
    print(f"{'model':<24} {'backend':<14} {'RTF':>7} {'x real time':>11} {'WER':>7} {'CER':>7} {'same text as torch':>19}")
    for ckpt in args.checkpoints:
        model, family, tok, _ = load_model(ckpt, "cpu", purpose="benchmark", recognizer=True)
        for name, int8 in (("onnx", False), ("onnx_int8", True)):
            if not (ckpt.parent / name / "encoder.onnx").is_file():
                export_streaming_onnx(model, family, tok, ckpt.parent / name, int8=int8)
        backends = {"torch": (Recognizer(model, tok, args.chunk_ms, family=family), True),
                    "onnx float32": (OnnxRecognizer(ckpt.parent / "onnx", args.chunk_ms), False),
                    "onnx int8": (OnnxRecognizer(ckpt.parent / "onnx_int8", args.chunk_ms), False)}
        torch_texts = None
        for backend, (rec, tensor) in backends.items():
            texts, secs = [], 0.0
            for w in wavs:
                text, s = stream(rec, w, chunk, tensor)
                texts.append(text)
                secs += s
            torch_texts = texts if torch_texts is None else torch_texts
            same = sum(a == b for a, b in zip(texts, torch_texts))
            hyps = [normalize_text(t) for t in texts]
            wer, cer = jiwer.wer(refs, hyps), jiwer.cer(refs, hyps)
            label = f"{ckpt.parent.name}/{ckpt.name}"
            print(f"{label:<24} {backend:<14} {secs / audio:>7.3f} {audio / secs:>11.0f} {100 * wer:>6.1f}% "
                  f"{100 * cer:>6.1f}% {same:>12}/{len(texts)}")


if __name__ == "__main__":
    main()
