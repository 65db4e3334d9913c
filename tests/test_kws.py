"""The keyword spotter: CRNN sizes, the streaming detector against the model on cut clips,
the event logic against a brute-force reference, evaluation figures, the long-stream builder."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.features import FeatureConfig
from asr.models import family_of, get_family
from asr.models.config import CRNNConfig, ModelConfig
from kws.data import combine_manifests, split_by_speaker
from kws.detect import Detector, EventLogic
from kws.evaluate import DETCurve, accuracy_report, count_events, localization
from kws.model import CRNN, count_parameters
from kws.stream import build_stream, speech_extent

LABELS = ["_silence_", "_unknown_", "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]


def crnn(**sizes):
    cfg = ModelConfig(family="crnn", features=FeatureConfig(n_mels=40), crnn=CRNNConfig(**sizes))
    torch.manual_seed(0)
    model = CRNN(cfg, len(LABELS)).eval()
    model.frontend.set_cmvn(torch.full((40,), -8.0), torch.full((40,), 3.0))
    return model


def test_default_crnn_size_follows_the_paper():
    model = crnn()
    n = count_parameters(model)
    assert 220_000 <= n <= 240_000, n  # Arik et al.: about 230k
    assert model.conv.kernel_size == (20, 5) and model.conv.stride == (8, 2) and model.conv.out_channels == 32
    assert model.rnn.num_layers == 2 and not model.rnn.bidirectional and model.dense.out_features == 64
    # MACs per second from the layer sizes: 12.5 convolution frames per second
    conv = 32 * 18 * 20 * 5
    gru = 3 * 88 * (576 + 88) + 3 * 88 * (88 + 88)
    dense = 88 * 64 + 64 * 12
    assert model.macs_per_second() == round(12.5 * (conv + gru + dense))


def test_crnn_family_is_found_through_the_entry_point():
    family = get_family("crnn")
    assert family.targets == "labels"
    model = family.build(ModelConfig(family="crnn", features=FeatureConfig(n_mels=40),
                                     crnn=CRNNConfig(rnn_dim=32, bidirectional=True)), 5)
    assert model(torch.randn(2, 8000), torch.tensor([8000, 3000])).shape == (2, 5)
    assert family_of(model) is family


def test_old_configs_with_extra_crnn_still_load():
    """Checkpoints and YAML files written before the typed section kept the sizes under extra.crnn."""
    from asr.config import from_dict

    cfg = from_dict(ModelConfig, {"family": "crnn", "extra": {"crnn": {"rnn_dim": 24, "kernel": [10, 5]}}})
    assert cfg.crnn.rnn_dim == 24 and cfg.crnn.kernel == [10, 5] and cfg.extra == {}


def test_bad_crnn_config_names_the_key():
    from asr.config import ConfigError

    with pytest.raises(ConfigError, match="rnn_type"):
        crnn(rnn_type="transformer")
    from asr.config import from_dict

    with pytest.raises(ConfigError, match="crnn: unknown key 'rnn_dimm'"):
        from_dict(ModelConfig, {"family": "crnn", "crnn": {"rnn_dimm": 3}}, source="model")


def test_class_weights_balance_the_training_set():
    family = get_family("crnn")
    model = crnn()
    items = [{"label": "_unknown_"}] * 90 + [{"label": "yes"}] * 10
    family.prepare(model, items, LABELS)
    w = model.class_weights
    assert torch.isclose(w[1] * 90, w[2] * 10) and torch.isclose(w[1] * 90 + w[2] * 10, torch.tensor(100.0))
    assert w[0] == 1.0  # absent classes keep weight 1


@pytest.mark.parametrize("chunk", [1601, 16000, 7 * 16000])
def test_detector_windows_equal_the_model_on_cut_clips(one_thread, chunk):
    model = crnn()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16000 * 6, generator=g) * 0.05
    x[30000:38000] += torch.sin(torch.arange(8000) * 0.3)  # something louder than the noise
    det = Detector(model, LABELS, smooth=1, batch_windows=5, end_pad=0)
    parts, firsts = [], []
    for i in range(0, len(x), chunk):
        first, s = det.scores(x[i:i + chunk])
        if len(s):
            firsts.append(first)
            parts.append(s)
    first, s = det.scores(torch.zeros(0), final=True)
    firsts.append(first)
    parts.append(s)
    scores = torch.cat([torch.as_tensor(p) for p in parts])
    hop = det.hop * 8 * 160  # samples between windows
    n_conv = ((len(x) - 400) // 160 + 1 - 20) // 8 + 1  # a window reads 10 convolution frames = 0.935 s
    assert len(scores) == (n_conv - 10) // det.hop + 1
    assert firsts == sorted(firsts) and firsts[0] == 0
    for w in (0, 7, 30, len(scores) - 1):
        clip = x[w * hop: w * hop + 16000]
        with torch.no_grad():
            p = torch.softmax(model(clip[None], torch.tensor([16000])), -1)[0, det.keyword_index]
        torch.testing.assert_close(scores[w], p, atol=1e-5, rtol=1e-4)


def test_end_pad_adds_windows_over_quiet_noise_after_the_stream(one_thread):
    model = crnn()
    x = torch.randn(16000 * 2, generator=torch.Generator().manual_seed(5)) * 0.05
    plain = torch.as_tensor(Detector(model, LABELS, smooth=1, end_pad=0).scores(x, final=True)[1])
    det = Detector(model, LABELS, smooth=1, end_pad=0.5)
    padded = torch.as_tensor(det.scores(x, final=True)[1])
    assert det.seconds_processed == 2.0
    torch.testing.assert_close(padded[: len(plain)], plain)
    quiet = np.random.default_rng(0).standard_normal(8000) * 10 ** (-70 / 20)  # the pad's noise, seed 0
    xp = torch.cat([x, torch.from_numpy(quiet.astype(np.float32))])
    hop = det.hop * 8 * 160
    n_conv = ((len(xp) - 400) // 160 + 1 - 20) // 8 + 1
    assert len(padded) == (n_conv - 10) // det.hop + 1 > len(plain)
    w = len(padded) - 1
    with torch.no_grad():
        p = torch.softmax(model(xp[None, w * hop: w * hop + 16000], torch.tensor([16000])), -1)[0, det.keyword_index]
    torch.testing.assert_close(padded[w], p, atol=1e-5, rtol=1e-4)


def test_smoothing_is_a_causal_moving_average(one_thread):
    model = crnn()
    x = torch.randn(16000 * 4, generator=torch.Generator().manual_seed(2)) * 0.1
    raw = torch.as_tensor(Detector(model, LABELS, smooth=1).scores(x, final=True)[1])
    det = Detector(model, LABELS, smooth=3, batch_windows=4)
    parts = [det.scores(x[i:i + 5000])[1] for i in range(0, len(x), 5000)] + [det.scores(torch.zeros(0), final=True)[1]]
    smooth = torch.cat([torch.as_tensor(p) for p in parts])
    ref = torch.stack([raw[max(0, i - 2): i + 1].mean(0) for i in range(len(raw))])
    torch.testing.assert_close(smooth, ref)


def reference_events(scores, threshold, patience, refractory, max_windows):
    """Window by window, keyword by keyword: the rules of kws.detect written plainly."""
    runs, quiet, events = {}, -1, []
    for w in range(len(scores) + 1):
        for k in sorted(runs):
            start, length, best_w, best = runs[k]
            if w < len(scores) and scores[w, k] >= threshold and length < max_windows:
                runs[k] = [start, length + 1, *((w, scores[w, k]) if scores[w, k] > best else (best_w, best))]
            else:
                del runs[k]
                if length >= patience and start >= quiet:
                    events.append((k, best_w, best))
                    quiet = w + refractory
        if w < len(scores):
            for k in range(scores.shape[1]):
                if scores[w, k] >= threshold and k not in runs and w >= quiet:
                    runs[k] = [w, 1, w, scores[w, k]]
    return events


@pytest.mark.parametrize("seed", range(6))
def test_event_logic_matches_brute_force_in_any_chunking(seed):
    rng = np.random.default_rng(seed)
    # bursts of high posteriors on a low floor, 3 keywords
    s = rng.uniform(0, 0.3, (300, 3))
    for _ in range(25):
        a, k = rng.integers(0, 290), rng.integers(0, 3)
        s[a:a + rng.integers(1, 9), k] = rng.uniform(0.4, 1.0)
    patience = int(rng.integers(1, 4))
    args = (0.5, patience, int(rng.integers(0, 12)), patience + int(rng.integers(0, 6)))
    ref = reference_events(s, *args)
    logic = EventLogic(3, *args)
    got, pos = [], 0
    while pos < len(s):
        n = int(rng.integers(1, 40))
        got += logic.update(s[pos:pos + n], pos)
        pos += n
    got += logic.flush()
    # the streaming logic reports at flush time in window order; runs ending in one window in keyword order
    assert sorted(got, key=lambda e: (e[1], e[0])) == sorted([(k, w, float(v)) for k, w, v in ref], key=lambda e: (e[1], e[0]))
    assert len(ref) > 3


def test_count_events_agrees_with_the_streaming_detector(one_thread):
    model = crnn()
    torch.manual_seed(3)
    with torch.no_grad():  # make the random model fire now and then
        model.output.bias[2] += 2.0
    x = torch.randn(16000 * 20) * 0.1
    det = Detector(model, LABELS, threshold=0.2, patience=1)
    events = det.process(x) + det.flush()
    det2 = Detector(model, LABELS, threshold=0.2, patience=1)
    s = det2.scores(x, final=True)[1]
    assert count_events(det2, [s], 0.2) == len(events) > 0


def test_accuracy_report_and_frr_at_fa():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    truth = torch.tensor([0, 1, 1, 1])
    rep = accuracy_report(probs, truth, ["a", "b"])
    assert rep.accuracy == 0.75 and rep.confusion.tolist() == [[1, 0], [1, 2]]
    assert rep.per_class() == {"a": (1.0, 1), "b": (2 / 3, 3)}
    curve = DETCurve(np.array([0.3, 0.5, 0.9]), np.array([0.1, 0.2, 0.6]), np.array([4.0, 0.4, 0.0]), 2.0)
    assert curve.frr_at(0.5) == (0.2, 0.5)
    assert curve.frr_at(0.0) == (0.6, 0.9)


def test_localization_matches_one_to_one():
    from kws.detect import Event

    truth = [{"keyword": "yes", "start": 10.0, "end": 10.5}, {"keyword": "no", "start": 20.0, "end": 20.4}]
    events = [Event("yes", 9.7, 10.7, 0.9), Event("yes", 9.8, 10.8, 0.8), Event("no", 25.0, 26.0, 0.9)]
    assert localization(events, truth) == {"found": 1, "total": 2, "recall": 0.5, "false_alarms": 2}


def test_build_stream_places_clips_where_the_truth_says(tmp_path):
    sr = 16000
    items = []
    for i, label in enumerate(["yes", "_unknown_", "no", "yes"]):
        wav = np.zeros(sr, dtype=np.float32)
        wav[4000 + 1000 * i: 9000 + 1000 * i] = 0.5 * np.sin(np.arange(5000) * 0.2)
        sf.write(tmp_path / f"c{i}.wav", wav, sr)
        items.append({"id": f"c{i}", "audio": str(tmp_path / f"c{i}.wav"), "label": label})
    truth = build_stream(items, tmp_path / "s.wav", ["yes", "no"], gap=(0.3, 0.6), seed=0)
    audio, rate = sf.read(tmp_path / "s.wav")
    assert rate == sr and len(truth) == 3 and {t["keyword"] for t in truth} == {"yes", "no"}
    for t in truth:
        seg = audio[int(t["start"] * sr): int(t["end"] * sr)]
        assert abs(t["end"] - t["start"] - 5000 / sr) < 0.03
        assert np.sqrt(np.mean(seg**2)) > 0.2  # the tone is there
    long = build_stream(items, tmp_path / "l.wav", [], minutes=0.5, seed=0)
    assert long == [] and sf.info(tmp_path / "l.wav").duration >= 30.0


def test_speech_extent_finds_the_loud_part():
    wav = torch.zeros(16000)
    wav[3200:9600] = 0.3
    assert speech_extent(wav, 16000) == (0.2, 0.6)


def test_speech_extent_in_a_noisy_recording():
    """A phone recording: background 15 dB under the word and a click far from it. The word is the run
    around the loudest frame, its 60-ms closure (before a "p") bridged; 25 dB under the peak alone
    would call the whole clip speech."""
    g = torch.Generator().manual_seed(0)
    wav = 0.03 * torch.randn(16000, generator=g)  # noise floor about -30 dBFS
    wav[4800:8000] += 0.2 * torch.randn(3200, generator=g)  # the vowel, 0.30-0.50 s
    wav[8960:9920] += 0.1 * torch.randn(960, generator=g)  # the burst after a 60-ms closure, 0.56-0.62 s
    wav[14400:14720] += 0.2 * torch.randn(320, generator=g)  # a click at 0.90 s
    assert speech_extent(wav, 16000) == (0.3, 0.62)
    start, end = speech_extent(wav, 16000, above_floor_db=0.0)  # the floor ignored: the whole clip
    assert start <= 0.1 and end == 1.0


def test_split_by_speaker_and_combine(tmp_path):
    items = [{"id": f"{s}/{i}", "audio": "x.wav", "speaker": s, "label": "yes"} for s in range(40) for i in range(3)]
    parts = split_by_speaker(items, {"train": 0.5, "dev": 0.1, "test": 0.4}, seed=3)
    speakers = {k: {it["speaker"] for it in v} for k, v in parts.items()}
    assert [len(speakers[k]) for k in ("train", "dev", "test")] == [20, 4, 16]
    assert not (speakers["train"] & speakers["test"]) and not (speakers["dev"] & speakers["test"])
    assert split_by_speaker(items, {"train": 0.5, "test": 0.5}, seed=3) == split_by_speaker(items, {"train": 0.5, "test": 0.5}, seed=3)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(it) + "\n" for it in items[:4]))
    b.write_text("".join(json.dumps(it) + "\n" for it in items[4:6]))
    out, n = combine_manifests(tmp_path / "c.jsonl", [(a, 1), (b, 3)])
    ids = [json.loads(l)["id"] for l in out.read_text().splitlines()]
    assert n == 10 and ids[4:7] == ["1/1", "1/1#1", "1/1#2"]
    b.write_text(json.dumps({"id": "n1", "audio": "n.wav"}) + "\n" + json.dumps(dict(items[7], label="_silence_")) + "\n")
    out, n = combine_manifests(tmp_path / "e.jsonl", [(a, 1), (b, 1)], labels=["_silence_"])
    assert [json.loads(l)["id"] for l in out.read_text().splitlines()] == ["n1", "2/1"]
    with pytest.raises(ValueError, match="also appears"):
        combine_manifests(tmp_path / "d.jsonl", [(a, 1), (a, 1)])
    out, n = combine_manifests(tmp_path / "f.jsonl", [(a, 1), (b, 3, 2)])  # 2 of the 3 copies read clean
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [(r["id"], r.get("augment")) for r in rows[4:7]] == [("n1", None), ("n1#1", False), ("n1#2", False)]
    assert all("augment" not in r for r in rows[:4])
    with pytest.raises(ValueError, match="clean copies"):
        combine_manifests(tmp_path / "g.jsonl", [(a, 2, 3)])


def test_gain_augmentation_scales_by_the_drawn_decibels():
    from asr.augment import WaveformAugment

    aug = WaveformAugment(speed_prob=0.0, gain_db=(-12.0, -12.0), gain_prob=1.0)
    x = torch.randn(1000)
    torch.testing.assert_close(aug(x, torch.Generator().manual_seed(0)), x * 10 ** (-12 / 20))


def test_event_bounds_trim_the_window_to_the_loud_part(one_thread):
    model = crnn()
    x = torch.randn(16000 * 5, generator=torch.Generator().manual_seed(4)) * 1e-3
    x[32000:38400] += 0.5 * torch.sin(torch.arange(6400) * 0.25)  # 2.0 .. 2.4 s
    det = Detector(model, LABELS)
    det.scores(x, final=True)
    w = int(1.7 / (det.hop * det.conv_seconds))  # a window starting at about 1.7 s holds the tone
    start, end = det._bounds(w)
    assert abs(start - 2.0) <= 0.03 and abs(end - 2.4) <= 0.03, (start, end)
    det.cfg.trim_db = 0
    assert det._bounds(w) == (det.window_start(w), det.window_start(w) + 1.0)


def test_event_bounds_in_a_noisy_recording_are_the_word(one_thread):
    """Background 12 dB under the word, a click 0.2 s after it: the event is the word (its 60-ms gap
    bridged), not the window from the first frame within trim_db of the peak to the last."""
    model = crnn()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16000 * 5, generator=g) * 0.05
    x[32000:35200] += 0.2 * torch.randn(3200, generator=g)  # 2.00 .. 2.20 s
    x[36160:37760] += 0.2 * torch.randn(1600, generator=g)  # 2.26 .. 2.36 s
    x[40960:41280] += 0.2 * torch.randn(320, generator=g)  # a click at 2.56 s
    det = Detector(model, LABELS)
    det.scores(x, final=True)
    w = int(1.7 / (det.hop * det.conv_seconds))
    start, end = det._bounds(w)
    assert abs(start - 2.0) <= 0.03 and abs(end - 2.36) <= 0.03, (start, end)
    det.cfg.trim_floor_db, det.cfg.trim_gap = 0.0, math.inf  # the rule before: most of the window
    start, end = det._bounds(w)
    assert end - start > 0.6, (start, end)


def test_synthetic_rir_decays_by_60_db_in_rt60():
    from asr.augment import reverberate, synthetic_rir

    sr, rt60 = 16000, 0.5
    ir = synthetic_rir(rt60, sr, torch.Generator().manual_seed(0)).double()
    late = ir[1:]
    # Schroeder backward integration: the energy decay curve falls 60 dB per rt60
    edc = 10 * torch.log10(torch.flip(torch.cumsum(torch.flip(late**2, [0]), 0), [0]))
    t = torch.arange(len(edc)) / sr
    fit = (t > 0.02) & (edc > edc[0] - 35)  # the straight part of the curve
    slope = np.polyfit(t[fit].numpy(), edc[fit].numpy(), 1)[0]
    assert abs(-60 / slope - rt60) < 0.05 * rt60
    x = torch.randn(8000)
    y = reverberate(x, ir.float())
    assert y.shape == x.shape and torch.isclose(y.pow(2).mean(), x.pow(2).mean(), rtol=1e-4)
    # a click becomes the impulse response itself (scaled)
    click = torch.zeros(8000)
    click[0] = 1.0
    r = reverberate(click, ir.float())
    torch.testing.assert_close(r / r.norm(), ir[:8000].float() / ir[:8000].float().norm(), atol=1e-5, rtol=1e-4)


def _ctc_brute_force(log_probs: torch.Tensor, target: list[int]) -> float:
    """-log P(target) by enumerating every frame path over the blank and the target's symbols."""
    import itertools

    total = torch.tensor(0.0, dtype=torch.float64)
    for path in itertools.product([0] + sorted(set(target)), repeat=log_probs.shape[0]):
        collapsed = [s for i, s in enumerate(path) if s != 0 and (i == 0 or s != path[i - 1])]
        if collapsed == target:
            total = total + log_probs[torch.arange(len(path)), list(path)].double().sum().exp()
    return float(-total.log())


