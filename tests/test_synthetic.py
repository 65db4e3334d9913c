"""The synthetic corpus: layout, formats, splits, manifests, determinism and resuming."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.data.manifest import read_manifest
from asr.data.sentences import MAX_WORDS, MIN_WORDS, generate_sentences, normalize_transcript

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng is not installed (apt-get install espeak-ng)")

WORDS = ["yes", "no", "marvin"]
TINY = dict(n_sentences=24, words=WORDS, n_noise_files=6, noise_seconds=2.0, n_speakers=12, jobs=2, progress=False)
CLIP = re.compile(r"^([0-9a-f]{8})_nohash_(\d+)\.wav$")


def _checksums(root: Path) -> dict[str, str]:
    """md5 of every audio file under ``root``, by relative path."""
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.suffix in (".wav", ".flac")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    from asr.data.synthetic import prepare_synthetic

    out = tmp_path_factory.mktemp("synth") / "a"
    return out, prepare_synthetic(out, **TINY)


def _clip_speakers(sc: Path, list_name: str | None = None) -> set[str]:
    if list_name is not None:
        return {Path(line).name.split("_")[0] for line in (sc / list_name).read_text().split()}
    return {p.name.split("_")[0] for w in WORDS for p in (sc / w).glob("*.wav")}


def test_speech_commands_layout(corpus):
    out, result = corpus
    sc = out / "speech_commands"
    assert result["speech_commands"] == sc
    assert sorted(p.name for p in sc.iterdir() if p.is_dir()) == sorted(WORDS + ["_background_noise_"])
    noise = sorted(p.stem for p in (sc / "_background_noise_").glob("*.wav"))
    assert noise == sorted(["white_noise", "pink_noise", "brown_noise", "hum", "babble", "fan"])
    for p in (sc / "_background_noise_").glob("*.wav"):
        info = sf.info(str(p))
        assert (info.samplerate, info.frames, info.channels) == (16000, 32000, 1)
    for name in ("validation_list.txt", "testing_list.txt"):
        lines = (sc / name).read_text().split()
        assert lines and all((sc / line).is_file() for line in lines)
    n_clips = sum(1 for w in WORDS for _ in (sc / w).glob("*.wav"))
    assert n_clips == result["counts"]["keyword_clips"] == len(WORDS) * sum(result["speakers"].values())


def test_every_clip_is_one_second_16k_pcm16(corpus):
    sc = corpus[0] / "speech_commands"
    clips = [p for w in WORDS for p in (sc / w).glob("*.wav")]
    assert clips
    for p in clips:
        assert CLIP.match(p.name), p.name
        info = sf.info(str(p))
        assert (info.samplerate, info.frames, info.channels, info.subtype) == (16000, 16000, 1, "PCM_16"), p
        wav, _ = sf.read(str(p))
        assert np.abs(wav).max() > 0.2  # speech, not silence
        assert np.abs(wav[:800]).max() < np.abs(wav[6000:10000]).max()  # centred


def test_librispeech_layout_and_transcripts(corpus):
    ls = corpus[0] / "librispeech"
    assert sorted(p.name for p in ls.iterdir()) == ["dev", "test", "train"]
    flacs = sorted(ls.rglob("*.flac"))
    assert len(flacs) == 24
    for trans in ls.rglob("*.trans.txt"):
        speaker, chapter = trans.parent.parent.name, trans.parent.name
        assert trans.name == f"{speaker}-{chapter}.trans.txt"
        lines = trans.read_text().splitlines()
        ids = [line.split(" ", 1)[0] for line in lines]
        assert ids == sorted(p.stem for p in trans.parent.glob("*.flac"))
        for line in lines:
            uid, text = line.split(" ", 1)
            assert re.fullmatch(rf"{speaker}-{chapter}-\d{{4}}", uid)
            assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", text) and MIN_WORDS <= len(text.split()) <= MAX_WORDS
    for p in flacs:
        info = sf.info(str(p))
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
        assert 0.5 < info.duration < 15


def test_manifests_are_readable(corpus):
    out, result = corpus
    man = out / "manifests"
    for name in ("kws", "kws35"):
        assert set(result["manifests"][name]) == {"train", "valid", "test"}
        for split in ("train", "valid", "test"):
            items = read_manifest(man / name / f"{split}.jsonl", needs_text=True)
            assert items and all(Path(it["audio"]).is_file() for it in items)
    labels = {it["label"] for it in read_manifest(man / "kws" / "train.jsonl")}
    assert {"yes", "no", "_unknown_", "_silence_"} <= labels
    total = 0
    for split in ("train", "dev", "test"):
        items = read_manifest(man / "asr" / f"{split}.jsonl", needs_text=True)
        assert items and all(it["text"] == it["text"].upper() for it in items)
        total += len(items)
    assert total == 24


def test_speaker_splits_are_disjoint(corpus):
    from asr.data.synthetic import list_speakers

    sc, ls = corpus[0] / "speech_commands", corpus[0] / "librispeech"
    dev, test = _clip_speakers(sc, "validation_list.txt"), _clip_speakers(sc, "testing_list.txt")
    train = _clip_speakers(sc) - dev - test
    assert len(dev) >= 2 and len(test) >= 2 and len(train) > len(dev) + len(test)
    assert not dev & test
    subsets = {s: {p.name for p in (ls / s).iterdir()} for s in ("train", "dev", "test")}
    assert not subsets["train"] & subsets["test"] and not subsets["train"] & subsets["dev"]
    speakers = list_speakers(0, n_espeak=160)
    by = {s: {(x.voice, x.variant) for x in speakers if x.split == s} for s in ("train", "dev", "test")}
    assert not by["train"] & by["test"] and not by["train"] & by["dev"]
    assert [s.split for s in speakers] == sorted((s.split for s in speakers), key=["train", "dev", "test"].index)
    assert len({s.id for s in speakers}) == len(speakers) and len({s.num for s in speakers}) == len(speakers)


def test_same_seed_gives_identical_audio_and_resumes(corpus, tmp_path):
    from asr.data.synthetic import prepare_synthetic

    first = _checksums(corpus[0])
    second_dir = tmp_path / "b"
    prepare_synthetic(second_dir, **TINY, manifests=False)
    assert _checksums(second_dir) == first
    # An interrupted run: a missing file, a truncated file, a stray temporary file.
    clip = next((second_dir / "speech_commands" / "yes").glob("*.wav"))
    clip.unlink()
    flac = next((second_dir / "librispeech").rglob("*.flac"))
    flac.write_bytes(flac.read_bytes()[:100])
    (second_dir / "speech_commands" / "no" / ".x.wav.123.tmp").write_bytes(b"junk")
    again = prepare_synthetic(second_dir, **TINY, manifests=False)
    assert again["generated"] == 2 and again["skipped"] == again["counts"]["keyword_clips"] + 6 + 24 - 2
    assert _checksums(second_dir) == first
    assert not list(second_dir.rglob("*.tmp"))


def test_other_settings_replace_old_files(corpus, tmp_path):
    from asr.data.synthetic import list_speakers, prepare_synthetic

    d = tmp_path / "c"
    shutil.copytree(corpus[0] / "speech_commands", d / "speech_commands")
    shutil.copytree(corpus[0] / "librispeech", d / "librispeech")
    settings = {**TINY, "seed": 1, "n_sentences": 12, "words": ["yes"], "n_noise_files": 2}
    result = prepare_synthetic(d, **settings, manifests=False)
    assert result["skipped"] == 0
    ids = {s.id for s in list_speakers(1, n_espeak=12)}
    assert sorted(p.name for p in (d / "speech_commands").iterdir() if p.is_dir()) == ["_background_noise_", "yes"]
    assert {p.name.split("_")[0] for p in (d / "speech_commands" / "yes").glob("*.wav")} == ids
    assert len(list((d / "librispeech").rglob("*.flac"))) == 12
    fresh = tmp_path / "fresh"
    prepare_synthetic(fresh, **settings, manifests=False)
    assert _checksums(fresh) == _checksums(d)


def test_noise_kinds():
    from asr.data.synthetic import NOISE_KINDS, list_speakers, make_noise

    talkers = list_speakers(0, n_espeak=6, use_flite=False)[:2]
    for kind in NOISE_KINDS:
        x = make_noise(kind, 1.5, np.random.default_rng(0), 16000, talkers)
        rms_db = 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        assert x.shape == (24000,) and np.isfinite(x).all() and np.abs(x).max() <= 0.99
        assert -29 < rms_db < -17, kind
    with pytest.raises(ValueError):
        make_noise("babble", 1.0, np.random.default_rng(0))


def test_sentences_deterministic_and_varied():
    a = generate_sentences(500, seed=3)
    assert a == generate_sentences(500, seed=3)
    assert a != generate_sentences(500, seed=4)
    assert len(set(a)) == 500
    norm = [normalize_transcript(s) for s in a]
    assert all(MIN_WORDS <= len(s.split()) <= MAX_WORDS for s in norm)
    assert not any(ch.isdigit() for s in a for ch in s)
    assert len({s.split()[0] for s in norm}) > 20  # many different openings
    assert sum(s.endswith("?") for s in a) > 40  # questions occur
    assert len({w for s in norm for w in s.split()}) > 300  # a broad vocabulary
    assert len({len(s.split()) for s in norm}) == MAX_WORDS - MIN_WORDS + 1
    assert normalize_transcript("It's a dog, isn't it?") == "IT'S A DOG ISN'T IT"
