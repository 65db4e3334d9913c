"""Resumable, checksum-verified downloads and safe archive extraction (urllib only).

:func:`download` appends to ``<dest>.part`` with HTTP Range requests, so an
interrupted transfer continues where it stopped (and starts over when the server
ignores Range); the finished file is verified and then renamed onto ``dest``, so
``dest`` only ever exists complete. :func:`extract` unpacks ``.tar``/``.tar.gz``
archives and refuses members that would land outside the target folder.

Example (not run: needs the network):
    >>> ls_root = download_librispeech("dev-clean", "data")  # doctest: +SKIP
    >>> sc_root = download_speech_commands("data")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import posixpath
import re
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from asr.data.librispeech import SUBSETS as LIBRISPEECH_SUBSETS
from asr.errors import MissingFileError, ToolkitError, UsageError

log = logging.getLogger(__name__)

__all__ = [
    "DownloadError",
    "ChecksumError",
    "UnsafeArchiveError",
    "download",
    "extract",
    "file_digest",
    "download_librispeech",
    "download_speech_commands",
    "librispeech_missing",
    "speech_commands_missing",
    "LIBRISPEECH_URL",
    "SPEECH_COMMANDS_URL",
]

LIBRISPEECH_URL = "https://www.openslr.org/resources/12/{subset}.tar.gz"
SPEECH_COMMANDS_URL = "https://download.tensorflow.org/data/speech_commands_v0.0{version}.tar.gz"

# SHA-256 of the official archives, as pinned in torchaudio's dataset loaders
# (torchaudio/datasets/librispeech.py and speechcommands.py), which download and
# verify these exact files. OpenSLR itself publishes only MD5 sums on its page;
# those are not repeated here because they were not checked against a source.
LIBRISPEECH_SHA256: dict[str, str | None] = {
    "dev-clean": "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3",
    "dev-other": "12661c48e8c3fe1de2c1caa4c3e135193bfb1811584f11f569dd12645aa84365",
    "test-clean": "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23",
    "test-other": "d09c181bba5cf717b3dee7d4d592af11a3ee3a09e08ae025c5506f6ebe961c29",
    "train-clean-100": "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2",
    "train-clean-360": "146a56496217e96c14334a160df97fffedd6e0a04e66b9c5af0d40be3c792ecf",
    "train-other-500": "ddb22f27f96ec163645d53215559df6aa36515f26e01dd70798188350adcb6d2",
}
SPEECH_COMMANDS_SHA256: dict[int, str | None] = {
    1: "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d",
    2: "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
}

_USER_AGENT = "asr-kws-downloader/0.1 (python urllib)"
_CHUNK = 1 << 20
# HTTP statuses worth retrying; any other HTTP error fails at once.
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(ToolkitError, RuntimeError):
    """A download failed. The message names the URL and the file."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its expected checksum (the file is deleted)."""


class UnsafeArchiveError(ToolkitError, ValueError):
    """An archive member would be written outside the target folder."""


class _Incomplete(DownloadError):
    """The transfer stopped early; the ``.part`` file is kept for resuming."""


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
    """The checksums to verify, as ``{algorithm: lower-case hex}``."""
    return {algo: v.strip().lower() for algo, v in (("sha256", sha256), ("md5", md5)) if v}


def _mismatch(path: Path, expected: dict[str, str]) -> str | None:
    """A description of the first checksum that fails, or ``None`` when all match."""
    for algo, want in expected.items():
        got = file_digest(path, algo)
        if got != want:
            return f"{algo} mismatch: expected {want}, got {got}"
    return None


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """``(first_byte, total)`` from a ``Content-Range`` header (``None`` where absent or ``*``)."""
    m = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", header or "")
    if not m:
        return None, None
    first = int(m.group(1)) if m.group(1) else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return first, total


