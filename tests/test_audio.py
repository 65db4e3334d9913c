"""Audio I/O: formats, mono mixing, resampling, streaming blocks, and every bad-input error."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import AudioError, audio_info, iter_audio_blocks, read_audio, resample, write_audio
from asr.data.manifest import ManifestError, read_manifest, write_manifest


def tone(freq=440.0, seconds=1.0, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("suffix,fmt,subtype,tol", [
    (".wav", "WAV", "PCM_16", 1e-4), (".flac", "FLAC", "PCM_24", 1e-6),
    (".ogg", "OGG", "VORBIS", 0.05), (".mp3", "MP3", "MPEG_LAYER_III", 0.1),
])
def test_formats_roundtrip(tmp_path, suffix, fmt, subtype, tol):
    y = tone()
    p = tmp_path / f"x{suffix}"
    sf.write(p, y, 16000, format=fmt, subtype=subtype)
    wav, sr = read_audio(p)
    assert sr == 16000 and wav.dtype == torch.float32 and wav.dim() == 1
    n = min(len(wav), len(y))
    if fmt in ("WAV", "FLAC"):
        assert len(wav) == len(y) and np.abs(wav.numpy() - y).max() < tol
    else:  # lossy codecs: compare the spectrum peak and level
        spec = np.abs(np.fft.rfft(wav.numpy()[:n]))
        assert abs(np.argmax(spec) * 16000 / (2 * (len(spec) - 1)) - 440) < 3
        assert abs(np.sqrt(np.mean(wav.numpy() ** 2)) - 0.5 / np.sqrt(2)) < tol


def test_stereo_is_mixed_to_mono(tmp_path):
    left, right = tone(440), tone(880)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    wav, _ = read_audio(tmp_path / "s.wav")
    np.testing.assert_allclose(wav.numpy(), (left + right) / 2, atol=1e-6)


def test_resample_keeps_frequency_and_length(tmp_path):
    sf.write(tmp_path / "a.wav", tone(1000, 1.0, 44100), 44100, subtype="FLOAT")
    wav, sr = read_audio(tmp_path / "a.wav", sample_rate=16000)
    assert sr == 16000 and abs(len(wav) - 16000) <= 1
    spec = np.abs(np.fft.rfft(wav.numpy()))
    assert abs(np.argmax(spec) * 16000 / len(wav) - 1000) < 2
    batch = resample(torch.from_numpy(np.stack([tone(), tone()])), 16000, 8000)
    assert batch.shape == (2, 8000)


def test_offset_and_duration(tmp_path):
    y = np.arange(16000, dtype=np.float32) / 16000
    sf.write(tmp_path / "r.wav", y, 16000, subtype="FLOAT")
    wav, _ = read_audio(tmp_path / "r.wav", offset=0.25, duration=0.5)
    np.testing.assert_array_equal(wav.numpy(), y[4000:12000])


def test_blocks_equal_whole_file(tmp_path):
    y = tone(300, 3.3, 22050)
    sf.write(tmp_path / "b.wav", y, 22050, subtype="FLOAT")
    blocks = list(iter_audio_blocks(tmp_path / "b.wav", 22050, block_seconds=0.5))
    assert len(blocks) == 7
    np.testing.assert_array_equal(torch.cat(blocks).numpy(), y)
    resampled = torch.cat(list(iter_audio_blocks(tmp_path / "b.wav", 16000, block_seconds=0.37)))
    whole, _ = read_audio(tmp_path / "b.wav", 16000)
    assert abs(len(resampled) - len(whole)) <= 2
    n = min(len(whole), len(resampled)) - 200
    assert np.abs(resampled[200:n].numpy() - whole[200:n].numpy()).max() < 2e-3


def test_write_is_atomic_and_checks_suffix(tmp_path):
    write_audio(tmp_path / "ok.flac", tone(), 16000)
    assert [p.name for p in tmp_path.iterdir()] == ["ok.flac"]  # no temporary left
    with pytest.raises(AudioError, match="cannot write format"):
        write_audio(tmp_path / "x.aiff2", tone(), 16000)


# ---- bad input: one AudioError, naming the file and the reason ----

def expect_error(path, reason, **kw):
    with pytest.raises(AudioError) as e:
        read_audio(path, **kw)
    assert str(path) in str(e.value) and reason in str(e.value)


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.wav", "file not found")


def test_empty_file(tmp_path):
    (tmp_path / "e.wav").write_bytes(b"")
    expect_error(tmp_path / "e.wav", "empty")


def test_directory(tmp_path):
    expect_error(tmp_path, "is a directory")


def test_undecodable_file(tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"this is not audio at all" * 20)
    expect_error(tmp_path / "junk.wav", "cannot decode")


def test_truncated_wav(tmp_path):
    write_audio(tmp_path / "t.wav", tone(), 16000)
    data = (tmp_path / "t.wav").read_bytes()
    (tmp_path / "t.wav").write_bytes(data[: len(data) // 3])
    expect_error(tmp_path / "t.wav", "truncated")


def test_truncated_flac(tmp_path):
    write_audio(tmp_path / "t.flac", np.random.default_rng(0).uniform(-0.5, 0.5, 32000).astype("float32"), 16000)
    data = (tmp_path / "t.flac").read_bytes()
    (tmp_path / "t.flac").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError) as e:
        read_audio(tmp_path / "t.flac")
    assert "t.flac" in str(e.value)


def test_header_only_wav(tmp_path):
    sf.write(tmp_path / "z.wav", np.zeros(0, np.float32), 16000)
    expect_error(tmp_path / "z.wav", "no audio samples")


def test_nan_samples(tmp_path):
    y = tone()
    y[100] = np.nan
    sf.write(tmp_path / "n.wav", y, 16000, subtype="FLOAT")
    expect_error(tmp_path / "n.wav", "NaN")
    with pytest.raises(AudioError, match="NaN"):
        list(iter_audio_blocks(tmp_path / "n.wav"))


def test_wrong_sample_rate_when_resampling_is_off(tmp_path):
    sf.write(tmp_path / "8k.wav", tone(sr=8000), 8000)
    expect_error(tmp_path / "8k.wav", "sample rate is 8000 Hz, expected 16000 Hz", sample_rate=16000, allow_resample=False)
    assert audio_info(tmp_path / "8k.wav").sample_rate == 8000


# ---- manifests ----

def test_manifest_roundtrip_relative_paths(tmp_path):
    (tmp_path / "audio").mkdir()
    items = [{"id": f"u{i}", "audio": str(tmp_path / "audio" / f"{i}.wav"), "duration": 1.5, "text": "HI"} for i in range(3)]
    write_manifest(tmp_path / "m.jsonl", items)
    lines = [json.loads(l) for l in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert lines[0]["audio"] == "audio/0.wav"
    assert read_manifest(tmp_path / "m.jsonl") == items


@pytest.mark.parametrize("line,reason", [
    ('{"id": "a", "audio": "a.wav"', "not valid JSON"),
    ('["a", "a.wav"]', "expected a JSON object"),
    ('{"audio": "a.wav"}', "missing required key 'id'"),
    ('{"id": "a", "audio": "a.wav", "duration": -1}', "'duration' must be a finite number"),
    ('{"id": "a", "audio": "a.wav", "duration": "long"}', "'duration' must be a finite number"),
    ('{"id": "a", "audio": "a.wav", "text": 5}', "'text' must be a string"),
    ('{"id": "x", "audio": "x.wav"}', "duplicate id 'x'"),
])
def test_malformed_manifest_line_names_file_and_line(tmp_path, line, reason):
    m = tmp_path / "bad.jsonl"
    m.write_text('{"id": "x", "audio": "x.wav", "text": "OK"}\n\n' + line + "\n")
    with pytest.raises(ManifestError) as e:
        read_manifest(m)
    assert f"{m}:3: " in str(e.value) and reason in str(e.value)


def test_manifest_skip_bad_warns_with_count(tmp_path, caplog):
    m = tmp_path / "bad.jsonl"
    m.write_text('{"id": "x", "audio": "x.wav"}\nnot json\n{"id": "y"}\n{"id": "z", "audio": "z.wav"}\n')
    items = read_manifest(m, skip_bad=True)
    assert [i["id"] for i in items] == ["x", "z"]
    assert "skipped 2 malformed line(s)" in caplog.text and "line 2" in caplog.text


def test_manifest_needs_text(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"id": "x", "audio": "x.wav"}\n')
    with pytest.raises(ManifestError, match="missing 'text'"):
        read_manifest(m, needs_text=True)
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "none.jsonl")


def test_manifest_paths_near_the_manifest_are_relative(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "manifests" / "asr").mkdir(parents=True)
    far = tmp_path / "elsewhere" / "deep" / "deeper" / "x.wav"
    items = [{"id": "near", "audio": str(corpus / "librispeech" / "a.flac")}, {"id": "far", "audio": str(far)}]
    m = write_manifest(corpus / "manifests" / "asr" / "m.jsonl", items)
    stored = [json.loads(l)["audio"] for l in m.read_text().splitlines()]
    assert stored == ["../../librispeech/a.flac", str(far)]
    moved = tmp_path / "moved"
    corpus.rename(moved)
    assert read_manifest(moved / "manifests" / "asr" / "m.jsonl")[0]["audio"] == str(moved / "librispeech" / "a.flac")


def test_manifest_written_from_cwd_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus" / "wav").mkdir(parents=True)
    write_manifest("corpus/manifests/m.jsonl", [{"id": "a", "audio": "corpus/wav/a.wav"}])
    assert json.loads((tmp_path / "corpus/manifests/m.jsonl").read_text())["audio"] == "../wav/a.wav"
    assert read_manifest(tmp_path / "corpus/manifests/m.jsonl")[0]["audio"] == str(tmp_path / "corpus/wav/a.wav")
