"""The commands as a user runs them: exit codes, outputs, errors that name the file."""

import json
import shutil
import subprocess
import sys

import pytest

from asr.data.manifest import read_manifest


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, **kw)


def test_help_lists_every_command():
    out = run("asr", "--help")
    assert out.returncode == 0
    for word in ("prepare", "download"):
        assert word in out.stdout
    sub = run("asr", "prepare", "speech-commands", "--help")
    assert "--protocol" in sub.stdout and "--unknown-fraction" in sub.stdout
    assert run("kws", "prepare", "--help").returncode == 0


def test_prepare_librispeech_real(shared_data, tmp_path):
    out = run("asr", "prepare", "librispeech", str(shared_data / "librispeech-mini"), "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert sorted(l.split("\t")[0] for l in out.stdout.splitlines()) == ["dev-clean", "test-clean", "test-other", "train-clean-100"]
    items = read_manifest(tmp_path / "test-other.jsonl", needs_text=True)
    assert len(items) == 20 and all(i["duration"] > 0.5 for i in items)


def test_kws_prepare_real(shared_data, tmp_path):
    out = run("kws", "prepare", str(shared_data / "speech-commands-real"), "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    n = sum(len(read_manifest(tmp_path / f"{s}.jsonl")) for s in ("train", "valid", "test"))
    assert n == 1642


def test_missing_corpus_is_a_clear_error(tmp_path):
    out = run("asr", "prepare", "librispeech", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m"))
    assert out.returncode == 2
    assert str(tmp_path / "nowhere") in out.stderr and "Traceback" not in out.stderr


def test_bad_transcript_line_names_file_and_line(tmp_path, shared_data):
    src = shared_data / "librispeech-mini" / "LibriSpeech" / "dev-clean" / "1272"
    dst = tmp_path / "LibriSpeech" / "dev-clean" / "1272"
    shutil.copytree(src, dst)
    trans = next(dst.rglob("*.trans.txt"))
    trans.write_text(trans.read_text() + "1272-141231-0099\n")
    out = run("asr", "prepare", "librispeech", str(tmp_path), "--out", str(tmp_path / "m"))
    assert out.returncode == 2 and f"{trans}:2" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make test installs it)")
def test_prepare_synthetic_small(tmp_path):
    out = run("asr", "prepare", "synthetic", "--out", str(tmp_path), "--sentences", "10", "--speakers", "6",
              "--no-flite", "--noise-files", "2", "--noise-seconds", "2", "--jobs", "2")
    assert out.returncode == 0, out.stderr
    asr_train = read_manifest(tmp_path / "manifests" / "asr" / "train.jsonl", needs_text=True)
    kws_train = read_manifest(tmp_path / "manifests" / "kws" / "train.jsonl", needs_text=True)
    assert asr_train and kws_train
    assert {i["label"] for i in kws_train} >= {"yes", "no", "_unknown_", "_silence_"}
    line = json.loads((tmp_path / "manifests" / "asr" / "train.jsonl").read_text().splitlines()[0])
    assert line["audio"].startswith("../../librispeech/train/")  # the corpus folder can be moved
