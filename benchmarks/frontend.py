"""Log-mel throughput: this toolkit's front-end vs librosa vs torchaudio's Kaldi fbank.

Same 10 minutes of audio (real LibriSpeech from ../shared/data when present, looped;
else a synthetic speech-like signal), one CPU thread, 80 mel bins, 25 ms / 10 ms.
Prints x-real-time (seconds of audio per second of compute) for each, best of
``--repeats`` runs, and the ratio of ours to each peer.

    python benchmarks/frontend.py [--minutes 10] [--repeats 3]
"""

import os

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchaudio  # noqa: E402

from asr.audio import read_audio  # noqa: E402
from asr.features import FeatureConfig, FeatureExtractor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def load_audio(minutes: float, sr: int = 16000) -> tuple[np.ndarray, str]:
    root = Path(os.environ.get("ASR_SHARED_DATA", REPO.parent / "shared" / "data")) / "librispeech-mini"
    files = sorted(root.rglob("*.flac"))
    if files:
        audio = np.concatenate([read_audio(f, sr)[0].numpy() for f in files])
        source = f"{len(files)} real LibriSpeech files, looped"
    else:
        rng = np.random.default_rng(0)
        audio = (0.1 * rng.standard_normal(sr * 60)).astype(np.float32)
        source = "synthetic noise (../shared/data not found)"
    n = int(minutes * 60 * sr)
    return np.resize(audio, n).astype(np.float32), source


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="audio length (default 10)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs; the best is kept (default 3)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sr = 16000
    audio, source = load_audio(args.minutes, sr)
    seconds = len(audio) / sr
    wav = torch.from_numpy(audio)
    cfg = FeatureConfig(n_mels=80)
    fe = FeatureExtractor(cfg).eval()
    batch = wav[: len(wav) // 60 * 60].reshape(60, -1)  # 60 utterances of 10 s, as in training

    def ours():
        with torch.no_grad():
            fe(wav)

    def ours_batched():
        with torch.no_grad():
            fe(batch)

    def librosa_mel():
        S = librosa.feature.melspectrogram(y=audio, sr=sr, n_fft=512, win_length=400, hop_length=160,
                                           center=False, n_mels=80, power=2.0)
        np.log(np.maximum(S, 1e-10))

    def kaldi_fbank():
        with torch.no_grad():
            torchaudio.compliance.kaldi.fbank(wav.unsqueeze(0) * 32768, num_mel_bins=80, frame_length=25,
                                              frame_shift=10, dither=0.0, sample_frequency=sr)

    rows = [
        ("asr.features (one 10-min signal)", ours),
        ("asr.features (60 x 10 s batch)", ours_batched),
        ("librosa.feature.melspectrogram + log", librosa_mel),
        ("torchaudio.compliance.kaldi.fbank", kaldi_fbank),
    ]
    results = [(name, seconds / best_time(fn, args.repeats)) for name, fn in rows]
    ours_xrt = results[0][1]
    print(f"Log-mel, 80 bins, {seconds / 60:.0f} min of audio ({source}), 1 thread, "
          f"torch {torch.__version__}, librosa {librosa.__version__}")
    print(f"| {'front-end':<40} | {'x real time':>11} | {'ours / this':>11} |")
    print(f"|{'-' * 42}|{'-' * 13}|{'-' * 13}|")
    for name, xrt in results:
        print(f"| {name:<40} | {xrt:>11.0f} | {ours_xrt / xrt:>11.2f} |")


if __name__ == "__main__":
    main()
