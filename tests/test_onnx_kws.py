"""The ONNX backend of the keyword spotter: the numpy front-end against asr.features (and
torchaudio's/librosa's mel filters), the exported graph run chunk by chunk against the PyTorch
detector, the shipped export against the shipped checkpoint, and `kws detect` without torch
giving the PyTorch backend's events on real recordings."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.features import FeatureConfig, FeatureExtractor
from asr.runtime.features import LogMel, mel_filterbank
from kws.detect import DEFAULT_MODEL, Detector, load_detector
from kws.onnx_detect import OnnxDetector
from kws.onnx_export import export_onnx

from test_kws import LABELS, crnn

pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[1]
KWS = [sys.executable, "-m", "kws"]

# `kws` with torch made unimportable: the ONNX path must not need it
NO_TORCH = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "torchaudio", "torchcodec"):
            raise ImportError("torch is blocked in this test: " + name)
sys.meta_path.insert(0, Block())
from kws.cli import main
rc = main(sys.argv[1:])
assert "torch" not in sys.modules
sys.exit(rc)
"""


def real_clip(shared_data, n=0) -> np.ndarray:
    root = shared_data / "speech-commands-real"
    rows = [l.split("\t") for l in (root / "labels.tsv").read_text().splitlines()[1:]]
    return sf.read(str(root / rows[n][0]), dtype="float32")[0]


@pytest.mark.parametrize("cfg", [dict(n_mels=40), dict(n_mels=80), dict(n_mels=40, mel_scale="htk", f_min=20.0, f_max=7600.0),
                                 dict(n_mels=64, power=1.0, n_fft=1024), dict(n_mels=40, win_ms=32.0, hop_ms=12.5)])
def test_numpy_logmel_equals_the_torch_front_end(shared_data, cfg):
    fc = FeatureConfig(**cfg)
    ref_fe, fe = FeatureExtractor(fc), LogMel(fc.to_dict())
    np.testing.assert_allclose(fe.mel_fb, ref_fe.mel_fb.numpy(), atol=1e-6)
    x = np.concatenate([real_clip(shared_data, i) for i in range(3)])
    ref = ref_fe(torch.from_numpy(x))[0][0].numpy()
    got = fe(x)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    # streaming in odd chunks gives the same frames, and the energies are log-sum-exp of the frames
    state, parts, energies = None, [], []
    for i in range(0, len(x), 3001):
        f, e, state = fe.infer(x[i:i + 3001], state, energy=True)
        parts.append(f)
        energies.append(e)
    np.testing.assert_allclose(np.concatenate(parts), got, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(energies), torch.logsumexp(torch.from_numpy(got), 1).numpy(), atol=1e-4)


def test_slaney_filters_equal_librosa():
    import librosa

    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=40, fmin=0.0, fmax=8000.0, htk=False, norm="slaney").T
    np.testing.assert_allclose(mel_filterbank(257, 0.0, 8000.0, 40, 16000), ref, atol=1e-6)


@pytest.mark.parametrize("sizes,hop", [({}, 0.08), (dict(rnn_type="lstm"), 0.08), (dict(rnn_layers=1), 0.16),
                                       (dict(rnn_layers=3, rnn_dim=32), 0.08)])
def test_exported_graph_run_chunk_by_chunk_equals_the_torch_detector(tmp_path, one_thread, sizes, hop):
    model = crnn(**sizes)
    det = Detector(model, LABELS, smooth=1, hop=hop, batch_windows=7, end_pad=0.3)
    export_onnx(det, tmp_path / "m.onnx")
    ort = OnnxDetector(tmp_path / "m.onnx", batch_windows=5)
    assert ort.labels == LABELS and ort.cfg.hop == hop and ort.hop == det.hop and ort.window_frames == det.window_frames
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(16000 * 8) * 0.05).astype(np.float32)
    x[30000:38000] += np.sin(np.arange(8000) * 0.3).astype(np.float32)
    ref = det.scores(x, final=True)[1]
    parts, pos = [], 0
    while pos < len(x):  # random chunk sizes, some shorter than a frame
        n = int(rng.integers(50, 9000))
        parts.append(ort.scores(x[pos:pos + n])[1])
        pos += n
    parts.append(ort.scores(np.zeros(0, np.float32), final=True)[1])
    got = np.concatenate(parts)
    assert got.shape == ref.shape and len(ref) > 40
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    assert float(np.abs(got - ref).max()) < 1e-5  # in practice float rounding only


def test_int8_export_is_smaller_and_close(tmp_path, one_thread):
    model = crnn()
    det = Detector(model, LABELS, smooth=1)
    export_onnx(det, tmp_path / "f.onnx")
    export_onnx(det, tmp_path / "q.onnx", int8=True)
    assert (tmp_path / "q.onnx").stat().st_size < 0.5 * (tmp_path / "f.onnx").stat().st_size
    x = (np.random.default_rng(2).standard_normal(16000 * 5) * 0.1).astype(np.float32)
    ref = det.scores(x, final=True)[1]
    got = OnnxDetector(tmp_path / "q.onnx", smooth=1).scores(x, final=True)[1]
    assert OnnxDetector(tmp_path / "q.onnx").int8
    diff = float(np.abs(got - ref).max())
    assert 0 < diff < 0.05  # quantized (not the float graph), and still close


