"""Corpus preparation on the shared real recordings, plus download/extract helpers.

LibriSpeech and Speech Commands preparation run on the real layouts in the
shared data folder (skipped when absent); synthetic layouts in ``tmp_path`` cover
list files, background-noise silence and error paths; a local ``http.server``
stands in for the internet for the download helpers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import tarfile
import threading
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.data import download as dl
from asr.data.librispeech import prepare_librispeech
from asr.data.manifest import ManifestError, read_manifest
from asr.data.speech_commands import (
    ALL_WORDS_35,
    KEYWORDS_10,
    SILENCE,
    UNKNOWN,
    prepare_speech_commands,
    which_set,
)

LIBRI_COUNTS = {"test-clean": 11, "test-other": 20, "dev-clean": 7, "train-clean-100": 1}


# ---------------------------------------------------------------------------
# LibriSpeech


def _trans_lines(libri: Path) -> dict[str, str]:
    """Every ``UTTID TEXT`` line of the corpus, read independently of the code under test."""
    out = {}
    for trans in libri.rglob("*.trans.txt"):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if line.strip():
                utt, text = line.split(" ", 1)
                out[utt] = text
    return out


@pytest.fixture(scope="module")
def libri_manifests(shared_data, tmp_path_factory) -> dict[str, Path]:
    return prepare_librispeech(shared_data / "librispeech-mini", tmp_path_factory.mktemp("libri"))


def test_librispeech_real_counts_texts_durations(shared_data, libri_manifests):
    assert set(libri_manifests) == set(LIBRI_COUNTS)
    lines = _trans_lines(shared_data / "librispeech-mini" / "LibriSpeech")
    for subset, path in libri_manifests.items():
        assert path.name == f"{subset}.jsonl"
        items = read_manifest(path, needs_text=True)
        assert len(items) == LIBRI_COUNTS[subset]
        assert [it["id"] for it in items] == sorted(it["id"] for it in items)
        for it in items:
            audio = Path(it["audio"])
            assert audio.name == f"{it['id']}.flac" and audio.parts[-4] == subset
            assert it["text"] == lines[it["id"]]
            assert it["speaker"] == it["id"].split("-")[0] == audio.parts[-3]
            info = sf.info(str(audio))
            assert it["duration"] == pytest.approx(info.frames / info.samplerate, abs=1e-6)


def test_librispeech_root_is_corpus_folder_or_parent(shared_data, tmp_path, libri_manifests):
    out = prepare_librispeech(shared_data / "librispeech-mini" / "LibriSpeech", tmp_path, subsets=["dev-clean"])
    assert list(out) == ["dev-clean"]
    ids = [it["id"] for it in read_manifest(out["dev-clean"])]
    assert ids == [it["id"] for it in read_manifest(libri_manifests["dev-clean"])]
    with pytest.raises(FileNotFoundError, match="dev-other"):
        prepare_librispeech(shared_data / "librispeech-mini", tmp_path, subsets=["dev-other"])


def _fake_chapter(root: Path, lines: list[str], audio_ids: list[str], subset: str = "dev-clean") -> Path:
    chapter = root / "LibriSpeech" / subset / "19" / "198"
    chapter.mkdir(parents=True)
    for utt in audio_ids:
        sf.write(str(chapter / f"{utt}.flac"), np.zeros(1600, dtype="float32"), 16000)
    trans = chapter / "19-198.trans.txt"
    trans.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return trans


def test_librispeech_line_without_text_names_file_and_line(tmp_path):
    trans = _fake_chapter(tmp_path, ["19-198-0000 HELLO", "19-198-0001"], ["19-198-0000", "19-198-0001"])
    with pytest.raises(ManifestError, match=re.escape(f"{trans}:2")):
        prepare_librispeech(tmp_path, tmp_path / "out")


def test_librispeech_unmatched_audio_and_text_warn_and_skip(tmp_path, caplog):
    _fake_chapter(tmp_path, ["19-198-0000 HELLO", "19-198-0001 NO AUDIO", "19-198-0002 NOR THIS"],
                  ["19-198-0000", "19-198-0009"])
    with caplog.at_level(logging.WARNING):
        out = prepare_librispeech(tmp_path, tmp_path / "out")
    items = read_manifest(out["dev-clean"])
    assert [(it["id"], it["text"], it["duration"]) for it in items] == [("19-198-0000", "HELLO", 0.1)]
    assert "2 transcript line(s) have no audio" in caplog.text
    assert "1 audio file(s) have no transcript" in caplog.text


# ---------------------------------------------------------------------------
# Speech Commands on the real clips


def _hand_which_set(filename: str) -> str:
    """The dataset's rule, written out independently of the module under test."""
    name = filename.rsplit("/", 1)[-1]
    name = name.split("_nohash_")[0]
    value = int(hashlib.sha1(name.encode()).hexdigest(), 16)
    pct = (value % 2**27) * (100.0 / (2**27 - 1))
    return "valid" if pct < 10 else "test" if pct < 20 else "train"


