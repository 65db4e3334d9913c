"""Custom keywords from text (`kws train-keyword`), the near misses it derives, and `kws evaluate --recordings`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kws.confusables import (
    _edit_distance,
    _is_vowel,
    confusables,
    phonemes,
    split_phonemes,
)
from kws.speech import labelled_recordings, transcript_keywords

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "speech-commands-real"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def _sounds(ph: str) -> list[str]:
    return [t for t in split_phonemes(ph) if t not in ("'", ",")]


@needs_espeak
def test_confusables_are_one_change_or_a_part_of_the_phrase():
    (ph,) = phonemes(["computer"])
    target = _sounds(ph)
    found = confusables("computer")
    assert found == confusables("computer")  # deterministic
    assert {c.how for c in found} >= {"part", "onset", "vowel"}
    for c in found:
        got = _sounds(c.phonemes)
        assert got != target
        if c.how == "part":  # a contiguous piece of the word, at least two sounds
            assert len(got) >= 2 and any(target[i:i + len(got)] == got for i in range(len(target) - len(got) + 1))
            # never the word without only its swallowable first syllable ("k@")
            assert got != target[2:]
        else:  # exactly one sound replaced, a consonant for "onset" and a vowel for "vowel"
            assert len(got) == len(target) and _edit_distance(got, target) == 1
            changed = next(i for i, (a, b) in enumerate(zip(got, target)) if a != b)
            assert _is_vowel(target[changed]) == (c.how == "vowel")
        assert c.text.startswith("[[") and c.espeak_only


@needs_espeak
def test_confusables_of_a_phrase_include_its_words_alone():
    found = confusables("hey computer")
    words = [c.text for c in found if not c.espeak_only]
    assert words[:2] == ["hey", "computer"]
    changed = [c for c in found if c.how in ("onset", "vowel")]
    assert changed and all(c.text.count("[[") == 2 for c in changed)  # the change inside the whole phrase


def test_init_warning_names_the_words_the_shipped_spotter_was_taught_to_reject():
    from kws.custom import init_warning

    assert "'computer'" in init_warning(["hey computer"], "default")
    assert "'alexa'" in init_warning(["Alexa"], "default")
    assert init_warning(["hey computer"], "exp/other.pt") is None  # another spotter to start from
    assert init_warning(["computers please"], "default") is None  # whole words only


def test_transcript_keywords_matches_phrases_as_word_sequences():
    item = {"text": "SAY HEY COMPUTER NOW, computers are fine"}
    assert transcript_keywords(item, ["hey computer", "computer", "yes"]) == {"hey computer", "computer"}
    assert transcript_keywords({"text": "hey there computer"}, ["hey computer"]) == set()
    assert transcript_keywords({"text": "computers"}, ["computer"]) == set()
    assert transcript_keywords({"id": "x"}, ["computer"]) == set()


def _recordings(tmp_path: Path) -> Path:
    """Folders yes/ and happy/ of real Speech Commands clips, each padded to 2.5 s with quiet noise."""
    rng = np.random.default_rng(0)
    root = tmp_path / "rec"
    for word in ("yes", "happy"):
        (root / word).mkdir(parents=True)
        for src in sorted((REAL / word).glob("*.wav"))[:6]:
            x, sr = sf.read(src, dtype="float32")
            pad = (0.003 * rng.standard_normal(int(0.75 * sr))).astype(np.float32)
            sf.write(root / word / src.name, np.concatenate([pad, x, pad]), sr)
    return root


@pytest.mark.skipif(not REAL.is_dir(), reason="needs ../shared/data/speech-commands-real")
def test_recordings_report_counts_what_streaming_detection_finds(tmp_path):
    from kws.detect import Detector, detect_file
    from kws.evaluate import recordings_report

    root = _recordings(tmp_path)
    items = labelled_recordings([root / "yes", root / "happy"])
    assert {it["label"] for it in items} == {"yes", "happy"} and len(items) == 12
    det = Detector.from_checkpoint()
    report = recordings_report(det, items, progress=False)
    # by hand: stream each file through the detector and look at its events
    by_hand = {"yes": 0, "happy": 0}
    for it in items:
        fired = {ev.keyword for ev in detect_file(det, it["audio"])}
        by_hand[it["label"]] += ("yes" in fired) if it["label"] == "yes" else bool(fired)
    assert report.hits == by_hand
    assert report.counts == {"yes": 6, "happy": 6}
    assert report.hits["yes"] >= 3  # real "yes" clips: the shipped model finds most of them
    low, high = report.curve[0.3], report.curve[0.995]
    assert low["yes"] >= high["yes"] and low["happy"] >= high["happy"]  # fewer hits as the threshold rises

    out = tmp_path / "ev.json"
    r = subprocess.run([sys.executable, "-m", "kws", "evaluate", "--recordings", str(root / "yes"), str(root / "happy"),
                        "--json", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"yes                  6 recordings  detected: {by_hand['yes']}" in r.stdout, r.stdout
    assert json.loads(out.read_text())["recordings"]["hits"] == by_hand


@needs_espeak
@pytest.mark.slow
def test_train_keyword_learns_a_phrase_from_text(tmp_path):
    """A tiny `kws train-keyword "hey computer"` run: talkers it never heard say the phrase and its
    second word alone; the model detects the phrase and not the word."""
    from asr.data.tts import list_speakers, synthesize
    from kws.detect import Detector

    out = tmp_path / "hc.pt"
    r = subprocess.run([sys.executable, "-m", "kws", "train-keyword", "hey computer", "--out", str(out),
                        "--positives", "200", "--confusable-clips", "10", "--words", "150", "--sentences", "20",
                        "--silence", "40", "--epochs", "8", "--mine-epochs", "1", "--lr", "3e-3", "--quiet"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["labels"] == ["_silence_", "_unknown_", "hey computer"]
    assert "computer" in report["confusables"]["hey computer"]
    det = Detector.from_checkpoint(out)
    assert det.keywords == ["hey computer"] and det.cfg.threshold == report["threshold"]

    def detections(text: str) -> tuple[int, float, list[float]]:
        hits, peaks = 0, []
        for spk in [s for s in list_speakers(0) if s.split == "test"][:8]:  # talkers training never used
            w = synthesize(text, spk, np.random.default_rng(1))
            w = 0.5 * w / np.abs(w).max()
            x = np.concatenate([np.zeros(16000, np.float32), w.astype(np.float32), np.zeros(16000, np.float32)])
            det.reset()
            peaks.append(float(det.scores(x, final=True)[1].max()))
            det.reset()
            hits += bool(det.process(x) + det.flush())
        return hits, float(np.mean(peaks)), peaks

    phrase, phrase_peak, peaks = detections("hey computer")
    word, word_peak, _ = detections("computer")
    best = int(np.argmax(peaks))
    assert phrase >= 3, (phrase, phrase_peak)  # 4 of 8 here, at the calibrated 0.56
    assert word <= 1, (word, word_peak)  # 0 of 8 here
    assert phrase_peak > word_peak + 0.15, (phrase_peak, word_peak)  # 0.66 against 0.35 here

    # the usual command with the custom model: one talker's phrase in a file
    spk = [s for s in list_speakers(0) if s.split == "test"][best]
    w = synthesize("hey computer", spk, np.random.default_rng(1))
    wav = tmp_path / "said.wav"
    sf.write(wav, np.concatenate([np.zeros(16000), 0.5 * w / np.abs(w).max(), np.zeros(16000)]), 16000)
    r = subprocess.run([sys.executable, "-m", "kws", "detect", "--model", str(out), "--format", "json", str(wav)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["keyword"] for e in events] == ["hey computer"] and 0.8 < events[0]["start"] < 2.3, events


@needs_espeak
def test_mining_rounds_mine_with_the_newest_model_and_keep_earlier_windows(tmp_path):
    """--mine-rounds 2 on a tiny, barely trained model (the mechanics, not the learning): each round mines
    with the model before it, trains only when it found new windows, and its set holds the earlier ones."""
    out = tmp_path / "hc.pt"
    r = subprocess.run([sys.executable, "-m", "kws", "train-keyword", "hey computer", "--out", str(out),
                        "--positives", "40", "--confusable-clips", "2", "--words", "40", "--sentences", "20",
                        "--silence", "20", "--epochs", "1", "--mine-epochs", "1", "--mine-rounds", "2",
                        "--mine-threshold", "0.05", "--target-fa-h", "100000", "--quiet"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    work = out.with_suffix(".work")
    assert len(report["mined_windows"]) == len(report["mined_new"]) <= 2 and report["mined_new"][0] > 0, report
    for k, n_new in enumerate(report["mined_new"]):
        assert (work / f"round{k + 2}" / "done").is_file() == (n_new > 0)
        ids = [json.loads(line)["id"] for line in (work / f"mined{k + 1}.jsonl").open()]
        assert len(ids) == 4 * sum(report["mined_new"][: k + 1]) == 4 * len({i.rsplit("#", 1)[0] for i in ids})
        if k:
            assert set(ids) >= {json.loads(line)["id"] for line in (work / f"mined{k}.jsonl").open()}
    assert not (work / f"round{len(report['mined_new']) + 2}").exists()


def test_work_dir_is_resumed_with_the_same_settings_and_emptied_with_others(tmp_path):
    from asr.errors import UsageError
    from kws.custom import KeywordRecipe, _prepare_work_dir

    work = tmp_path / "w"
    recipe = KeywordRecipe(phrases=["computer"], out=str(tmp_path / "m.pt"))
    _prepare_work_dir(work, recipe)
    (work / "audio.wav").write_bytes(b"x")
    recipe.threads = 7  # not a setting the work depends on
    _prepare_work_dir(work, recipe)
    assert (work / "audio.wav").exists()
    recipe.seed = 1
    _prepare_work_dir(work, recipe)
    assert not (work / "audio.wav").exists() and (work / "settings.json").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not written by kws train-keyword"):
        _prepare_work_dir(tmp_path / "mine", recipe)
    assert (tmp_path / "mine" / "notes.txt").exists()


def test_negative_mine_rounds_is_a_usage_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kws", "train-keyword", "computer", "--out", str(tmp_path / "m.pt"),
                        "--mine-rounds", "-1", "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "(--mine-rounds) must be >= 0, got -1" in r.stderr, r.stderr[-2000:]
    assert not list(tmp_path.iterdir())  # nothing written


def test_voices_choose_who_says_the_phrase_and_only_that(tmp_path):
    from asr.errors import UsageError
    from kws.custom import KeywordRecipe, _check_voices, _synthesis_jobs

    recipe = KeywordRecipe(phrases=["computer"], out=str(tmp_path / "m.pt"), voices=["en-us", "slt"], words=50,
                           sentences=20, silence=10)
    jobs, items, _, _ = _synthesis_jobs(recipe, ["computer"], tmp_path, 16000)
    positive = [j for j in jobs if j.path.parts[-3] == "positive"]
    assert len(positive) == 800 + 80 and {j.speaker.voice for j in positive} == {"en-us", "slt"}
    negative_voices = {j.speaker.voice for j in jobs if j.speaker is not None and j.path.parts[-3] != "positive"}
    assert {"en-gb", "kal"} <= negative_voices  # other speech keeps every voice
    everyone = _synthesis_jobs(KeywordRecipe(phrases=["computer"], out="m.pt", words=50, sentences=20, silence=10),
                               ["computer"], tmp_path, 16000)[0]
    assert len({j.speaker.voice for j in everyone if j.path.parts[-3] == "positive"}) > 6
    with pytest.raises(UsageError, match="unknown voice.*en-au"):
        _check_voices(["en-us", "en-au"], 0)
