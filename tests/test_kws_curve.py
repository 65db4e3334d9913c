"""The speaker bootstrap against exact enumeration, the log-linear fit, and `kws curve` as a user runs it."""

import csv
import itertools
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from kws.curve import bootstrap_accuracies, count_speakers, fit_log_curve, speaker_bootstrap


def test_bootstrap_distribution_equals_enumeration_of_all_speaker_draws():
    # speakers a (2 of 3 right), b (0 of 1), c (2 of 2): every ordered draw of 3 speakers is equally likely
    correct = np.array([1, 1, 0, 0, 1, 1])
    speakers = ["a", "a", "a", "b", "c", "c"]
    groups = {"a": (2, 3), "b": (0, 1), "c": (2, 2)}
    exact = Counter()
    for draw in itertools.product(groups, repeat=3):
        right, clips = (sum(groups[s][k] for s in draw) for k in (0, 1))
        exact[round(right / clips, 9)] += 1 / 27
    acc = bootstrap_accuracies(correct, speakers, n_resamples=40000, seed=1)
    seen = Counter(np.round(acc, 9))
    assert set(seen) == set(exact)
    for value, p in exact.items():
        assert abs(seen[value] / len(acc) - p) < 0.01, value
    lo, hi = speaker_bootstrap(correct, speakers, n_resamples=40000, seed=1)
    assert (lo, hi) == tuple(np.percentile(acc, [2.5, 97.5]))


def test_one_clip_per_speaker_gives_the_binomial_interval():
    rng = np.random.default_rng(0)
    correct = (rng.random(400) < 0.8).astype(int)
    p = correct.mean()
    lo, hi = speaker_bootstrap(correct, [str(i) for i in range(400)], n_resamples=4000)
    half = 1.96 * np.sqrt(p * (1 - p) / 400)
    assert abs(lo - (p - half)) < 0.01 and abs(hi - (p + half)) < 0.01


def test_speakers_that_are_all_right_or_all_wrong_widen_the_interval():
    correct = np.repeat([1] * 16 + [0] * 4, 20)  # 20 speakers of 20 clips, the same 80% of clips right
    clustered = speaker_bootstrap(correct, np.repeat([str(i) for i in range(20)], 20))
    independent = speaker_bootstrap(correct, [str(i) for i in range(400)])
    assert clustered[1] - clustered[0] > 3 * (independent[1] - independent[0])


def test_bootstrap_rejects_mismatched_input():
    with pytest.raises(ValueError, match="2 results but 1 speakers"):
        speaker_bootstrap(np.array([1, 0]), ["a"])


def test_log_fit_recovers_the_law_and_ignores_runs_without_speakers():
    x = [0, 4, 8, 32, 64]
    y = [0.5] + [0.6 + 0.04 * np.log2(v) for v in x[1:]]
    fit = fit_log_curve(x, y)
    assert fit.intercept == pytest.approx(0.6) and fit.per_doubling == pytest.approx(0.04)
    assert fit.speakers_for(0.9) == pytest.approx(2 ** 7.5)
    assert fit(fit.speakers_for(0.75)) == pytest.approx(0.75)
    assert fit_log_curve([2, 4], [0.8, 0.7]).speakers_for(0.9) == float("inf")
    with pytest.raises(ValueError, match="two different speaker counts"):
        fit_log_curve([0, 8, 8], [0.5, 0.7, 0.71])


def test_count_speakers_leaves_out_silence_clips():
    items = [{"id": "1", "speaker": "a", "label": "yes"}, {"id": "2", "speaker": "a", "label": "no"},
             {"id": "3", "speaker": "noise_1.wav", "label": "_silence_"}, {"id": "4", "label": "go"}]
    assert count_speakers(items) == 2


def test_kws_curve_writes_table_and_plot_and_extrapolates(tmp_path):
    runs = []
    for name, n, acc in (("none", 0, 0.55), ("few", 4, 0.70), ("more", 16, 0.80)):
        manifest = tmp_path / f"{name}.jsonl"
        items = [{"id": f"{s}/{k}", "audio": "x.wav", "duration": 1.0, "label": "yes", "speaker": f"s{s}"}
                 for s in range(n) for k in range(3)]
        items += [{"id": f"sil{name}", "audio": "n.wav", "duration": 1.0, "label": "_silence_", "speaker": "n.wav"}] * (n > 0)
        manifest.write_text("".join(json.dumps(it) + "\n" for it in items))
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval_real.json").write_text(json.dumps({"accuracy": acc, "accuracy_ci95": [acc - 0.05, acc + 0.04]}))
        runs.append(f"{manifest}={tmp_path / name / 'eval_real.json'}")
    out = subprocess.run([sys.executable, "-m", "kws", "curve", *runs, "--out", str(tmp_path / "c" / "curve"),
                          "--target", "0.9"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader((tmp_path / "c" / "curve.csv").open()))
    assert [(r["run"], int(r["speakers"]), int(r["clips"])) for r in rows] == [("none", 0, 0), ("few", 4, 12),
                                                                               ("more", 16, 48)]
    # 0.70 at 4 and 0.80 at 16 speakers: 5 points per doubling, 0.90 at 64 speakers
    assert "5.0 points * log2(speakers)" in out.stdout and "90% at about 64 real training speakers" in out.stdout
    assert (tmp_path / "c" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, "-m", "kws", "curve", f"{tmp_path / 'few.jsonl'}={tmp_path / 'few.jsonl'}",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "few.jsonl: not a `kws evaluate --json` file" in bad.stderr
