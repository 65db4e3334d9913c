"""`asr train`, `asr transcribe`, `asr evaluate` and `asr lm` run as a user runs them.

The models train for a few steps only: these tests check the commands, their flags, outputs
and errors; learning is tested in test_learning_real.py and the family tests.
"""

import subprocess
import sys

import numpy as np
import pytest

from asr.audio import write_audio
from asr.data.manifest import write_manifest

TEXTS = ["GO HOME", "RED CAT", "THE DOG", "YES NO"]
ENCODER = "{kind: conformer, subsampling: 4, conv_channels: 8, dim: 32, layers: 1, heads: 2, dropout: 0.0}"
CAUSAL = "{kind: conformer, subsampling: 4, conv_channels: 8, dim: 32, layers: 1, heads: 2, dropout: 0.0, causal: true, chunk_size: 2}"


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "asr", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    items = []
    for i, text in enumerate(TEXTS):
        wav = (0.05 * rng.standard_normal(16000 + 2000 * i)).astype(np.float32)
        write_audio(d / f"u{i}.wav", wav, 16000)
        items.append({"id": f"u{i}", "audio": str(d / f"u{i}.wav"), "duration": len(wav) / 16000, "text": text})
    write_manifest(d / "m.jsonl", items)
    return d


def train_tiny(corpus, family, tmp_path, encoder=ENCODER):
    cfg = tmp_path / f"{family}.yaml"
    cfg.write_text(f"model:\n  family: {family}\n  encoder: {encoder}\n"
                   "  transducer: {pred_dim: 16, joint_dim: 16}\n"
                   "  attention: {decoder: transformer, dim: 32, layers: 1, heads: 2}\n"
                   f"data: {{train: {corpus / 'm.jsonl'}, dev: {corpus / 'm.jsonl'}, batch_size: 2, num_workers: 0}}\n"
                   "tensorboard: false\nthreads: 1\n")
    out = run("train", "--config", cfg, f"out_dir={tmp_path / family}", "max_steps=2", "optim.warmup_steps=1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / family / "last.pt").is_file()
    return tmp_path / family / "last.pt"


@pytest.mark.parametrize("family,decoders", [
    ("ctc", ["greedy", "beam"]), ("transducer", ["greedy", "beam", "modified_beam"]), ("attention", ["greedy", "beam"]),
])
def test_train_transcribe_evaluate(corpus, tmp_path, family, decoders):
    ckpt = train_tiny(corpus, family, tmp_path)
    files = [corpus / "u0.wav", corpus / "u1.wav"]
    for decoder in decoders:
        out = run("transcribe", "--model", ckpt, *files, "--decoder", decoder, "--beam", "3")
        assert out.returncode == 0, out.stderr[-2000:]
        lines = out.stdout.splitlines()
        assert [l.split("\t")[0] for l in lines] == [str(f) for f in files]
    ali = tmp_path / "ali.txt"
    out = run("evaluate", "--model", ckpt, "--manifest", corpus / "m.jsonl", "--alignments", ali, "--decoder", "beam")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("WER ") and "CER " in out.stdout
    assert ali.read_text().count("REF: ") == 4


def test_transcribe_reports_unreadable_file_and_goes_on(corpus, tmp_path):
    ckpt = train_tiny(corpus, "ctc", tmp_path)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio" * 10)
    out = run("transcribe", "--model", ckpt, corpus / "u0.wav", bad, tmp_path / "missing.flac")
    assert out.returncode == 1
    assert out.stdout.splitlines()[0].startswith(str(corpus / "u0.wav"))
    assert f"{bad}: cannot decode" in out.stderr and "missing.flac: file not found" in out.stderr
    assert "Traceback" not in out.stderr


def test_lm_build_and_fusion(corpus, tmp_path):
    ckpt = train_tiny(corpus, "ctc", tmp_path)
    lm = tmp_path / "lm.arpa"
    out = run("lm", "--manifest", corpus / "m.jsonl", "--order", "2", "--out", lm)
    assert out.returncode == 0, out.stderr[-2000:]
    assert lm.read_text().startswith("\n\\data\\") or "\\data\\" in lm.read_text()[:50]
    out = run("transcribe", "--model", ckpt, corpus / "u0.wav", "--decoder", "beam", "--lm", lm, "--lm-weight", "0.8")
    assert out.returncode == 0, out.stderr[-2000:]


def test_streaming_transcription_equals_offline_greedy(corpus, tmp_path):
    ckpt = train_tiny(corpus, "ctc", tmp_path, encoder=CAUSAL)
    files = [corpus / f"u{i}.wav" for i in range(4)]
    offline = run("transcribe", "--model", ckpt, *files)
    streaming = run("transcribe", "--model", ckpt, *files, "--streaming", "--chunk-ms", "120")
    assert offline.returncode == 0 and streaming.returncode == 0, streaming.stderr[-2000:]
    assert streaming.stdout == offline.stdout


def test_bad_config_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  famly: ctc\n")
    out = run("train", "--config", cfg)
    assert out.returncode == 2 and str(cfg) in out.stderr and "famly" in out.stderr and "Traceback" not in out.stderr
