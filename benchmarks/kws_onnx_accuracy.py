"""What the ONNX export and its int8 quantization cost in accuracy, on held-out real speech.

For the PyTorch model, its float32 ONNX export and the int8 export (the files beside the
checkpoint, as `kws export` writes them):

* 12-class accuracy on held-out real keyword clips (data/kws/real/test.jsonl: speakers no
  training saw), each clip cut or zero-padded to the 1-s window; the PyTorch row is also given
  as `kws evaluate` computes it (clips at their own length);
* the detections on the real stream (data/kws/stream_real.wav, see recipes/synthetic/kws.sh):
  keyword recall within 0.5 s, and how many events equal the PyTorch backend's.

    python benchmarks/kws_onnx_accuracy.py [--model kws/pretrained/crnn.pt]
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from asr.audio import read_audio
from asr.data.manifest import read_manifest
from kws.detect import DEFAULT_MODEL, Detector, detect_file, load_detector
from kws.evaluate import classify_items, localization, read_truth
from kws.onnx_detect import OnnxDetector

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="crnn checkpoint with its .onnx/.int8.onnx exports")
    ap.add_argument("--manifest", type=Path, default=REPO / "data/kws/real/test.jsonl", help="held-out labelled clips")
    ap.add_argument("--stream", type=Path, default=REPO / "data/kws/stream_real.wav", help="a long recording with keyword truth")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, labels, cfg = load_detector(args.model)
    items = read_manifest(args.manifest)
    truth = np.array([labels.index(it["label"]) for it in items])
    clips = [read_audio(it["audio"], 16000, offset=it.get("offset", 0.0), duration=it.get("duration"))[0].numpy()
             for it in items]
    probs_eval, _ = classify_items(model, labels, items, progress=False)
    backends = {"torch": Detector(model, labels, config=cfg),
                "onnx float32": OnnxDetector(args.model.with_suffix(".onnx")),
                "onnx int8": OnnxDetector(args.model.with_suffix(".int8.onnx"))}
    refs = read_truth(args.stream.with_suffix(".truth.jsonl"))
    print(f"held-out real clips: {len(items)} ({args.manifest}); stream: {args.stream.name}, {len(refs)} keywords")
    print(f"{'backend':<14} {'clip accuracy (1-s window)':>27} {'max |p - torch|':>16} {'stream recall':>14} "
          f"{'events':>7} {'same as torch':>14}")
    torch_events, torch_probs = None, None
    for name, det in backends.items():
        if name == "torch":
            with torch.no_grad():
                wins = torch.zeros(len(clips), 16000)
                for i, c in enumerate(clips):
                    wins[i, : min(16000, len(c))] = torch.from_numpy(c[:16000])
                probs = torch.softmax(model(wins, torch.full((len(clips),), 16000)), -1).numpy()
        else:
            probs = det.classify_clips(clips)
        torch_probs = probs if torch_probs is None else torch_probs
        acc = float((probs.argmax(1) == truth).mean())
        events = list(detect_file(det, args.stream))
        loc = localization(events, refs, 0.5)
        key = [(e.keyword, round(e.start, 2)) for e in events]
        torch_events = key if torch_events is None else torch_events
        same = len(set(key) & set(torch_events))
        print(f"{name:<14} {100 * acc:>26.2f}% {np.abs(probs - torch_probs).max():>16.2g} "
              f"{100 * loc['recall']:>13.1f}% {len(events):>7} {same:>14}")
    acc_eval = float((probs_eval.argmax(-1).numpy() == truth).mean())
    print(f"(torch, clips at their own length as `kws evaluate` classifies them: {100 * acc_eval:.2f}%)")


if __name__ == "__main__":
    main()