def test_letter_ctc_term_matches_path_enumeration():
    from kws.model import crnn_loss, encode_letters

    model = crnn(ctc_weight=0.5)
    wav = torch.randn(3, 9000, generator=torch.Generator().manual_seed(1))  # 54 feature frames -> 5 conv frames
    batch = {"wav": wav, "wav_lengths": torch.tensor([9000, 9000, 6000]), "labels": torch.tensor([11, 0, 1]),
             "texts": ["Go", "", "bee"]}  # 6000 samples -> 3 frames: "bee" needs a blank between the e's, 4 frames
    with torch.no_grad():
        out = crnn_loss(model, batch)
        ce = torch.nn.functional.cross_entropy(model(wav, batch["wav_lengths"]), batch["labels"], reduction="sum")
        feats, lengths = model.frontend(wav, batch["wav_lengths"])
        frames = model.conv_frames(feats)
        lp = torch.log_softmax(model.letter_head(model.recurrent(frames)), -1)
    assert frames.shape[1] == 5 and model.conv_lengths(lengths).tolist() == [5, 5, 3]
    # "bee" cannot fit in 3 frames: zero_infinity drops it instead of making the loss infinite
    expected = sum(_ctc_brute_force(lp[i, :n], encode_letters(t)) for i, (n, t) in enumerate([(5, "go"), (5, "")]))
    assert encode_letters("Go") == [7, 15]
    assert torch.isclose(out.loss, ce + 0.5 * expected, rtol=1e-4), (out.loss, ce, expected)
    assert out.metrics["ctc"] == pytest.approx(expected, rel=1e-4)
    assert crnn().letter_head is None  # off by default