def test_shipped_onnx_files_are_exports_of_the_shipped_checkpoint(tmp_path, one_thread):
    model, labels, cfg = load_detector()
    det = Detector(model, labels, config=cfg)
    export_onnx(det, tmp_path / "now.onnx")
    x = (np.random.default_rng(3).standard_normal(16000 * 6) * 0.05).astype(np.float32)
    x[20000:36000] += (0.3 * np.sin(np.arange(16000) * 0.2)).astype(np.float32)
    now = OnnxDetector(tmp_path / "now.onnx", smooth=1).scores(x, final=True)[1]
    for name, tol in (("crnn.onnx", 1e-6), ("crnn.int8.onnx", 0.15)):
        shipped = OnnxDetector(DEFAULT_MODEL.with_name(name), smooth=1)
        assert shipped.cfg == replace(cfg, smooth=1), name  # the checkpoint's operating point
        np.testing.assert_allclose(shipped.scores(x, final=True)[1], now, atol=tol, rtol=0, err_msg=name)


@pytest.fixture(scope="module")
def real_recordings(shared_data, tmp_path_factory):
    """A 2-minute stream of real keyword and other clips in noise, a real read-speech utterance
    (FLAC) and real spoken digits at 8 kHz joined into one file (resampled as a stream)."""
    from kws.stream import build_stream

    d = tmp_path_factory.mktemp("onnx_real")
    root = shared_data / "speech-commands-real"
    rows = [l.split("\t") for l in (root / "labels.tsv").read_text().splitlines()[1:]]
    items = [{"id": r[0], "audio": str(root / r[0]), "label": r[1]} for r in rows[::20][:70]]
    build_stream(items, d / "stream.wav", ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"],
                 [], None, (0.3, 1.0), (10.0, 20.0), seed=0)
    digits = sorted((shared_data / "fsdd" / "recordings").glob("*.flac"))[:40]
    sf.write(d / "digits_8k.wav", np.concatenate([sf.read(str(p), dtype="float32")[0] for p in digits]), 8000)
    flac = sorted((shared_data / "librispeech-mini").rglob("*.flac"))[0]
    return [d / "stream.wav", d / "digits_8k.wav", flac]


def events(args, script=None):
    cmd = [sys.executable, "-c", script, *args] if script else [*KWS, *args]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return [json.loads(l) for l in out.stdout.splitlines()]


def test_kws_detect_without_torch_gives_the_torch_backends_events(real_recordings):
    files = [str(p) for p in real_recordings]
    ref = events(["detect", "--backend", "torch", "--format", "jsonl", "--threshold", "0.5", *files])
    got = events(["detect", "--format", "jsonl", "--threshold", "0.5", *files], NO_TORCH)  # default backend, torch blocked
    assert len(ref) >= 10 and {e["keyword"] for e in ref} >= {"yes", "no"}
    assert [(e["file"], e["keyword"]) for e in got] == [(e["file"], e["keyword"]) for e in ref]
    for a, b in zip(got, ref):
        assert abs(a["start"] - b["start"]) <= 0.01 and abs(a["end"] - b["end"]) <= 0.01, (a, b)
        assert abs(a["score"] - b["score"]) <= 1e-3, (a, b)
    # int8: the same detections up to a few near the threshold, scores close
    q = events(["detect", "--int8", "--format", "jsonl", "--threshold", "0.5", *files], NO_TORCH)
    matched = [(a, b) for a in ref for b in q if a["file"] == b["file"] and a["keyword"] == b["keyword"]
               and abs(a["start"] - b["start"]) <= 0.1]
    assert len(matched) >= 0.9 * max(len(ref), len(q))
    assert max(abs(a["score"] - b["score"]) for a, b in matched) <= 0.1


def test_onnx_backend_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    for args, needle in ((["--model", str(bad)], str(bad)),
                         (["--backend", "onnx", "--model", str(tmp_path / "m.pt")], str(tmp_path / "m.onnx")),
                         (["--backend", "torch", "--model", str(bad)], str(bad))):
        out = subprocess.run([*KWS, "detect", *args, str(wav)], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = subprocess.run([*KWS, "detect", str(tmp_path / "missing.wav")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "missing.wav" in out.stderr and "Traceback" not in out.stderr


def test_kws_export_onnx_writes_and_checks_the_model(tmp_path):
    out = subprocess.run([*KWS, "export", str(DEFAULT_MODEL), str(tmp_path / "m.onnx"), "--threshold", "0.8"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    diff = float(out.stdout.split("posterior ")[1].split()[0])
    assert diff < 1e-4
    det = OnnxDetector(tmp_path / "m.onnx")
    assert det.cfg.threshold == 0.8 and det.cfg.isolation_db == load_detector()[2].isolation_db
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # nothing else left behind


def test_classify_clips_equals_the_model_on_one_second_windows(shared_data, one_thread):
    model, labels, cfg = load_detector()
    clips = [real_clip(shared_data, i) for i in range(0, 60, 6)] + [np.zeros(9000, np.float32)]
    got = OnnxDetector(DEFAULT_MODEL.with_suffix(".onnx")).classify_clips(clips, batch=4)
    wins = torch.zeros(len(clips), 16000)
    for i, c in enumerate(clips):
        wins[i, : min(16000, len(c))] = torch.from_numpy(c[:16000])
    with torch.no_grad():
        ref = torch.softmax(model(wins, torch.full((len(clips),), 16000)), -1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