def _open(url: str, start: int, timeout: float):
    """Open ``url``, asking for the bytes from ``start`` on when ``start > 0``."""
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _fetch(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One attempt: write or append the remote bytes to ``part``.

    Raises :class:`_Incomplete` when fewer bytes than announced arrived.
    """
    start = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, start, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start > 0:  # nothing left past `start`: done, or the part is bad
            _, total = _content_range(e.headers.get("Content-Range"))
            if total == start:
                return
            part.unlink()
            raise _Incomplete(f"{part}: server refused to resume at byte {start}; restarting from zero") from None
        raise
    with resp:
        first, _ = _content_range(resp.headers.get("Content-Range"))
        resuming = start > 0 and resp.status == 206 and first == start
        if start > 0 and not resuming:
            log.info("%s: server ignored the Range request; downloading from the start", url)
        offset = start if resuming else 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=part.name[: -len(".part")], disable=None if progress else True)
        with bar, open(part, "ab" if resuming else "wb") as f:
            while chunk := resp.read(_CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Incomplete(f"{part}: transfer stopped at {size} of {total} bytes")


def _retryable(e: BaseException) -> bool:
    if isinstance(e, urllib.error.HTTPError):
        return e.code in _RETRY_STATUS
    return isinstance(e, (_Incomplete, urllib.error.URLError, http.client.HTTPException, OSError))


def download(
    url: str,
    dest: str | os.PathLike,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    *,
    timeout: float = 60.0,
    retries: int = 3,
) -> Path:
    """Download ``url`` to ``dest`` (a file, or an existing folder to put it in).

    Resumable: bytes go to ``<dest>.part``; a later call (or an automatic retry
    after a dropped connection) continues from its size with an HTTP Range
    request, or starts over when the server answers with the whole file.
    Verified: when ``sha256`` and/or ``md5`` are given the finished file must match,
    otherwise it is deleted and :class:`ChecksumError` is raised. Atomic: ``dest``
    appears only complete and verified, through a rename. An existing ``dest``
    is kept when it matches the checksums (or when none are given).

    Returns:
        the path of the downloaded file.
    """
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / (posixpath.basename(urlparse(url).path) or "download")
    expected = _expected(sha256, md5)
    if dest.is_file():
        reason = _mismatch(dest, expected)
        if reason is None:
            log.info("%s: already downloaded", dest)
            return dest
        log.warning("%s: existing file fails verification (%s); downloading again", dest, reason)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout, progress)
            break
        except Exception as e:  # noqa: BLE001 - sorted into retryable or not below
            if not _retryable(e) or attempt == retries:
                raise DownloadError(f"{dest}: downloading {url} failed: {e}") from e
            wait = min(2.0**attempt, 30.0)
            log.warning("%s: %s; retrying in %.0f s (%d/%d)", dest, e, wait, attempt + 1, retries)
            time.sleep(wait)
    reason = _mismatch(part, expected)
    if reason is not None:
        part.unlink()
        raise ChecksumError(f"{dest}: {reason} (downloaded from {url}); the file was deleted")
    os.replace(part, dest)
    return dest


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    """Why extracting ``member`` could write outside the target folder, or ``None``."""
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in parts:
        return "path contains '..'"
    if member.isdev():
        return "device or FIFO member"
    if member.issym() or member.islnk():
        target = member.linkname.replace("\\", "/")
        if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
            return f"link to absolute path {member.linkname!r}"
        base = posixpath.dirname(name) if member.issym() else ""
        if posixpath.normpath(posixpath.join(base, target)).split("/")[0] == "..":
            return f"link {member.linkname!r} points outside the archive"
    return None


def extract(archive: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Unpack a ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2`` or ``.tar.xz`` into ``out_dir``.

    The archive is read once, as a stream. Every member is checked before it is
    written: absolute paths, ``..`` components, links pointing outside and device
    files raise :class:`UnsafeArchiveError` naming the archive and the member.

    Returns:
        ``out_dir``.
    """
    archive, out_dir = Path(archive), Path(out_dir)
    if not archive.is_file():
        raise MissingFileError(f"{archive}: archive not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                reason = _unsafe_reason(member)
                if reason is not None:
                    raise UnsafeArchiveError(f"{archive}: refusing member {member.name!r}: {reason}")
                tar.extract(member, out_dir, **safe)
    except tarfile.ReadError as e:
        raise DownloadError(f"{archive}: not a readable tar archive ({e})") from None
    return out_dir


def _fetch_and_unpack(url: str, archive_dir: Path, out_dir: Path, sha256: str | None, keep_archive: bool) -> None:
    """Download ``url`` into ``archive_dir`` and unpack it into ``out_dir`` once.

    A marker file in ``out_dir`` records a finished extraction, so repeated calls
    neither download nor unpack again.
    """
    name = posixpath.basename(urlparse(url).path)
    marker = out_dir / f".{name}.extracted"
    if marker.is_file():
        log.info("%s: already extracted (%s)", out_dir, marker.name)
        return
    archive = download(url, archive_dir / name, sha256=sha256)
    extract(archive, out_dir)
    marker.write_text(url + "\n", encoding="utf-8")
    if not keep_archive:
        archive.unlink()


# Utterances per subset of the released corpus (the counts every LibriSpeech loader reports).
LIBRISPEECH_UTTERANCES: dict[str, int] = {
    "dev-clean": 2703, "dev-other": 2864, "test-clean": 2620, "test-other": 2939,
    "train-clean-100": 28539, "train-clean-360": 104014, "train-other-500": 148688,
}
# Word clips of the released Speech Commands archives (``<word>/*.wav``, background noise not counted).
SPEECH_COMMANDS_CLIPS: dict[int, int] = {1: 64727, 2: 105829}
SPEECH_COMMANDS_WORDS: dict[int, int] = {1: 30, 2: 35}


def librispeech_missing(folder: str | os.PathLike, expected: int | None = None) -> str | None:
    """Why the extracted LibriSpeech subset ``folder`` (``<speaker>/<chapter>/``) is not complete,
    or ``None`` when it is.

    Complete means: every chapter folder has its ``<speaker>-<chapter>.trans.txt``, every line of
    every transcript has its non-empty ``.flac``, every ``.flac`` is transcribed, and the number of
    utterances is ``expected`` (the released count of the subset, when known).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder}: not found"
    utterances = 0
    chapters = [c for c in sorted(folder.glob("*/*")) if c.is_dir()]
    if not chapters:
        return f"{folder}: no <speaker>/<chapter>/ folders"
    for chapter in chapters:
        trans = chapter / f"{chapter.parent.name}-{chapter.name}.trans.txt"
        if not trans.is_file():
            return f"{trans}: transcript missing"
        ids = [line.split(" ", 1)[0] for line in trans.read_text(encoding="utf-8", errors="replace").splitlines()
               if line.strip()]
        for uid in ids:
            flac = chapter / f"{uid}.flac"
            if not flac.is_file() or flac.stat().st_size == 0:
                return f"{flac}: audio missing or empty"
        if len(list(chapter.glob("*.flac"))) != len(ids):
            return f"{chapter}: {len(list(chapter.glob('*.flac')))} .flac files but {len(ids)} transcript lines"
        utterances += len(ids)
    if expected is not None and utterances != expected:
        return f"{folder}: {utterances} utterances, the released subset has {expected}"
    return None


def speech_commands_missing(folder: str | os.PathLike, version: int = 2) -> str | None:
    """Why the extracted Speech Commands ``folder`` is not complete, or ``None`` when it is.

    Complete means: ``validation_list.txt`` and ``testing_list.txt`` exist and every clip they name
    exists, the version's word folders are all there (35 for v0.02, 30 for v0.01), the
    ``_background_noise_`` folder holds its recordings, and the number of word clips is the
    released one (105,829 for v0.02, 64,727 for v0.01).
    """
    from asr.data.speech_commands import BACKGROUND_DIR, TESTING_LIST, VALIDATION_LIST

    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder}: not found"
    for name in (VALIDATION_LIST, TESTING_LIST):
        listing = folder / name
        if not listing.is_file():
            return f"{listing}: missing"
        for line in listing.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip() and not (folder / line.strip()).is_file():
                return f"{folder / line.strip()}: listed in {name} but missing"
    if len(list((folder / BACKGROUND_DIR).glob("*.wav"))) < 6:
        return f"{folder / BACKGROUND_DIR}: background-noise recordings missing"
    words = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("_") and not d.name.startswith(".")]
    if len(words) != SPEECH_COMMANDS_WORDS[version]:
        return f"{folder}: {len(words)} word folders, v0.0{version} has {SPEECH_COMMANDS_WORDS[version]}"
    clips = sum(1 for d in words for _ in d.glob("*.wav"))
    if clips != SPEECH_COMMANDS_CLIPS[version]:
        return f"{folder}: {clips} word clips, v0.0{version} has {SPEECH_COMMANDS_CLIPS[version]}"
    return None


def download_librispeech(subset: str, root: str | os.PathLike, keep_archive: bool = False,
                         mirror: str | None = None) -> Path:
    """Download and unpack one LibriSpeech subset from openslr.org into ``root``, unless it is
    already there, complete (:func:`librispeech_missing`), in ``root/LibriSpeech/<subset>`` or
    ``root/<subset>`` (``root`` being the LibriSpeech folder itself).

    ``mirror``: a base URL to fetch ``<subset>.tar.gz`` from instead of openslr.org.

    Returns:
        the folder holding ``<subset>/``, ready for :func:`asr.data.librispeech.prepare_librispeech`.
    """
    if subset not in LIBRISPEECH_SUBSETS:
        raise UsageError(f"unknown LibriSpeech subset {subset!r}; choose from {', '.join(LIBRISPEECH_SUBSETS)}")
    root = Path(root)
    expected = LIBRISPEECH_UTTERANCES.get(subset)
    for base in (root / "LibriSpeech", root):
        if (base / subset).is_dir() and not (root / f".{subset}.tar.gz.extracted").is_file():
            reason = librispeech_missing(base / subset, expected)
            if reason is None:
                log.info("%s: already there and complete (%d utterances); not downloading", base / subset, expected)
                return base
            log.warning("%s is incomplete (%s): downloading it again", base / subset, reason)
    url = LIBRISPEECH_URL.format(subset=subset) if not mirror else f"{mirror.rstrip('/')}/{subset}.tar.gz"
    _fetch_and_unpack(url, root, root, LIBRISPEECH_SHA256.get(subset), keep_archive)
    return root / "LibriSpeech"


def download_speech_commands(root: str | os.PathLike, version: int = 2, keep_archive: bool = False,
                             mirror: str | None = None) -> Path:
    """Download and unpack Speech Commands v0.01 or v0.02 into ``root/speech_commands_v0.0<version>``,
    unless that folder (or ``root`` itself) already holds the complete corpus
    (:func:`speech_commands_missing`).

    The archive has no top folder, so it is unpacked into that sub-folder. ``mirror``: a base URL
    to fetch ``speech_commands_v0.0<version>.tar.gz`` from instead of download.tensorflow.org.

    Returns:
        the corpus folder, ready for :func:`asr.data.speech_commands.prepare_speech_commands`.
    """
    if version not in (1, 2):
        raise UsageError(f"Speech Commands version must be 1 or 2, got {version!r}")
    root = Path(root)
    out_dir = root / f"speech_commands_v0.0{version}"
    for folder in (out_dir, root):
        if (folder / "testing_list.txt").is_file() and not any(folder.glob(".*.extracted")):
            reason = speech_commands_missing(folder, version)
            if reason is None:
                log.info("%s: already there and complete; not downloading", folder)
                return folder
            log.warning("%s is incomplete (%s): downloading it again", folder, reason)
    url = SPEECH_COMMANDS_URL.format(version=version)
    if mirror:
        url = f"{mirror.rstrip('/')}/{posixpath.basename(urlparse(url).path)}"
    _fetch_and_unpack(url, root, out_dir, SPEECH_COMMANDS_SHA256.get(version), keep_archive)
    return out_dir