def _labels_tsv(sc: Path) -> dict[str, dict]:
    with open(sc / "labels.tsv", encoding="utf-8", newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}


def _rel(item: dict, root: Path) -> str:
    return Path(item["audio"]).resolve().relative_to(root.resolve()).as_posix()


@pytest.fixture(scope="module")
def sc_real(shared_data, tmp_path_factory):
    root = shared_data / "speech-commands-real"
    out = prepare_speech_commands(root, tmp_path_factory.mktemp("sc12"), protocol=12)
    return root, {split: read_manifest(p, needs_text=True) for split, p in out.items()}


def test_speech_commands_real_12_classes(sc_real):
    root, splits = sc_real
    assert set(splits) == {"train", "valid", "test"}
    labels = _labels_tsv(root)
    seen = Counter(_rel(it, root) for items in splits.values() for it in items)
    assert set(seen) == set(labels) and set(seen.values()) == {1}  # every clip exactly once
    speakers = {}
    for split, items in splits.items():
        assert [it["id"] for it in items] == sorted(it["id"] for it in items)
        for it in items:
            row = labels[_rel(it, root)]
            assert it["label"] == row["label12"]
            assert it["speaker"] == row["speaker"]
            assert it["text"] == ("" if row["word"] == SILENCE else row["word"])
            assert it["duration"] == pytest.approx(1.0, abs=0.01) or it["duration"] < 1.0
            assert "offset" not in it
            assert split == which_set(it["audio"]) == _hand_which_set(_rel(it, root))
            assert speakers.setdefault(it["speaker"], split) == split  # speaker-disjoint splits
    assert {it["label"] for items in splits.values() for it in items} == set(KEYWORDS_10) | {UNKNOWN, SILENCE}


def test_which_set_matches_hand_computed_hashes(shared_data):
    files = sorted(_labels_tsv(shared_data / "speech-commands-real"))[::97]
    files += ["yes/0a7c2a8d_nohash_0.wav", "no/0a7c2a8d_nohash_3.wav", "left/ffd2ba2f_nohash_1.wav"]
    assert len(files) > 10
    for f in files:
        assert which_set(f) == _hand_which_set(f), f
    # the hash depends on the speaker only, never on the word or the clip number
    assert which_set("yes/0a7c2a8d_nohash_0.wav") == which_set("stop/0a7c2a8d_nohash_4.wav")
    assert which_set("x/abc_nohash_0.wav", 0.0, 0.0) == "train"
    assert which_set("x/abc_nohash_0.wav", 100.0, 0.0) == "valid"
    assert which_set("x/abc_nohash_0.wav", 0.0, 100.0) == "test"


def test_speech_commands_real_35_classes(shared_data, tmp_path):
    root = shared_data / "speech-commands-real"
    out = prepare_speech_commands(root, tmp_path, protocol=35)
    items = [it for p in out.values() for it in read_manifest(p)]
    labels = _labels_tsv(root)
    words = {r["word"] for r in labels.values()} - {SILENCE}
    assert len(items) == sum(r["word"] != SILENCE for r in labels.values())
    assert {it["label"] for it in items} == words and words <= set(ALL_WORDS_35)
    for it in items:
        assert it["label"] == it["text"] == labels[_rel(it, root)]["word"]


# ---------------------------------------------------------------------------
# Speech Commands, synthetic layout with list files and background noise


