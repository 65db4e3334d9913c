"""Bad input, run as a user runs the commands (subprocess): every case ends with a clear message
that names the file (and line), exit status 2 (1 where the other files were still processed), no
traceback, and no output file left behind or half-written.

The commands take a while to start (importing torch is most of it), so every case runs once in a
module fixture and each test then checks one case's result. A few cases run as a fresh
``python -m asr|kws`` each; the others run in children forked from one interpreter that has
already imported the toolkit: each child is a real process that runs ``python -m``'s module with
the case's argv, its own stdout/stderr files and its own exit status (what differs from a fresh
interpreter is only the import time).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.checkpoint import save_checkpoint
from asr.config import from_dict, to_dict
from asr.models import get_family
from asr.text import CharTokenizer
from asr.train_config import TrainConfig

LABELS = ["_silence_", "_unknown_", "yes", "no"]
MARKER = "pwned.txt"


class _Evil:
    """A pickle that would run a command when loaded without weights_only."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (__import__("os").system, (f"touch {self.target}",))


def _tiny_checkpoint(path: Path, family: str, folder: Path) -> None:
    """A real, loadable checkpoint of an untrained tiny model (weights, config, tokenizer/labels)."""
    model_cfg = {"family": family, "features": {"n_mels": 40}}
    if family == "crnn":
        model_cfg["crnn"] = {"conv_channels": 4, "rnn_dim": 8, "rnn_layers": 1, "dense": 8}
        targets: dict = {"labels": LABELS, "tokenizer": None}
        n_out = len(LABELS)
    else:
        model_cfg["encoder"] = {"dim": 8, "layers": 1, "conv_channels": 4}
        tok = CharTokenizer.english()
        targets = {"labels": None, "tokenizer": tok.state_dict()}
        n_out = tok.vocab_size
    config = from_dict(TrainConfig, {"model": model_cfg, "data": {"labels": LABELS if family == "crnn" else []},
                                     "out_dir": str(folder)})
    model = get_family(family).build(config.model, n_out)
    save_checkpoint({"format": 1, "family": family, "config": to_dict(config), "model": model.state_dict(),
                     **targets}, path)


@dataclass
class Case:
    name: str
    args: list[str]
    names: list[str]  # what the message must name (a file, a file:line)
    status: int = 2
    outputs: list[str] = field(default_factory=list)  # files that must not exist afterwards
    stdout_has: str = ""  # for status 1: the good file's output is still there
    result: subprocess.CompletedProcess | None = None


def _write_wav(path: Path, x: np.ndarray, subtype: str = "PCM_16") -> Path:
    sf.write(path, x.astype(np.float32), 16000, subtype=subtype)
    return path


