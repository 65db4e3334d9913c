"""Streaming ASR on ONNX: the exported graphs, run chunk by chunk with their explicit state by
the torch-free recognizer, against the PyTorch streaming recognizer (same text, same head
outputs), for CTC and transducer models on forward-only RNN and causal Conformer encoders;
`asr export` and `asr transcribe --backend onnx` as a user runs them, without torch."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.decode.streaming import Recognizer
from asr.export import export_streaming_onnx
from asr.models import family_of
from asr.models.config import EncoderConfig, ModelConfig, TransducerConfig
from asr.models.ctc import CTCModel
from asr.models.transducer import TransducerModel
from asr.runtime.recognizer import OnnxRecognizer
from asr.text import CharTokenizer

pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[1]
TOK = CharTokenizer.english()
RNN = dict(dim=32, layers=2, bidirectional=False, lookahead=2, conv_channels=8)
CONFORMER = dict(kind="conformer", dim=32, layers=2, heads=2, conv_channels=8, causal=True, chunk_size=4, left_chunks=2,
                 conv_kernel=5)
MODELS = {
    "ctc-gru-lookahead": (CTCModel, ModelConfig(encoder=EncoderConfig(**RNN))),
    "ctc-causal-conformer": (CTCModel, ModelConfig(encoder=EncoderConfig(**CONFORMER))),
    "transducer-gru-lookahead": (TransducerModel, ModelConfig(family="transducer", encoder=EncoderConfig(**RNN),
                                                              transducer=TransducerConfig(pred_dim=16, joint_dim=16))),
    "transducer-lstm-stateless": (TransducerModel, ModelConfig(
        family="transducer", encoder=EncoderConfig(rnn_type="lstm", dim=32, layers=1, bidirectional=False, conv_channels=8),
        transducer=TransducerConfig(predictor="stateless", pred_dim=16, joint_dim=16))),
    "transducer-causal-conformer": (TransducerModel, ModelConfig(family="transducer", encoder=EncoderConfig(**CONFORMER),
                                                                 transducer=TransducerConfig(pred_dim=16, joint_dim=16))),
}


def model(name):
    cls, cfg = MODELS[name]
    torch.manual_seed(0)
    m = cls(cfg, TOK.vocab_size).eval()
    with torch.no_grad():  # larger random weights: the greedy path then emits many tokens
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        m.frontend.set_cmvn(torch.full((m.frontend.dim,), -6.0), torch.full((m.frontend.dim,), 3.0))
    return m


def speech(shared_data, seconds=4.0):
    flac = sorted((shared_data / "librispeech-mini").rglob("*.flac"))[0]
    return sf.read(str(flac), dtype="float32")[0][: int(seconds * 16000)]


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_streaming_equals_the_torch_streaming_recognizer(tmp_path, shared_data, one_thread, name):
    m = model(name)
    fam = family_of(m)
    export_streaming_onnx(m, fam, TOK, tmp_path / "exp")
    x = speech(shared_data)
    rec = Recognizer(m, TOK, chunk_ms=200)
    state = None
    for i in range(0, len(x), 3200):
        _, state = rec.infer(torch.from_numpy(x[i:i + 3200]), state)
    ref, _ = rec.infer(torch.zeros(0), state, final=True)
    onnx = OnnxRecognizer(tmp_path / "exp", chunk_ms=120)  # another chunk size: results do not depend on it
    onnx.head_log = []
    state, rng, pos = None, np.random.default_rng(0), 0
    while pos < len(x):
        n = int(rng.integers(100, 6000))
        _, state = onnx.infer(x[pos:pos + n], state)
        pos += n
    got, _ = onnx.infer(np.zeros(0, np.float32), state, final=True)
    assert got == ref and len(ref) >= 3
    # the head outputs equal the offline model's, frame for frame
    with torch.no_grad():
        enc, _ = m.encode(torch.from_numpy(x)[None], torch.tensor([len(x)]))
        head = m.head(enc) if fam.name == "ctc" else m.joiner.project_encoder(enc)
    outs = np.concatenate(onnx.head_log)
    assert outs.shape == tuple(head[0].shape)
    np.testing.assert_allclose(outs, head[0].numpy(), atol=1e-4, rtol=0)


def test_int8_export_gives_close_head_outputs(tmp_path, shared_data, one_thread):
    m = model("ctc-causal-conformer")  # (MatMuls throughout; ONNX Runtime does not quantize the GRU op)
    export_streaming_onnx(m, family_of(m), TOK, tmp_path / "f")
    export_streaming_onnx(m, family_of(m), TOK, tmp_path / "q", int8=True)
    x = speech(shared_data, 2.0)
    logs = []
    for d in ("f", "q"):
        r = OnnxRecognizer(tmp_path / d)
        r.head_log = []
        r.infer(x, None, final=True)
        logs.append(np.concatenate(r.head_log))
    diff = np.abs(logs[0] - logs[1]).max()
    assert 0 < diff < 0.5  # quantized, and the log-probabilities stay close
    size = lambda d: sum(p.stat().st_size for p in (tmp_path / d).glob("*.onnx"))  # noqa: E731
    assert size("q") < 0.6 * size("f")


NO_TORCH = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "torchaudio"):
            raise ImportError("torch is blocked in this test: " + name)
sys.meta_path.insert(0, Block())
from asr.cli import main
rc = main(sys.argv[1:])
assert "torch" not in sys.modules
sys.exit(rc)
"""


def test_asr_export_and_transcribe_without_torch(tmp_path, shared_data):
    m = model("transducer-gru-lookahead")
    ckpt = tmp_path / "m.pt"
    config = {"model": {"family": "transducer", "encoder": RNN, "transducer": {"pred_dim": 16, "joint_dim": 16}}}
    # the checkpoint layout of asr train (asr/checkpoint.py), without the training state
    torch.save({"format": 1, "family": "transducer", "config": config, "model": m.state_dict(),
                "tokenizer": TOK.state_dict()}, ckpt)
    out = subprocess.run([sys.executable, "-m", "asr", "export", str(ckpt), str(tmp_path / "exp")], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "same text as PyTorch on noise: True" in out.stdout
    wav = tmp_path / "a.wav"
    sf.write(wav, speech(shared_data, 3.0), 16000)
    ref = subprocess.run([sys.executable, "-m", "asr", "transcribe", "--model", str(ckpt), "--streaming", str(wav)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    got = subprocess.run([sys.executable, "-c", NO_TORCH, "transcribe", "--model", str(tmp_path / "exp"), str(wav)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0 and got.returncode == 0, (ref.stderr, got.stderr)
    assert got.stdout == ref.stdout and len(ref.stdout.split("\t")[1].strip()) >= 3
    bad = subprocess.run([sys.executable, "-m", "asr", "transcribe", "--model", str(tmp_path), str(wav)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "encoder.onnx" in bad.stderr and "Traceback" not in bad.stderr
