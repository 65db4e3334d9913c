"""A keyword spotter for your own phrases, from text alone: ``kws train-keyword "hey computer"``.

:func:`train_keyword` runs six stages, each resumable from ``work_dir``:

1. **synthesize** with the toolkit's synthetic talkers (espeak-ng voices and variants, flite voices;
   each with its own pitch, rate and vocal-tract warp): positives of each phrase (a one-second clip,
   the phrase centred; the training loader shifts it by up to 250 ms, adds reverberation and noise
   at 0-20 dB), and negatives: the phrase's near misses (:mod:`kws.confusables`), other words of a
   built-in lexicon, sentences (cut into one-second windows) and noise (``_silence_``). The talkers
   of the synthetic corpus's dev split say the dev set that picks the epoch; its test talkers are
   never used here.
2. **real audio**: ``negatives`` (recordings or manifests of speech without the phrases; items whose
   transcript holds a word of a phrase are skipped) are split by recording, 80% cut into training
   windows and 20% kept to calibrate the threshold; ``positives`` (recordings of a phrase, one word
   each) become one-second windows around their speech, repeated.
3. **train** the CRNN through the shared loop, starting from the shipped spotter's layers (its
   convolution and GRUs have heard real speakers) with a new output layer: one class per phrase +
   ``_unknown_`` + ``_silence_`` (the rows of those two copied, a phrase's row the mean of the old
   keywords' rows).
4. **mine**: the detector at a low threshold over the negative speech (and the synthetic sentences);
   the windows it fires on join the training set as ``_unknown_`` (4x).
5. **retrain** from the model before on that set; stages 4-5 repeat ``mine_rounds`` times, each
   mining with the newest model and keeping the windows of the rounds before (a round that finds
   no new window ends them).
6. **calibrate and export**: the lowest threshold whose false alarms per hour on the held-out
   negative speech meet ``target_fa_h`` (the dev talkers' sentences when there is none), stored in
   the exported model, which ``kws detect``/``kws listen`` use as they use the default one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from asr.errors import UsageError

log = logging.getLogger(__name__)

# words of which kws/pretrained/crnn.pt heard real recordings as _unknown_ in training (the wake-word
# recordings of recipes/synthetic/kws_negatives.sh): a phrase with one of them starts at a disadvantage
SHIPPED_NEGATIVE_WORDS = ("alexa", "computer")

__all__ = ["KeywordRecipe", "phrase_slug", "recording_items", "train_keyword"]

SILENCE, UNKNOWN = "_silence_", "_unknown_"


@dataclass
class KeywordRecipe:
    """Settings of :func:`train_keyword` (the CLI flags of ``kws train-keyword``)."""

    phrases: list[str]
    out: str
    work_dir: str = ""  # default: OUT without its suffix + ".work"
    positives_per_phrase: int = 800  # synthesized clips of each phrase
    voices: list[str] = field(default_factory=list)  # say the phrase only with these voices (e.g. en-us, slt; [] = all)
    confusable_clips: int = 40  # synthesized clips of each near miss
    words: int = 2500  # clips of other words
    sentences: int = 300  # synthesized sentences (cut into one-second windows)
    silence: int = 300  # one-second noise clips (_silence_)
    negatives: list[str] = field(default_factory=list)  # speech without the phrases: audio files / manifests
    max_negative_windows: int = 4000  # one-second training windows drawn from the negatives
    noise: list[str] = field(default_factory=list)  # extra noise recordings (files / manifests) for the loader to add
    positives: list[str] = field(default_factory=list)  # real recordings of a phrase: folders, files, manifests
    positive_repeat: int = 8  # copies of each real positive in the training set
    epochs: int = 8  # round 1
    mine_epochs: int = 4  # each round after mining
    mine_rounds: int = 1  # mine-and-retrain rounds after round 1 (each mines with the model before it)
    lr: float = 1e-3  # peak learning rate of round 1 (mining rounds: half); higher wears away what the init model knew
    minutes: float = 0.0  # wall-clock cap of the training (2/3 round 1, 1/3 the mining rounds; 0 = run the epochs)
    mine_threshold: float = 0.3
    target_fa_h: float = 5.0  # false alarms per hour on the held-out negative speech at the shipped threshold
    min_threshold: float = 0.5
    init: str = "default"  # the spotter whose layers start training ("default": the shipped one; "" = from scratch)
    seed: int = 0
    threads: int = 2
    workers: int = 2
    progress: bool = True


def phrase_slug(phrase: str) -> str:
    """``"Hey Computer"`` -> ``"hey_computer"`` (a folder name)."""
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_") or "phrase"


def _check_phrases(phrases: Sequence[str]) -> list[str]:
    out = []
    for p in phrases:
        norm = " ".join(p.lower().split())
        if not norm or not re.fullmatch(r"[a-z' ]+", norm):
            raise UsageError(f"phrase {p!r}: use letters, apostrophes and spaces (spell digits out)")
        if norm in out:
            raise UsageError(f"phrase {p!r} is given twice")
        out.append(norm)
    if not out:
        raise UsageError("give at least one phrase")
    return out


def _check_voices(voices: Sequence[str], seed: int) -> None:
    """A voice no training talker speaks with is a usage error."""
    from asr.data.tts import list_speakers

    known = sorted({spk.voice for spk in list_speakers(seed) if spk.split != "test"})
    unknown = sorted(set(voices) - set(known))
    if unknown:
        raise UsageError(f"unknown voice(s) {', '.join(unknown)}: the synthetic talkers speak with {', '.join(known)}")


def recording_items(inputs: Sequence[str | os.PathLike], phrases: Sequence[str]) -> list[dict]:
    """Recordings of the phrases (:func:`kws.speech.labelled_recordings`), each labelled with its phrase:
    the label must be one of ``phrases``, or anything when there is only one phrase."""
    from kws.speech import labelled_recordings

    items = labelled_recordings(inputs)
    for it in items:
        if it["label"] not in phrases:
            if len(phrases) > 1:
                raise UsageError(f"{it['audio']}: labelled {it['label']!r}, which is none of the phrases "
                                 f"({', '.join(phrases)}): name the folder after its phrase")
            it["label"] = phrases[0]
    return items


class _Stages:
    """Progress lines: ``[2/6] real audio ... (12.3 s)``."""

    NAMES = ("synthesize", "real audio", "train", "mine", "retrain", "calibrate and export")

    def __init__(self, progress: bool):
        self.progress, self.t0, self.times = progress, time.monotonic(), {}
        self._start = None

    def start(self, name: str, detail: str = "") -> None:
        self._start = (name, time.monotonic())
        if self.progress:
            print(f"[{self.NAMES.index(name) + 1}/{len(self.NAMES)}] {name}{': ' + detail if detail else ''}", flush=True)

    def done(self, summary: str = "") -> None:
        name, t = self._start
        seconds = round(time.monotonic() - t, 1)
        self.times[name] = round(self.times.get(name, 0.0) + seconds, 1)  # mine/retrain: summed over the rounds
        if self.progress:
            print(f"    {summary}{'  ' if summary else ''}({seconds:.0f} s)", flush=True)


def _synthesis_jobs(recipe: KeywordRecipe, phrases: list[str], root: Path, sr: int):
    """``(jobs, labelled items (path, label, split))`` of stage 1."""
    from asr.data.noise import NOISE_KINDS
    from asr.data.sentences import VOCABULARY, generate_sentences
    from asr.data.synthetic import SynthesisJob
    from asr.data.tts import list_speakers, stable_int
    from kws.confusables import LEXICON_EXTRA, confusables

    speakers = list_speakers(recipe.seed)
    by_split = {s: [spk for spk in speakers if spk.split == s] for s in ("train", "dev")}
    espeak = {s: [spk for spk in v if spk.engine == "espeak"] for s, v in by_split.items()}
    rng = np.random.default_rng(stable_int("train-keyword", recipe.seed, *phrases))
    jobs, items = [], []
    phrase_words = {w for p in phrases for w in p.split()}

    def clip(text: str, label: str, rel: str, split: str, pool) -> None:
        spk = pool[int(rng.integers(len(pool)))]
        path = root / rel
        jobs.append(SynthesisJob("clip", path, text, spk, stable_int("job", recipe.seed, rel), sr))
        items.append((path, label, split))

    def n_dev(n: int) -> int:  # dev clips: a tenth, said by the dev talkers
        return max(4, n // 10)

    said_by = by_split  # the phrase's talkers; negatives keep every talker, so the voice is no cue for the phrase
    if recipe.voices:
        said_by = {s: [spk for spk in v if spk.voice in recipe.voices] or v for s, v in by_split.items()}
    near: dict[str, list[str]] = {}
    for p in phrases:
        slug = phrase_slug(p)
        for split, n in (("train", recipe.positives_per_phrase), ("dev", n_dev(recipe.positives_per_phrase))):
            pool = said_by[split]
            for i in range(n):  # every talker in turn, then again with new jitter
                spk = pool[i % len(pool)]
                rel = f"positive/{slug}/{split}-{i:05d}.wav"
                jobs.append(SynthesisJob("clip", root / rel, p, spk, stable_int("job", recipe.seed, rel), sr))
                items.append((root / rel, p, split))
        cands = [c for c in confusables(p) if c.text.lower() not in phrases]
        near[p] = [c.text for c in cands]
        for k, c in enumerate(cands):
            for split, n in (("train", recipe.confusable_clips), ("dev", n_dev(recipe.confusable_clips))):
                pool = espeak[split] if c.espeak_only else by_split[split]
                for i in range(n):
                    clip(c.text, UNKNOWN, f"confusable/{slug}/{k:02d}-{split}-{i:04d}.wav", split, pool)
    lexicon = sorted((set(VOCABULARY) | set(LEXICON_EXTRA)) - phrase_words)
    for split, n in (("train", recipe.words), ("dev", n_dev(recipe.words))):
        for i in range(n):
            word = lexicon[int(rng.integers(len(lexicon)))]
            clip(word, UNKNOWN, f"words/{split}-{i:05d}.wav", split, by_split[split])
    texts = [t for t in generate_sentences(recipe.sentences * 2, recipe.seed)
             if not set(re.findall(r"[a-z']+", t.lower())) & phrase_words][: recipe.sentences]
    sentences = []
    for i, text in enumerate(texts):
        split = "dev" if i % 10 == 0 else "train"
        pool = by_split[split]
        rel = f"sentences/{split}-{i:05d}.flac"
        jobs.append(SynthesisJob("utt", root / rel, text, pool[i % len(pool)], stable_int("job", recipe.seed, rel), sr))
        sentences.append((root / rel, text, split))
    talkers = tuple(by_split["train"][:20])
    for i in range(recipe.silence + 12):
        kind = NOISE_KINDS[i % len(NOISE_KINDS)]
        seconds = 1.0 if i < recipe.silence else 20.0  # the last 12: noise for the loader to add
        rel = f"noise/{'silence' if i < recipe.silence else 'augment'}-{i:04d}.wav"
        jobs.append(SynthesisJob("noise", root / rel, kind, None, stable_int("job", recipe.seed, rel), sr, seconds,
                                 talkers if kind == "babble" else ()))
        items.append((root / rel, SILENCE if i < recipe.silence else "noise", "dev" if i % 10 == 0 else "train"))
    return jobs, items, sentences, near


def _prepare_work_dir(work: Path, recipe: KeywordRecipe) -> None:
    """Create ``work``; a work dir left by a run with other settings is emptied first (its audio and
    rounds belong to those settings), one with the same settings is resumed."""
    import shutil

    stamp = {k: v for k, v in asdict(recipe).items() if k not in ("out", "work_dir", "progress", "threads", "workers")}
    path = work / "settings.json"
    if work.is_dir() and any(work.iterdir()):
        try:
            same = json.loads(path.read_text(encoding="utf-8")) == json.loads(json.dumps(stamp))
        except (OSError, ValueError):
            same = False
        if not same:
            if not path.is_file():
                raise UsageError(f"{work}: exists and was not written by kws train-keyword; give another --work-dir")
            log.info("%s: other settings than the last run: starting over", work)
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamp, indent=1), encoding="utf-8")


def _window_around_speech(item: dict, sr: int, window: float = 1.0) -> dict:
    """A ``window``-second segment of the recording centred on its speech."""
    import torch

    from asr.audio import read_audio
    from kws.stream import speech_extent

    wav, _ = read_audio(item["audio"], sr)
    seconds = len(wav) / sr
    start, end = speech_extent(torch.as_tensor(wav), sr)
    offset = min(max(0.0, (start + end) / 2 - window / 2), max(0.0, seconds - window))
    return dict(item, offset=round(offset, 4), duration=round(min(window, seconds), 4))


def _init_checkpoint(recipe: KeywordRecipe, labels: list[str], train_items: list[dict], path: Path):
    """Write the new model's starting weights (the init spotter's layers and an output layer for
    ``labels``) to ``path``; returns its training config."""
    import torch

    from asr.checkpoint import (
        FORMAT,
        config_from_checkpoint,
        load_checkpoint,
        save_checkpoint,
    )
    from asr.config import to_dict
    from kws.detect import DEFAULT_MODEL
    from kws.model import CRNN, set_class_weights

    src = load_checkpoint(DEFAULT_MODEL if recipe.init == "default" else recipe.init)
    if src.get("family") != "crnn":
        raise UsageError(f"{recipe.init}: --init needs a keyword spotter (crnn) checkpoint, not {src.get('family')!r}")
    config = config_from_checkpoint(src)
    config.model.crnn.ctc_weight = 0.0  # the letter head is not trained here
    torch.manual_seed(recipe.seed)
    model = CRNN(config.model, len(labels))
    own = model.state_dict()
    kept = {k: v for k, v in src["model"].items() if k in own and own[k].shape == v.shape
            and not k.startswith(("output.", "class_weights"))}
    model.load_state_dict(kept, strict=False)
    # the output layer: rows of classes the init model has (_silence_, _unknown_, a keyword it knows) are
    # copied, a new phrase starts as the mean of its keyword rows, so that the model knows from step 0
    # what silence and other speech are
    with torch.no_grad():
        old_labels = list(src.get("labels") or [])
        w, b = src["model"].get("output.weight"), src["model"].get("output.bias")
        if w is not None and w.shape[1] == model.output.weight.shape[1] and len(old_labels) == w.shape[0]:
            known = [i for i, name in enumerate(old_labels) if name not in (SILENCE, UNKNOWN)] or list(range(len(old_labels)))
            for j, name in enumerate(labels):
                i = old_labels.index(name) if name in old_labels else None
                model.output.weight[j] = w[i] if i is not None else w[known].mean(0)
                model.output.bias[j] = b[i] if i is not None else b[known].mean()
    set_class_weights(model, train_items, labels)
    config.data.labels = list(labels)
    save_checkpoint({"format": FORMAT, "family": "crnn", "config": to_dict(config), "model": model.state_dict(),
                     "tokenizer": None, "labels": list(labels)}, path)
    return config


def _write(path: Path, items: list[dict]) -> Path:
    from asr.data.manifest import write_manifest

    # absolute audio paths: the items come from manifests anywhere (read relative to the working directory)
    return write_manifest(path, [dict(it, audio=str(Path(it["audio"]).resolve())) for it in items], relative=False)


def _train_round(recipe: KeywordRecipe, base, name: str, work: Path, train_manifest: Path, dev: Path, noise: Path,
                 init: Path | None, epochs: int, lr: float, minutes: float = 0.0) -> Path:
    import copy

    from asr.train import train

    out = work / name
    if (out / "best.pt").is_file() and (out / "done").is_file():
        return out / "best.pt"
    config = copy.deepcopy(base)
    d = config.data
    d.train, d.dev, d.noise_manifest = str(train_manifest), str(dev), str(noise)
    d.num_workers, d.max_shift_ms, d.shift_prob, d.batch_size = recipe.workers, 100.0, 0.8, 64
    d.sortagrad = False  # its shortest-first epoch would feed the classes one after another (the clips are all 1 s)
    config.init_from = str(init) if init else ""
    config.out_dir, config.epochs, config.threads = str(out), epochs, recipe.threads
    n_items = len(Path(train_manifest).read_text(encoding="utf-8").splitlines())
    steps = epochs * -(-n_items // d.batch_size)
    config.optim.lr, config.optim.warmup_steps = lr, max(1, min(100, steps // 10))  # a tenth of a short run
    config.max_minutes, config.seed = minutes, recipe.seed
    config.ckpt_every_steps, config.keep_checkpoints, config.max_steps = 0, 1, 0
    train(config, progress=recipe.progress)
    (out / "done").write_text("")
    return out / "best.pt"


def init_warning(phrases: Sequence[str], init: str) -> str | None:
    """Why starting ``phrases`` from ``init`` works against them, or None: the shipped spotter heard
    real recordings of :data:`SHIPPED_NEGATIVE_WORDS` as ``_unknown_``."""
    taught = [w for w in SHIPPED_NEGATIVE_WORDS if w in " ".join(phrases).lower().split()]
    if init != "default" or not taught:
        return None
    return (f"the shipped spotter was trained with real recordings of {', '.join(map(repr, taught))} as _unknown_ "
            "(running-speech negatives): starting from it works against them; pass --init with a spotter that "
            "never heard them")


def train_keyword(recipe: KeywordRecipe) -> dict:
    """Run the six stages (module docstring) and write ``recipe.out``; returns the report (also
    written beside the model as ``OUT.json``)."""
    from asr.checkpoint import export_checkpoint
    from asr.data.synthetic import run_jobs
    from asr.utils import atomic_open
    from kws.detect import Detector, load_detector
    from kws.model import without_letter_head
    from kws.speech import (
        calibrate_threshold,
        cut_windows,
        item_seconds,
        mine_hard_negatives,
        speech_items,
        transcript_keywords,
    )

    phrases = _check_phrases(recipe.phrases)
    _check_voices(recipe.voices, recipe.seed)
    if recipe.mine_rounds < 0:
        raise UsageError(f"mine_rounds (--mine-rounds) must be >= 0, got {recipe.mine_rounds}")
    out = Path(recipe.out)
    if out.suffix != ".pt":
        raise UsageError(f"{out}: the model is written as a .pt checkpoint (export it to ONNX with kws export)")
    warning = init_warning(phrases, recipe.init)
    if warning:
        log.warning("%s", warning)
    work = Path(recipe.work_dir) if recipe.work_dir else out.with_suffix(".work")
    sr = 16000
    labels = [SILENCE, UNKNOWN, *phrases]
    stages = _Stages(recipe.progress)
    report: dict = {"phrases": phrases, "labels": labels, "settings": asdict(recipe)}
    positives = recording_items(recipe.positives, phrases) if recipe.positives else []
    neg_items = speech_items(recipe.negatives) if recipe.negatives else []
    _prepare_work_dir(work, recipe)
    work = work.resolve()  # manifests hold absolute paths

    stages.start("synthesize", f"{', '.join(phrases)} with the synthetic talkers")
    jobs, synth, sentences, near = _synthesis_jobs(recipe, phrases, work / "audio", sr)
    run_jobs(jobs, recipe.workers, recipe.progress)
    report["confusables"] = near
    stages.done(f"{len(jobs)} files; near misses: " + "; ".join(f"{p}: {', '.join(n)}" for p, n in near.items()))

    stages.start("real audio", f"{len(neg_items)} negative recordings, {len(positives)} positive recordings")
    split_items: dict[str, list[dict]] = {"train": [], "dev": []}
    for path, label, split in synth:
        if label != "noise":
            split_items[split].append({"id": path.relative_to(work).as_posix(), "audio": str(path), "duration": 1.0,
                                       "label": label})
    noise = [{"id": p.name, "audio": str(p), "duration": 20.0} for p, label, _ in synth if label == "noise"]
    sentence_items = [{"id": p.relative_to(work).as_posix(), "audio": str(p), "text": t, "split": s}
                      for p, t, s in sentences]
    for split in ("train", "dev"):
        split_items[split] += cut_windows([it for it in sentence_items if it["split"] == split])
    words = sorted({w for p in phrases for w in p.split()})
    neg_items = [it for it in neg_items if not transcript_keywords(it, words)]
    rng = np.random.default_rng(recipe.seed)
    held = set(rng.permutation(len(neg_items))[: round(0.2 * len(neg_items))].tolist()) if len(neg_items) > 1 else set()
    neg_train = [it for i, it in enumerate(neg_items) if i not in held]
    calibration = [it for i, it in enumerate(neg_items) if i in held]
    windows = cut_windows(neg_train) if neg_train else []
    if len(windows) > recipe.max_negative_windows:
        windows = [windows[i] for i in sorted(rng.permutation(len(windows))[: recipe.max_negative_windows].tolist())]
    split_items["train"] += windows
    real_pos = [_window_around_speech(it, sr) for it in positives]
    for r in range(recipe.positive_repeat):
        split_items["train"] += [dict(it, id=f"{it['id']}#{r}") for it in real_pos]
    order = rng.permutation(len(split_items["train"]))  # classes mixed in the file too
    split_items["train"] = [split_items["train"][i] for i in order]
    train_manifest = _write(work / "train.jsonl", split_items["train"])
    dev_manifest = _write(work / "dev.jsonl", split_items["dev"])
    noise += [dict(it, id=f"noise-{i}", duration=item_seconds(it))
              for i, it in enumerate(speech_items(recipe.noise))] if recipe.noise else []
    noise_manifest = _write(work / "noise.jsonl", noise)
    _write(work / "calibration.jsonl", calibration)
    counts = {lab: sum(it["label"] == lab for it in split_items["train"]) for lab in labels}
    report["training_items"] = counts
    report["negative_windows"] = len(windows)
    stages.done(f"training items: {', '.join(f'{k} {v}' for k, v in counts.items())} "
                f"({len(windows)} windows of real negatives, {len(real_pos)} real positives x{recipe.positive_repeat}); "
                f"calibration: {len(calibration)} held-out recordings")

    stages.start("train", f"{recipe.epochs} epochs from {'the shipped spotter' if recipe.init == 'default' else recipe.init or 'scratch'}")
    init = work / "init.pt"
    if recipe.init:
        base = _init_checkpoint(recipe, labels, split_items["train"], init)
    else:
        from asr.checkpoint import config_from_checkpoint, load_checkpoint
        from kws.detect import DEFAULT_MODEL

        base = config_from_checkpoint(load_checkpoint(DEFAULT_MODEL))
        base.model.crnn.ctc_weight = 0.0
        base.data.labels = labels
        init = None
    round1 = _train_round(recipe, base, "round1", work, train_manifest, dev_manifest, noise_manifest,
                          init, recipe.epochs, recipe.lr, recipe.minutes * 2 / 3)
    stages.done(f"{round1}")

    final, mined_all, report["mined_windows"], report["mined_new"] = round1, {}, [], []
    mine_on = neg_train + [it for it in sentence_items if it["split"] == "train"]
    for r in range(recipe.mine_rounds if recipe.mine_epochs > 0 else 0):
        stages.start("mine", f"round {r + 1}'s detector at {recipe.mine_threshold:g} over the negative speech "
                             f"(mining round {r + 1} of {recipe.mine_rounds})")
        model, model_labels, cfg = load_detector(final, purpose="kws train-keyword")
        cfg.threshold = recipe.mine_threshold
        mined = mine_hard_negatives(Detector(model, model_labels, config=cfg), mine_on, recipe.mine_threshold,
                                    progress=recipe.progress)
        new = [it for it in mined if it["id"] not in mined_all]  # a window mined again is in the set already
        mined_all.update((it["id"], it) for it in new)
        mined4 = [dict(it, id=f"{it['id']}#{k}") for it in mined_all.values() for k in range(4)]
        mined_manifest = _write(work / f"mined{r + 1}.jsonl", mined4)
        train_next = _write(work / f"train_mined{r + 1}.jsonl", split_items["train"] + mined4)
        report["mined_windows"].append(len(mined))
        report["mined_new"].append(len(new))
        stages.done(f"{len(mined)} windows fired, {len(new)} new ({mined_manifest})")
        if not new:
            break
        stages.start("retrain", f"{recipe.mine_epochs} epochs from {final.parent.name} with the mined windows (4x)")
        final = _train_round(recipe, base, f"round{r + 2}", work, train_next, dev_manifest, noise_manifest, final,
                             recipe.mine_epochs, recipe.lr / 2, recipe.minutes / 3 / recipe.mine_rounds)
        stages.done(f"{final}")

    stages.start("calibrate and export", f"target {recipe.target_fa_h:g} false alarms per hour")
    model, model_labels, cfg = load_detector(final, purpose="kws train-keyword")
    cal = calibration or [it for it in sentence_items if it["split"] == "dev"]
    threshold, fa = calibrate_threshold(Detector(model, model_labels, config=cfg), cal, recipe.target_fa_h,
                                        recipe.min_threshold, progress=recipe.progress)
    export_checkpoint(final, out, {"detector": {"threshold": float(threshold)}}, transform=without_letter_head)
    report.update(threshold=threshold, calibration_fa_per_hour=round(fa, 2),
                  calibration="held-out negative recordings" if calibration else "synthetic dev sentences",
                  calibration_minutes=round(sum(item_seconds(it) for it in cal) / 60, 1), stage_seconds=stages.times,
                  seconds=round(time.monotonic() - stages.t0, 1), model=str(out))
    stages.done(f"threshold {threshold:.4f} ({fa:.1f} false alarms per hour on {report['calibration_minutes']} min of "
                f"{report['calibration']}) -> {out}")
    with atomic_open(out.with_suffix(".json")) as f:
        json.dump(report, f, indent=1)
    return report