@pytest.mark.parametrize("layout", ["crnn", "extra"])  # the typed section, and checkpoints from before it
def test_export_drops_the_letter_head_and_gives_the_same_scores(tmp_path, layout):
    from asr.checkpoint import export_checkpoint, load_model, save_checkpoint
    from kws.model import without_letter_head

    model = crnn(ctc_weight=0.5)
    sizes = {"crnn": {"ctc_weight": 0.5}}
    config = {"model": {"family": "crnn", "features": {"n_mels": 40}, **(sizes if layout == "crnn" else {"extra": sizes})},
              "data": {"labels": LABELS}}
    save_checkpoint({"format": 1, "family": "crnn", "config": config, "labels": LABELS, "model": model.state_dict(),
                     "train_state": {"step": 3}}, tmp_path / "full.pt")
    export_checkpoint(tmp_path / "full.pt", tmp_path / "ship.pt", transform=without_letter_head)
    shipped, _, labels, cfg = load_model(tmp_path / "ship.pt")
    assert shipped.letter_head is None and cfg.model.crnn.ctc_weight == 0.0 and labels == LABELS
    wav = torch.randn(2, 16000, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([16000, 11000])
    with torch.no_grad():
        torch.testing.assert_close(shipped(wav, lengths), model(wav, lengths))
    assert without_letter_head({"config": {"model": {"extra": {}}}, "model": {}}) == {"config": {"model": {"extra": {}}}, "model": {}}


def test_letter_ctc_head_learns_which_word_was_said():
    """A few steps on two "words" (tone pairs) make the letter head give each clip's own
    spelling a far higher CTC likelihood than the other's."""
    from kws.model import crnn_loss, encode_letters

    model = crnn(ctc_weight=1.0, rnn_dim=32, dense=16, dropout=0.0).train()
    t = torch.arange(8000) / 16000
    tone = lambda f1, f2: torch.cat([torch.sin(2 * torch.pi * f1 * t), torch.sin(2 * torch.pi * f2 * t)])
    wav = torch.stack([tone(300, 900), tone(1500, 500)]) + 0.01 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([16000, 16000])
    batch = {"wav": wav, "wav_lengths": lengths, "labels": torch.tensor([4, 3]), "texts": ["up", "no"]}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(100):
        opt.zero_grad()
        out = crnn_loss(model, batch)
        first = out.metrics["ctc"] if first is None else first
        out.loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        feats, feat_lengths = model.frontend(wav, lengths)
        frames = model.conv_frames(feats)
        lp = torch.log_softmax(model.letter_head(model.recurrent(frames)), -1).transpose(0, 1)
        n = model.conv_lengths(feat_lengths)

        def nll(texts):
            targets = [torch.tensor(encode_letters(x)) for x in texts]
            return torch.nn.functional.ctc_loss(lp, torch.cat(targets), n, torch.tensor([len(x) for x in targets]),
                                                reduction="none")

    own, swapped = nll(["up", "no"]), nll(["no", "up"])
    print(f"letter CTC loss {first:.2f} -> {out.metrics['ctc']:.4f}; margin of the other word {(swapped - own).tolist()}")
    assert out.metrics["ctc"] < first / 10, (first, out.metrics["ctc"])  # measured here: first / 29
    # the other word is at least e^2 times less likely (measured here: e^8 and e^9)
    assert (swapped - own > 2.0).all(), (own, swapped)