def _write_wav(path: Path, seconds: float, sr: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    sf.write(str(path), (0.01 * rng.standard_normal(int(seconds * sr))).astype("float32"), sr)


def _synthetic_sc(root: Path, noise_files: dict[str, float]) -> tuple[set[str], set[str], list[str]]:
    """Words yes/no/bed/cat for 10 speakers; speakers 0-1 valid, 2-3 test by the lists."""
    clips = [f"{w}/spk{s:02d}_nohash_{n}.wav" for w in ("yes", "no", "bed", "cat") for s in range(10) for n in range(2)]
    for c in clips:
        _write_wav(root / c, 0.25)
    valid = {c for c in clips if c.split("/")[1][:5] in ("spk00", "spk01")}
    test = {c for c in clips if c.split("/")[1][:5] in ("spk02", "spk03")}
    (root / "validation_list.txt").write_text("".join(f"{c}\n" for c in sorted(valid)))
    (root / "testing_list.txt").write_text("".join(f"{c}\n" for c in sorted(test)))
    for name, seconds in noise_files.items():
        _write_wav(root / "_background_noise_" / name, seconds)
    (root / "_ignored_" / "x.wav").parent.mkdir()
    _write_wav(root / "_ignored_" / "x.wav", 0.25)
    return valid, test, clips


def test_speech_commands_lists_and_noise_windows(tmp_path):
    root = tmp_path / "sc"
    valid, test, clips = _synthetic_sc(root, {"noise.wav": 30.0})
    out = prepare_speech_commands(root, tmp_path / "out", silence_fraction=0.5, seed=3)
    splits = {s: read_manifest(p) for s, p in out.items()}
    words = {s: [it for it in items if it["label"] != SILENCE] for s, items in splits.items()}
    assert {_rel(it, root) for it in words["valid"]} == valid
    assert {_rel(it, root) for it in words["test"]} == test
    assert {_rel(it, root) for it in words["train"]} == set(clips) - valid - test
    assert Counter(it["label"] for it in words["train"]) == {"yes": 12, "no": 12, UNKNOWN: 24}
    total = sf.info(str(root / "_background_noise_" / "noise.wav")).duration
    bounds = {"valid": (0.0, 0.1 * total), "test": (0.1 * total, 0.2 * total), "train": (0.2 * total, total)}
    for split, items in splits.items():
        silence = [it for it in items if it["label"] == SILENCE]
        assert len(silence) == round(0.5 * len(words[split])) > 0
        assert len({it["id"] for it in silence}) == len(silence)
        lo, hi = bounds[split]  # one noise file: cut by position, windows inside its split's stretch
        for it in silence:
            assert it["duration"] == pytest.approx(1.0) and it["text"] == ""
            assert lo - 1e-6 <= it["offset"] and it["offset"] + it["duration"] <= hi + 1e-6
            assert Path(it["audio"]).name == "noise.wav"
    again = prepare_speech_commands(root, tmp_path / "again", silence_fraction=0.5, seed=3)
    assert all(again[s].read_text() == out[s].read_text() for s in out)  # seeded: reproducible


def test_speech_commands_noise_files_split_and_unknown_cap(tmp_path):
    root = tmp_path / "sc"
    _synthetic_sc(root, {"a.wav": 4.0, "b.wav": 4.0, "c.wav": 4.0, "d.wav": 4.0})
    out = prepare_speech_commands(root, tmp_path / "out", silence_fraction=0.5, unknown_fraction=0.25)
    owner = defaultdict(set)
    for split, path in out.items():
        items = read_manifest(path)
        counts = Counter(it["label"] for it in items)
        assert counts[UNKNOWN] == round(0.25 * (counts["yes"] + counts["no"]))
        for it in items:
            if it["label"] == SILENCE:
                owner[Path(it["audio"]).name].add(split)
                assert it["offset"] + it["duration"] <= 4.0 + 1e-6
    assert all(len(s) == 1 for s in owner.values())  # each noise file serves one split only
    train_words = [it for it in read_manifest(out["train"]) if it["label"] != SILENCE]
    # train has two noise files (8 s) but needs 15 windows: windows overlap, all distinct
    assert sum(it["label"] == SILENCE for it in read_manifest(out["train"])) == round(0.5 * len(train_words))


# ---------------------------------------------------------------------------
# Downloads against a local HTTP server


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.file`` at any path; honours ``Range: bytes=N-`` unless told not to."""

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        data = self.server.file.read_bytes()
        rng = self.headers.get("Range")
        self.server.ranges.append(rng)
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and self.server.honor_range:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    payload = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    srv.file = tmp_path / "served.bin"
    srv.file.write_bytes(payload)
    srv.ranges, srv.honor_range = [], True
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/files/data.bin"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_full_with_checksums(server, tmp_path):
    data = server.file.read_bytes()
    (tmp_path / "dl").mkdir()  # an existing folder: the file keeps the URL's name
    dest = dl.download(server.url, tmp_path / "dl", sha256=_sha256(data), md5=hashlib.md5(data).hexdigest())
    assert dest == tmp_path / "dl" / "data.bin" and dest.read_bytes() == data
    assert not (tmp_path / "dl" / "data.bin.part").exists()
    assert server.ranges == [None]
    assert dl.download(server.url, dest, sha256=_sha256(data)) == dest  # present and valid: no request
    assert server.ranges == [None]


def test_download_resumes_from_part_file(server, tmp_path):
    data = server.file.read_bytes()
    dest = tmp_path / "out.bin"
    (tmp_path / "out.bin.part").write_bytes(data[:123_456])
    assert dl.download(server.url, dest, sha256=_sha256(data), progress=False).read_bytes() == data
    assert server.ranges == ["bytes=123456-"]
    # a part file that is already complete: the server answers 416 and the file is finished
    (tmp_path / "b.bin.part").write_bytes(data)
    assert dl.download(server.url, tmp_path / "b.bin", sha256=_sha256(data)).read_bytes() == data
    assert server.ranges[-1] == f"bytes={len(data)}-"


def test_download_restarts_when_server_ignores_range(server, tmp_path):
    data = server.file.read_bytes()
    server.honor_range = False
    (tmp_path / "out.bin.part").write_bytes(b"stale bytes from another file")
    out = dl.download(server.url, tmp_path / "out.bin", sha256=_sha256(data))
    assert out.read_bytes() == data and server.ranges == ["bytes=29-"]


def test_download_checksum_mismatch_deletes_file(server, tmp_path):
    dest = tmp_path / "out.bin"
    with pytest.raises(dl.ChecksumError, match=re.escape(str(dest))):
        dl.download(server.url, dest, sha256="0" * 64)
    assert not dest.exists() and not (tmp_path / "out.bin.part").exists()


def test_download_http_error_is_clear(server, tmp_path):
    server.file.unlink()  # handler fails -> connection closed without a response
    with pytest.raises(dl.DownloadError, match="out.bin"):
        dl.download(server.url, tmp_path / "out.bin", retries=0)


def _tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_safe_and_refuses_escaping_members(tmp_path):
    good = _tar_gz(tmp_path / "good.tar.gz", {"top/a.txt": b"a", "top/sub/b.txt": b"b"})
    out = dl.extract(good, tmp_path / "x")
    assert (out / "top" / "sub" / "b.txt").read_bytes() == b"b"
    for name in ("../evil.txt", "top/../../evil.txt", "/tmp/evil_abs.txt"):
        bad = _tar_gz(tmp_path / "bad.tar.gz", {"top/ok.txt": b"ok", name: b"evil"})
        with pytest.raises(dl.UnsafeArchiveError, match=re.escape(name)):
            dl.extract(bad, tmp_path / "y" / "z")
        assert not (tmp_path / "y" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    link = tmp_path / "link.tar.gz"
    with tarfile.open(link, "w:gz") as tar:
        info = tarfile.TarInfo("top/escape")
        info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        tar.addfile(info)
    with pytest.raises(dl.UnsafeArchiveError, match="points outside"):
        dl.extract(link, tmp_path / "w")


def test_download_speech_commands_helper_end_to_end(server, tmp_path, monkeypatch):
    archive = _tar_gz(tmp_path / "sc.tar.gz", {"yes/a_nohash_0.wav": b"RIFF", "testing_list.txt": b""})
    server.file.write_bytes(archive.read_bytes())
    base = server.url.rsplit("/", 1)[0]
    monkeypatch.setattr(dl, "SPEECH_COMMANDS_URL", base + "/speech_commands_v0.0{version}.tar.gz")
    monkeypatch.setitem(dl.SPEECH_COMMANDS_SHA256, 2, _sha256(archive.read_bytes()))
    out = dl.download_speech_commands(tmp_path / "data")
    assert out == tmp_path / "data" / "speech_commands_v0.02"
    assert (out / "yes" / "a_nohash_0.wav").read_bytes() == b"RIFF"
    assert not (tmp_path / "data" / "speech_commands_v0.02.tar.gz").exists()  # archive removed
    assert dl.download_speech_commands(tmp_path / "data") == out and len(server.ranges) == 1  # marker: no refetch
    with pytest.raises(ValueError, match="subset"):
        dl.download_librispeech("train-clean-999", tmp_path)
    assert dl.LIBRISPEECH_URL.format(subset="dev-clean") == "https://www.openslr.org/resources/12/dev-clean.tar.gz"
    assert set(dl.LIBRISPEECH_SHA256) == set(LIBRI_COUNTS) | {"dev-other", "train-clean-360", "train-other-500"}


def _fake_subset(base: Path, subset: str, utts: int = 3) -> Path:
    """A LibriSpeech-layout subset of ``utts`` tiny utterances in one chapter."""
    chapter = base / subset / "19" / "198"
    chapter.mkdir(parents=True)
    lines = []
    for i in range(utts):
        sf.write(chapter / f"19-198-{i:04d}.flac", np.zeros(1600, dtype=np.float32), 16000)
        lines.append(f"19-198-{i:04d} WORD NUMBER {i}")
    (chapter / "19-198.trans.txt").write_text("\n".join(lines) + "\n")
    return base / subset


def test_librispeech_completeness_check(tmp_path):
    folder = _fake_subset(tmp_path / "LibriSpeech", "dev-clean")
    assert dl.librispeech_missing(folder, expected=3) is None
    assert "3 utterances, the released subset has 2703" in dl.librispeech_missing(folder, expected=2703)
    (folder / "19" / "198" / "19-198-0001.flac").unlink()
    assert "19-198-0001.flac: audio missing" in dl.librispeech_missing(folder, expected=3)
    sf.write(folder / "19" / "198" / "19-198-0001.flac", np.zeros(16, dtype=np.float32), 16000)
    sf.write(folder / "19" / "198" / "19-198-0009.flac", np.zeros(16, dtype=np.float32), 16000)  # not transcribed
    assert "4 .flac files but 3 transcript lines" in dl.librispeech_missing(folder, expected=3)


@pytest.mark.parametrize("layout", ["LibriSpeech", "."])
def test_download_keeps_a_complete_extracted_subset(tmp_path, monkeypatch, layout):
    """A corpus already on (shared) storage is used as it is: no request is made."""
    _fake_subset(tmp_path / layout, "dev-clean")
    monkeypatch.setitem(dl.LIBRISPEECH_UTTERANCES, "dev-clean", 3)
    monkeypatch.setattr(dl, "download", lambda *a, **k: pytest.fail("a complete subset was downloaded again"))
    assert dl.download_librispeech("dev-clean", tmp_path) == tmp_path / layout  # the folder holding the subset
    monkeypatch.setitem(dl.LIBRISPEECH_UTTERANCES, "dev-clean", 4)  # now incomplete: it must fetch
    called = []
    monkeypatch.setattr(dl, "download", lambda url, *a, **k: called.append(url) or (_ for _ in ()).throw(
        dl.DownloadError(f"offline: {url}")))
    with pytest.raises(dl.DownloadError, match="dev-clean.tar.gz"):
        dl.download_librispeech("dev-clean", tmp_path, mirror="http://mirror.example/12")
    assert called == ["http://mirror.example/12/dev-clean.tar.gz"]


def test_speech_commands_completeness_check(tmp_path, monkeypatch):
    root = tmp_path / "sc"
    for word in ("yes", "no"):
        (root / word).mkdir(parents=True)
        for i in range(2):
            sf.write(root / word / f"s{i}_nohash_0.wav", np.zeros(160, dtype=np.float32), 16000)
    (root / "_background_noise_").mkdir()
    for i in range(6):
        sf.write(root / "_background_noise_" / f"n{i}.wav", np.zeros(160, dtype=np.float32), 16000)
    (root / "validation_list.txt").write_text("yes/s0_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("no/s1_nohash_0.wav\n")
    monkeypatch.setitem(dl.SPEECH_COMMANDS_WORDS, 2, 2)
    monkeypatch.setitem(dl.SPEECH_COMMANDS_CLIPS, 2, 4)
    assert dl.speech_commands_missing(root) is None
    monkeypatch.setattr(dl, "download", lambda *a, **k: pytest.fail("a complete corpus was downloaded again"))
    assert dl.download_speech_commands(root) == root
    (root / "no" / "s1_nohash_0.wav").unlink()
    assert "listed in testing_list.txt but missing" in dl.speech_commands_missing(root)
    monkeypatch.setitem(dl.SPEECH_COMMANDS_CLIPS, 2, 105829)
    (root / "testing_list.txt").write_text("")
    assert "3 word clips, v0.02 has 105829" in dl.speech_commands_missing(root)