def _build_cases(d: Path) -> list[Case]:
    rng = np.random.default_rng(0)
    good = _write_wav(d / "good.wav", 0.1 * rng.standard_normal(16000))
    _tiny_checkpoint(d / "ctc.pt", "ctc", d / "exp")
    _tiny_checkpoint(d / "crnn.pt", "crnn", d / "exp")
    real = (d / "ctc.pt").read_bytes()
    (d / "empty.pt").write_bytes(b"")
    (d / "truncated.pt").write_bytes(real[: len(real) // 2])
    (d / "notes.pt").write_text("these are my notes, not a checkpoint\n")
    with open(d / "evil.pt", "wb") as f:
        pickle.dump({"format": 1, "family": "ctc", "model": _Evil(d / MARKER)}, f)
    torch.save({"weights": [1, 2, 3]}, d / "foreign.pt")  # a torch file, but not ours
    models = {"missing": d / "missing.pt", "empty": d / "empty.pt", "truncated": d / "truncated.pt",
              "text": d / "notes.pt", "foreign": d / "foreign.pt", "malicious": d / "evil.pt"}

    (d / "asr.jsonl").write_text(json.dumps({"id": "u1", "audio": str(good), "duration": 1.0, "text": "HELLO"}) + "\n")
    (d / "kws.jsonl").write_text(json.dumps({"id": "k1", "audio": str(good), "duration": 1.0, "label": "yes",
                                             "speaker": "s1"}) + "\n")
    (d / "asr.yaml").write_text(
        "model: {family: ctc, features: {n_mels: 40}, encoder: {dim: 8, layers: 1, conv_channels: 4}}\n"
        f"data: {{train: {d / 'asr.jsonl'}, batch_size: 2, num_workers: 0}}\n"
        f"epochs: 1\nthreads: 1\ntensorboard: false\nout_dir: {d / 'run_asr'}\n")
    (d / "kws.yaml").write_text(
        "model: {family: crnn, features: {n_mels: 40}, crnn: {conv_channels: 4, rnn_dim: 8, rnn_layers: 1, dense: 8}}\n"
        f"data: {{train: {d / 'kws.jsonl'}, labels: [_silence_, _unknown_, 'yes', 'no'], batch_size: 2, "
        "num_workers: 0}\n"
        f"epochs: 1\nthreads: 1\ntensorboard: false\nout_dir: {d / 'run_kws'}\n")

    def model_cmds(model: Path, tag: str, asr_ok: bool, kws_ok: bool) -> list[Case]:
        out = []
        if not asr_ok:
            out += [
                Case(f"asr transcribe {tag}", ["asr", "transcribe", "--model", str(model), str(good)], [str(model)]),
                Case(f"asr evaluate {tag}", ["asr", "evaluate", "--model", str(model), "--manifest",
                                              str(d / "asr.jsonl"), "--alignments", str(d / f"ali-{tag}.txt")],
                     [str(model)], outputs=[f"ali-{tag}.txt"]),
                Case(f"asr select {tag}", ["asr", "select", "--model", str(model), "--pool", str(d / "asr.jsonl"),
                                            "--budget", "1", "--strategy", "egl", "--out", str(d / f"sel-{tag}.jsonl")],
                     [str(model)], outputs=[f"sel-{tag}.jsonl", f"sel-{tag}.scores.tsv"]),
                Case(f"asr train {tag}", ["asr", "train", "--config", str(d / "asr.yaml"), f"init_from={model}",
                                           f"out_dir={d / ('run-asr-' + tag)}"], [str(model)],
                     outputs=[f"run-asr-{tag}/last.pt", f"run-asr-{tag}/best.pt"]),
            ]
        if not kws_ok:
            out += [
                Case(f"kws detect {tag}", ["kws", "detect", "--model", str(model), str(good)], [str(model)]),
                Case(f"kws evaluate {tag}", ["kws", "evaluate", "--model", str(model), "--manifest",
                                              str(d / "kws.jsonl"), "--json", str(d / f"eval-{tag}.json")],
                     [str(model)], outputs=[f"eval-{tag}.json"]),
                Case(f"kws train {tag}", ["kws", "train", "--config", str(d / "kws.yaml"), f"init_from={model}",
                                           f"out_dir={d / ('run-kws-' + tag)}"], [str(model)],
                     outputs=[f"run-kws-{tag}/last.pt", f"run-kws-{tag}/best.pt"]),
                Case(f"kws export {tag}", ["kws", "export", str(model), str(d / f"ship-{tag}.pt")], [str(model)],
                     outputs=[f"ship-{tag}.pt"]),
            ]
        return out

    cases: list[Case] = []
    for tag, model in models.items():
        cases += model_cmds(model, tag, asr_ok=False, kws_ok=False)
    cases += model_cmds(d / "crnn.pt", "wrong-family-crnn", asr_ok=False, kws_ok=True)  # a keyword spotter to asr
    cases += model_cmds(d / "ctc.pt", "wrong-family-ctc", asr_ok=True, kws_ok=False)  # a recognizer to kws
    for c in cases:
        if "wrong-family" in c.name:
            c.names.append("'crnn'" if "crnn" in c.name else "'ctc'")  # the family it holds

    # audio: each bad file beside a good one (the good one is still processed: status 1)
    nan = 0.1 * rng.standard_normal(16000)
    nan[96] = np.nan  # at 0.006 s
    audio = {
        "missing": d / "nothere.wav",
        "empty": d / "empty.wav",
        "corrupt": d / "corrupt.wav",
        "nan": _write_wav(d / "nan.wav", nan, "FLOAT"),
        "header-only": _write_wav(d / "header.wav", np.zeros(0)),
    }
    (d / "empty.wav").write_bytes(b"")
    (d / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(rng.integers(0, 256, 64, dtype=np.uint8)))
    for tag, path in audio.items():
        names = [str(path)] + (["0.006 s"] if tag == "nan" else [])
        cases.append(Case(f"asr transcribe audio-{tag}", ["asr", "transcribe", "--model", str(d / "ctc.pt"),
                                                         str(path), str(good)], names, 1, stdout_has=str(good)))
        cases.append(Case(f"kws detect audio-{tag}", ["kws", "detect", "--model", str(d / "crnn.pt"), str(path),
                                                     str(good), "--threshold", "0.0"], names, 1,
                          stdout_has=str(good)))

    # manifests with one malformed line (line 2)
    first = json.dumps({"id": "a", "audio": str(good), "duration": 1.0, "text": "HI", "label": "yes"})
    bad_lines = {
        "bad-json": '{"id": "b", "audio": ',
        "missing-key": json.dumps({"id": "b", "duration": 1.0, "text": "HI", "label": "yes"}),
        "bad-duration": json.dumps({"id": "b", "audio": str(good), "duration": "long", "text": "HI", "label": "yes"}),
        "missing-audio": json.dumps({"id": "b", "audio": "gone/b.wav", "duration": 1.0, "text": "HI",
                                     "label": "yes"}),
    }
    for tag, line in bad_lines.items():
        m = d / f"{tag}.jsonl"
        m.write_text(first + "\n" + line + "\n")
        where = [f"{m}:2"]
        cases += [
            Case(f"asr evaluate manifest-{tag}", ["asr", "evaluate", "--model", str(d / "ctc.pt"), "--manifest", str(m),
                                                 "--alignments", str(d / f"ali-{tag}.txt")], where,
                 outputs=[f"ali-{tag}.txt"]),
            Case(f"asr select manifest-{tag}", ["asr", "select", "--model", str(d / "ctc.pt"), "--pool", str(m),
                                               "--budget", "1", "--strategy", "confidence",
                                               "--out", str(d / f"sel-{tag}.jsonl")], where,
                 outputs=[f"sel-{tag}.jsonl", f"sel-{tag}.scores.tsv"]),
            Case(f"asr train manifest-{tag}", ["asr", "train", "--config", str(d / "asr.yaml"), f"data.train={m}",
                                              f"out_dir={d / ('run-m-' + tag)}"], where,
                 outputs=[f"run-m-{tag}/last.pt"]),
            Case(f"kws evaluate manifest-{tag}", ["kws", "evaluate", "--model", str(d / "crnn.pt"), "--manifest", str(m),
                                                 "--json", str(d / f"eval-m-{tag}.json")], where,
                 outputs=[f"eval-m-{tag}.json"]),
        ]

    # configs: not YAML, not a mapping, a binary file, a folder
    (d / "broken.yaml").write_text("model: {family: ctc\n  encoder: [\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "binary.yaml").write_bytes(bytes(range(256)))
    for tag, cfg in {"bad-yaml": d / "broken.yaml", "not-a-mapping": d / "list.yaml", "binary": d / "binary.yaml",
                     "folder": d, "missing": d / "nothere.yaml"}.items():
        for cmd in ("asr", "kws"):
            cases.append(Case(f"{cmd} train config-{tag}", [cmd, "train", "--config", str(cfg),
                                                             f"out_dir={d / ('run-c-' + cmd + tag)}"], [str(cfg)],
                              outputs=[f"run-c-{cmd}{tag}/last.pt"]))

    # custom keywords: a phrase that cannot be spoken as written, a missing recording, a wrong output type
    (d / "no-audio").mkdir()
    cases += [
        Case("kws train-keyword bad-phrase", ["kws", "train-keyword", "hey 2", "--out", str(d / "tk.pt")], ["'hey 2'"],
             outputs=["tk.pt", "tk.work"]),
        Case("kws train-keyword missing-positive", ["kws", "train-keyword", "computer", "--out", str(d / "tk2.pt"),
                                                    "--positive", str(d / "nothere")], [str(d / "nothere")],
             outputs=["tk2.pt", "tk2.work"]),
        Case("kws train-keyword onnx-out", ["kws", "train-keyword", "computer", "--out", str(d / "tk3.onnx")],
             [str(d / "tk3.onnx")], outputs=["tk3.onnx", "tk3.work"]),
        Case("kws evaluate recordings-missing", ["kws", "evaluate", "--model", str(d / "crnn.pt"), "--recordings",
                                                 str(d / "norec")], [str(d / "norec")]),
        Case("kws evaluate recordings-no-audio", ["kws", "evaluate", "--model", str(d / "crnn.pt"), "--recordings",
                                                  str(d / "no-audio")], [str(d / "no-audio")]),
    ]
    return cases


def _run(case: Case, cwd: Path) -> Case:
    prog, *args = case.args
    case.result = subprocess.run([sys.executable, "-m", prog, *args], capture_output=True, text=True, cwd=cwd,
                                 timeout=300)
    return case


# Runs each case of argv[1] (JSON: [[prog, args...], ...]) in a child forked from this interpreter,
# which imported the toolkit once; the child runs `python -m prog` (runpy) with stdout/stderr in
# argv[2]/<i>.out|.err; the exit statuses go to argv[3] (JSON). Two children at a time.
_FORK_RUNNER = r"""
import json, os, runpy, sys, traceback
import asr.cli, kws.cli  # noqa: F401  the slow imports, once
cases, folder, result = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]

def child(i, argv):
    for fd, suffix in ((1, "out"), (2, "err")):
        os.dup2(os.open(f"{folder}/{i}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = list(argv)
    try:
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

status, running, todo = {}, {}, list(enumerate(cases))
while todo or running:
    while todo and len(running) < 2:
        i, argv = todo.pop(0)
        pid = os.fork()
        if pid == 0:
            child(i, argv)
        running[pid] = i
    pid, st = os.wait()
    status[running.pop(pid)] = os.waitstatus_to_exitcode(st)
json.dump([status[i] for i in range(len(cases))], open(result, "w"))
"""

FRESH = 4  # cases run as a fresh `python -m` each (one of every few), the rest forked


def _run_forked(todo: list[Case], cwd: Path) -> None:
    work = cwd / "_forked"
    work.mkdir()
    (work / "cases.json").write_text(json.dumps([c.args for c in todo]))
    env = dict(os.environ, OMP_NUM_THREADS="1")  # no thread pool in the parent before it forks
    subprocess.run([sys.executable, "-c", _FORK_RUNNER, str(work / "cases.json"), str(work), str(work / "status.json")],
                   cwd=cwd, env=env, timeout=900, check=True)
    status = json.loads((work / "status.json").read_text())
    for i, (case, code) in enumerate(zip(todo, status)):
        case.result = subprocess.CompletedProcess(case.args, code, (work / f"{i}.out").read_text(),
                                                  (work / f"{i}.err").read_text())
    for f in work.iterdir():
        f.unlink()
    work.rmdir()


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    d = tmp_path_factory.mktemp("bad")
    todo = _build_cases(d)
    step = max(1, len(todo) // FRESH)
    fresh, forked = todo[::step], [c for i, c in enumerate(todo) if i % step]
    with ThreadPoolExecutor(1) as pool:
        futures = [pool.submit(_run, c, d) for c in fresh]  # beside the forked ones
        _run_forked(forked, d)
        done = [f.result() for f in futures]
    return {c.name: c for c in done + forked} | {"_folder": d}


def _names() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as t:
        return [c.name for c in _build_cases(Path(t))]


@pytest.mark.parametrize("name", _names())
def test_bad_input_fails_cleanly(cases, name):
    case, folder = cases[name], cases["_folder"]
    r = case.result
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.returncode == case.status, (r.returncode, r.stderr[-2000:])
    prog, cmd = case.args[0], case.args[1]
    assert f"{prog} {cmd}: error: " in r.stderr, r.stderr[-2000:]
    for needle in case.names:
        assert needle in r.stderr, (needle, r.stderr[-2000:])
    if case.stdout_has:
        assert case.stdout_has in r.stdout, r.stdout
    for out in case.outputs:
        assert not (folder / out).exists(), out
    assert not list(folder.rglob("*.tmp")), list(folder.rglob("*.tmp"))  # nothing half-written
    assert not (folder / MARKER).exists()  # the malicious pickle never ran
