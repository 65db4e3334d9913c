"""The ``kws`` command. ``kws <subcommand> --help`` explains every flag.

Subcommands:
  detect FILE...                  keyword events in recordings of any length (default model built in)
  listen [--device N]             keyword events from the microphone as they happen (--input F: a file as if live)
  train --config F.yaml [k=v...]  train a CRNN keyword spotter (the toolkit's training loop)
  evaluate --model M --manifest M accuracy, per-class accuracy, confusion; FRR vs false alarms/hour
  prepare ROOT --out DIR          Speech Commands manifests (12- or 35-class protocol)
  split MANIFEST --out DIR        speaker-disjoint parts of a manifest (e.g. train/test)
  combine OUT IN[:REPEAT[:CLEAN]]... one manifest from several, repeating some
  make-stream --manifest M --out F.wav   a long recording of clips in noise, with keyword truth
  export CKPT OUT                 a checkpoint without its training state (for shipping a model), with a
                                  threshold calibrated to a target false alarms per hour (--target-fa-h);
                                  OUT.onnx: an ONNX model for `kws detect --backend onnx` (--int8 to quantize)
  cut IN... --out W.jsonl         running speech cut into 1-s _unknown_ windows (training negatives)
  mine --model M IN... --out H.jsonl   the windows the detector fires on in speech (hard negatives)
  curve MANIFEST=EVAL.json...     held-out accuracy against real training speakers: CSV, PNG, log-linear fit
  serve [--model M] [--port P]    keyword events for many streams over WebSocket (protocol: asr/serve/protocol.py)
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import sys
from pathlib import Path

from asr.audio import AudioError
from asr.errors import MissingFileError, UsageError, run_cli
from asr.utils import atomic_open

log = logging.getLogger("kws")


def _add_prepare(sub) -> None:
    from asr.cli import add_speech_commands_args

    p = sub.add_parser("prepare", help="manifests for a Speech Commands-layout corpus",
                       description="Same as `asr prepare speech-commands`: writes OUT/{train,valid,test}.jsonl "
                                   "(and OUT/noise_<split>.jsonl from _background_noise_).")
    add_speech_commands_args(p)


def _add_split(sub) -> None:
    p = sub.add_parser("split", help="speaker-disjoint parts of a manifest",
                       description="Split a manifest by its items' 'speaker' field so that no speaker is in two "
                                   "parts; writes OUT/<part>.jsonl for each part.")
    p.add_argument("manifest", type=Path, help="the manifest to split")
    p.add_argument("--out", type=Path, required=True, help="folder for the parts")
    p.add_argument("--parts", default="train=0.5,test=0.5",
                   help="part names with their share of the speakers (default train=0.5,test=0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the speaker order (default 0)")


def _add_combine(sub) -> None:
    p = sub.add_parser("combine", help="one manifest from several",
                       description="Concatenate manifests; IN:REPEAT lists that manifest's items REPEAT times "
                                   "(ids of the copies get #1, #2, ...), e.g. to weight scarce real clips; "
                                   "IN:REPEAT:CLEAN marks CLEAN of those copies \"augment\": false, so that "
                                   "training reads them as recorded (no noise, reverberation, speed or gain change; "
                                   "SpecAugment still applies).")
    p.add_argument("out", type=Path, help="the manifest to write")
    p.add_argument("inputs", nargs="+", metavar="IN[:REPEAT[:CLEAN]]",
                   help="input manifests, each optionally with :REPEAT and :CLEAN (copies without waveform augmentation)")
    p.add_argument("--labels", default=None,
                   help="comma-separated labels to keep (items without a label are kept too); e.g. _silence_ to "
                        "add real background clips to a noise manifest")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a keyword spotter from a YAML config",
                       description="Train with the toolkit's training loop (the same as `asr train`). The YAML maps "
                                   "onto asr.train.TrainConfig with model.family: crnn; the CRNN's sizes are under "
                                   "model.crnn (asr.models.config.CRNNConfig). key=value arguments override the file. "
                                   "A run whose out_dir holds last.pt resumes from it.")
    p.add_argument("--config", type=Path, required=True, help="YAML config (see recipes/speech_commands/conf)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, dotted keys for sections")


def _add_detector_flags(p) -> None:
    p.add_argument("--model", type=Path, default=None, help="a crnn checkpoint (default: the model shipped with the package)")
    p.add_argument("--keywords", default=None, help="comma-separated keywords to report (default: all the model knows)")
    p.add_argument("--threshold", type=float, default=None, help="smoothed posterior needed to fire (default: the one stored with the model, else 0.5)")
    p.add_argument("--hop", type=float, default=None, help="seconds between analysis windows (default 0.08)")
    p.add_argument("--smooth", type=int, default=None, help="windows averaged to smooth the posteriors (default 3)")
    p.add_argument("--patience", type=int, default=None, help="windows above the threshold before a detection counts (default 2)")
    p.add_argument("--refractory", type=float, default=None, help="seconds after a detection with no other (default 1.0)")
    p.add_argument("--trim-db", type=float, default=None,
                   help="an event spans the frames of its best window within this many dB of the loudest (default 15; "
                        "0 = the whole 1-s window)")
    p.add_argument("--trim-floor-db", type=float, default=None,
                   help="... and at least this many dB over the window's background, so that a noisy recording's "
                        "background is not counted as the word (default 8; 0 = off)")
    p.add_argument("--trim-gap", type=float, default=None,
                   help="the event is the run of such frames around the loudest one, quieter gaps up to this many "
                        "seconds bridged (the closure before a 'p'; default 0.1)")
    p.add_argument("--end-pad", type=float, default=None,
                   help="seconds of quiet noise read after the end of each file, so that a keyword in its last second "
                        "(a 1-s clip) is seen by several windows (default 0.5; not counted in the file's length)")
    p.add_argument("--isolation-db", type=float, default=None,
                   help="keep only keywords said on their own: drop an event when the loudest 50 ms of the half "
                        "second before or after the word (beyond 0.15 s) is within this many dB of the word's loudest "
                        "(default: the model's stored setting, else 0 = off)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")


def _add_backend_flags(p) -> None:
    p.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto",
                   help="onnx: ONNX Runtime and numpy, no PyTorch (about 3x faster, a fraction of the memory); torch: "
                        "the PyTorch model. auto (default): onnx when the model is a .onnx file or is the default "
                        "model (shipped with its ONNX export) and onnxruntime is installed, else torch. With "
                        "--backend onnx, --model M.pt uses the export M.onnx beside it")
    p.add_argument("--int8", action="store_true",
                   help="onnx backend: the int8-quantized export (<model>.int8.onnx; shipped for the default model): "
                        "faster still, scores within about 0.01 of float32")


def _add_format_flag(p) -> None:
    p.add_argument("--format", choices=("text", "jsonl", "json", "csv"), default="text",
                   help="text (tab-separated: file, keyword, start, end, score; default), jsonl/json (one JSON "
                        "object per line) or csv")


def _add_detect(sub) -> None:
    p = sub.add_parser("detect", help="find keywords in recordings",
                       description="Stream each file in blocks (any length, any soundfile format and sample rate), "
                                   "slide the model over it and print one event per detection: file, keyword, start "
                                   "and end in seconds, score. Files that cannot be read are reported on stderr and "
                                   "the others still processed; the exit status is 1 if any file failed.")
    p.add_argument("files", nargs="+", type=Path, help="audio files")
    _add_detector_flags(p)
    _add_format_flag(p)
    _add_backend_flags(p)
    p.add_argument("--block-seconds", type=float, default=30.0, help="seconds read from a file at a time (default 30)")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy and false rejection vs false alarms per hour",
                       description="Classify the manifest's clips: accuracy, per-class accuracy, confusion matrix. "
                                   "With --negative: the detector's false alarms per hour on those keyword-free "
                                   "recordings against the false rejection rate on the manifest's keyword clips, over "
                                   "thresholds; prints the FRR at 0.5 false alarms per hour and saves a DET plot. "
                                   "With --stream and --truth: the share of keywords found within --tolerance seconds (at the "
                                   "threshold of 0.5 false alarms per hour when --negative is given and --threshold "
                                   "is not). With --recordings (no --manifest needed): recall and false accepts on "
                                   "recordings of one word or phrase each, e.g. of a kws train-keyword model.")
    p.add_argument("--manifest", type=Path, default=None, help="clips with a 'label' field")
    p.add_argument("--recordings", type=Path, nargs="+", default=[], metavar="IN",
                   help="recordings that each hold one word or phrase: folders named after it (e.g. wakewords/alexa), "
                        "audio files (their folder's name) or manifests with a label; prints the share of recordings "
                        "of each keyword it detects and the share of other recordings it fires on (false accepts)")
    _add_detector_flags(p)
    p.add_argument("--negative", type=Path, nargs="*", default=[], help="long recordings without any keyword")
    p.add_argument("--speech", type=Path, nargs="*", default=[],
                   help="transcribed running speech (manifests with 'text'): a detection of a keyword that is not a "
                        "word of the utterance's transcript is a false alarm; prints false alarms per hour (total and "
                        "per keyword) and the FRR at 0.5 and 2 false alarms per hour of running speech")
    p.add_argument("--det-plot", type=Path, default=None, help="DET curve PNG (default: det.png beside --json, or none)")
    p.add_argument("--stream", type=Path, default=None, help="a long recording with keywords (see make-stream)")
    p.add_argument("--truth", type=Path, default=None, help="the keyword times of --stream (JSON lines)")
    p.add_argument("--tolerance", type=float, default=0.5, help="seconds a detection's start/end may be off (default 0.5)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    p.add_argument("--batch-size", type=int, default=64, help="clips per batch (default 64)")


def _add_make_stream(sub) -> None:
    p = sub.add_parser("make-stream", help="a long test recording built from clips",
                       description="Join the manifest's clips with gaps of background noise into one WAV file (written "
                                   "block by block) and write where each keyword is (JSON lines).")
    p.add_argument("--manifest", type=Path, required=True, help="clips to use")
    p.add_argument("--out", type=Path, required=True, help="the WAV file to write")
    p.add_argument("--truth", type=Path, default=None, help="keyword times (default: OUT with .truth.jsonl)")
    p.add_argument("--labels", default=None,
                   help="comma-separated labels of the clips to use (default all); e.g. _unknown_,_silence_ for a "
                        "keyword-free recording")
    p.add_argument("--keywords", default="yes,no,up,down,left,right,on,off,stop,go",
                   help="labels written to the truth file (default the ten Speech Commands keywords)")
    p.add_argument("--noise-manifest", type=Path, default=None, help="background noise recordings (default quiet white noise)")
    p.add_argument("--minutes", type=float, default=None, help="cycle through the clips until this long (default: each once)")
    p.add_argument("--gap", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"), help="seconds between clips")
    p.add_argument("--snr", type=float, nargs=2, default=(10.0, 20.0), metavar=("MIN", "MAX"), help="speech-to-noise dB")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="strip the training state from a checkpoint, or export it to ONNX",
                       description="Write a copy of CKPT with only the weights, config and labels (no optimizer or "
                                   "RNG state, no training-only letter CTC head): what kws/pretrained/crnn.pt holds. "
                                   "When OUT ends in .onnx, write an ONNX model instead (the streaming detector's "
                                   "model part with its cache as inputs/outputs, labels, features and detector "
                                   "settings as metadata) for `kws detect --backend onnx`, which needs no PyTorch; "
                                   "the export is checked against the PyTorch model on 20 s of noise.")
    p.add_argument("checkpoint", type=Path, help="a checkpoint written by `kws train` (best.pt, last.pt) or exported")
    p.add_argument("out", type=Path, help="the file to write (.pt or .onnx)")
    p.add_argument("--int8", action="store_true",
                   help="with OUT.onnx: quantize the weights of the MatMuls (convolution projection, recurrent "
                        "layers, dense layers) to int8 (ONNX Runtime dynamic quantization)")
    p.add_argument("--threshold", type=float, default=None,
                   help="detection threshold stored with the model (used by detect/evaluate when --threshold is not "
                        "given), e.g. the one `kws evaluate` reports at 0.5 false alarms per hour")
    p.add_argument("--threshold-from", type=Path, default=None,
                   help="take the threshold at 0.5 false alarms per hour from a `kws evaluate --json` file")
    p.add_argument("--target-fa-h", type=float, default=None,
                   help="calibrate: store the lowest threshold whose false alarms per hour on --speech and --negative "
                        "(together) are at most this")
    p.add_argument("--speech", type=Path, nargs="*", default=[],
                   help="transcribed running speech for --target-fa-h (manifests; keywords of a transcript are not "
                        "false alarms)")
    p.add_argument("--negative", type=Path, nargs="*", default=[],
                   help="keyword-free recordings for --target-fa-h (audio files or manifests)")
    p.add_argument("--min-threshold", type=float, default=0.5,
                   help="--target-fa-h never stores a threshold below this (default 0.5)")
    for flag, kind, what in (("--smooth", int, "windows averaged"), ("--patience", int, "windows above the threshold"),
                             ("--isolation-db", float, "the isolation rule (see kws detect --help)")):
        p.add_argument(flag, type=kind, default=None, help=f"store this setting of {what} with the model")


def _add_cut(sub) -> None:
    p = sub.add_parser("cut", help="running speech cut into keyword-free training windows",
                       description="Cut recordings (audio files or manifests of long utterances) into windows as long "
                                   "as a keyword clip, written as manifest items with offset/duration into the source "
                                   "files (no audio is copied) and the label _unknown_: running speech for a keyword "
                                   "spotter to learn to ignore.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="audio files or .jsonl manifests")
    p.add_argument("--out", type=Path, required=True, help="the manifest to write")
    p.add_argument("--window", type=float, default=1.0, help="seconds per window (default 1.0, a Speech Commands clip)")
    p.add_argument("--hop", type=float, default=0.5, help="seconds between window starts (default 0.5)")
    p.add_argument("--label", default="_unknown_", help="label of the windows (default _unknown_)")
    p.add_argument("--skip-keywords", default=None,
                   help="comma-separated words: utterances whose transcript holds one of them give no windows")


def _add_mine(sub) -> None:
    p = sub.add_parser("mine", help="hard negatives: the windows the detector fires on in speech",
                       description="Run the detector at a low threshold over keyword-free audio, or over transcribed "
                                   "speech (a hit on a keyword of the utterance's transcript is skipped), and write the "
                                   "best window of every event as an _unknown_ manifest item (offset/duration into the "
                                   "source file, with the keyword and score that fired). Add them to the training "
                                   "data and train again.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="audio files or .jsonl manifests")
    p.add_argument("--out", type=Path, required=True, help="the manifest of mined windows to write")
    _add_detector_flags(p)
    p.set_defaults(mine_threshold=0.3)
    p.epilog = "--threshold defaults to 0.3 here: mining wants the near misses too."


def _add_train_keyword(sub) -> None:
    from asr.data.tts import ESPEAK_VOICES, FLITE_VOICES
    from kws.custom import KeywordRecipe

    d = KeywordRecipe(phrases=[], out="")
    p = sub.add_parser("train-keyword", help="a spotter for your own phrases, trained from text on this machine",
                       description="Train a keyword spotter for one or more phrases from their text alone: synthesize "
                                   "the phrases with every espeak-ng/flite talker of the toolkit, and negatives (near "
                                   "misses derived from the phrase's phonemes, other words, sentences, noise); train "
                                   "the CRNN from the shipped spotter's layers; mine the windows it still fires on in "
                                   "the negative speech and train again; calibrate the threshold to --target-fa-h on "
                                   "held-out negative speech. The model works with kws detect/listen/evaluate --model. "
                                   "Work files go to --work-dir (reused by a second run: delete it to start over).",
                       epilog="example: kws train-keyword computer --out computer.pt "
                              "--negative meetings/*.wav data/read_speech.jsonl")
    p.add_argument("phrases", nargs="+", metavar="PHRASE", help="the phrase(s) to spot, e.g. \"hey computer\" "
                   "(one class each; letters and spaces, digits spelled out; about a second of speech at most)")
    p.add_argument("--out", type=Path, required=True, help="the model to write (.pt; a report goes to OUT.json)")
    p.add_argument("--negative", nargs="+", default=[], metavar="IN",
                   help="your speech without the phrases (audio files or .jsonl manifests; items whose transcript "
                        "holds a word of a phrase are skipped): 80%% of the recordings train, 20%% calibrate")
    p.add_argument("--positive", nargs="+", default=[], metavar="IN",
                   help="real recordings of a phrase, one saying each: folders named after the phrase, audio files "
                        "or manifests with a label (a few help the model to real voices)")
    p.add_argument("--noise", nargs="+", default=[], metavar="IN",
                   help="noise recordings (audio files or manifests) the training adds to clips at 0-20 dB, besides "
                        "the synthetic noise it makes: real rooms help the model to real recordings")
    p.add_argument("--minutes", type=float, default=d.minutes,
                   help="wall-clock cap of the training rounds (default: none, run the epochs)")
    p.add_argument("--target-fa-h", type=float, default=d.target_fa_h,
                   help=f"false alarms per hour on the held-out negative speech at the stored threshold (default {d.target_fa_h:g})")
    p.add_argument("--min-threshold", type=float, default=d.min_threshold,
                   help=f"never store a threshold below this (default {d.min_threshold:g})")
    p.add_argument("--positives", type=int, default=d.positives_per_phrase, dest="positives_per_phrase",
                   help=f"synthesized clips per phrase (default {d.positives_per_phrase})")
    p.add_argument("--voices", nargs="+", default=[], metavar="VOICE",
                   help=f"say the phrase only with these synthesizer voices (espeak-ng: {', '.join(ESPEAK_VOICES)}; "
                        f"flite: {', '.join(FLITE_VOICES)}; one flite voice is kept for testing), e.g. the accent of "
                        "your users; the negatives keep every voice (default: all)")
    p.add_argument("--confusable-clips", type=int, default=d.confusable_clips,
                   help=f"synthesized clips per near miss (default {d.confusable_clips})")
    p.add_argument("--words", type=int, default=d.words, help=f"clips of other words (default {d.words})")
    p.add_argument("--sentences", type=int, default=d.sentences, help=f"synthesized sentences (default {d.sentences})")
    p.add_argument("--silence", type=int, default=d.silence, help=f"noise clips (default {d.silence})")
    p.add_argument("--max-negative-windows", type=int, default=d.max_negative_windows,
                   help=f"one-second training windows drawn from --negative (default {d.max_negative_windows})")
    p.add_argument("--positive-repeat", type=int, default=d.positive_repeat,
                   help=f"copies of each --positive recording in training (default {d.positive_repeat})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs of round 1 (default {d.epochs})")
    p.add_argument("--mine-epochs", type=int, default=d.mine_epochs,
                   help=f"epochs of each round after mining (default {d.mine_epochs}; 0 = no mining, round 1 is the model)")
    p.add_argument("--mine-rounds", type=int, default=d.mine_rounds,
                   help=f"mine-and-retrain rounds after round 1, each mining with the model before it (default {d.mine_rounds})")
    p.add_argument("--lr", type=float, default=d.lr,
                   help=f"peak learning rate of the first round (default {d.lr:g}; the mining rounds use half)")
    p.add_argument("--mine-threshold", type=float, default=d.mine_threshold,
                   help=f"threshold at which windows count as mined (default {d.mine_threshold:g})")
    p.add_argument("--init", default=d.init,
                   help="a crnn checkpoint whose layers start training; 'default' = the shipped spotter, '' = from "
                        "scratch (the shipped spotter heard real 'alexa' and 'computer' recordings as other speech: "
                        "for those words start from a spotter that did not)")
    p.add_argument("--work-dir", type=Path, default=None, help="work files (default: OUT without .pt + .work)")
    p.add_argument("--seed", type=int, default=d.seed, help="talkers, draws and training seed (default 0)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (default 2)")
    p.add_argument("--workers", type=int, default=d.workers, help="synthesis and data-loading processes (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage lines")


def _add_curve(sub) -> None:
    p = sub.add_parser("curve", help="accuracy against the number of real training speakers",
                       description="For each run, MANIFEST is the real clips it was trained on (an empty file for none) "
                                   "and EVAL.json what `kws evaluate --json` wrote for it on held-out speakers. Writes "
                                   "OUT.csv (speakers, clips, accuracy and its 95% speaker-bootstrap interval) and "
                                   "OUT.png, fits accuracy = a + b*log2(speakers) over the runs with speakers, and "
                                   "prints how many speakers the fit needs for --target.")
    p.add_argument("runs", nargs="+", metavar="MANIFEST=EVAL.json", help="one pair per training run")
    p.add_argument("--out", type=Path, required=True, help="output path without extension (OUT.csv, OUT.png)")
    p.add_argument("--target", type=float, default=None, help="an accuracy to extrapolate to, e.g. 0.9")


def _add_listen(sub) -> None:
    from asr.cli import add_source_args

    p = sub.add_parser("listen", help="keyword events from the microphone, as they happen",
                       description="Read the default input device (or --device) through PortAudio and print one "
                                   "line per detection as soon as the detector completes it, with start and end in "
                                   "seconds since listening began. Stop with Ctrl-C. --input FILE plays a file as if "
                                   "it were the microphone (at --speed), which prints the events `kws detect FILE` "
                                   "prints.")
    _add_detector_flags(p)
    _add_backend_flags(p)
    _add_format_flag(p)
    add_source_args(p, "a model or a setting")
    p.add_argument("--block-ms", type=float, default=100.0,
                   help="milliseconds of audio read at a time (default 100)")


# --- kws serve (the WebSocket server: asr/serve/server.py with the engine of kws/serve.py) ---
def _add_serve(sub) -> None:
    from asr.cli import add_serve_args

    p = sub.add_parser("serve", help="keyword events for many streams over WebSocket",
                       description="Serve the keyword spotter over WebSocket: a client sends a JSON config (optionally "
                                   "its keywords and threshold), audio chunks and end-of-stream, and gets one message "
                                   "per detection as it happens, then a final one (the protocol: "
                                   "asr/serve/protocol.py; a client: asr.client.stream_file). The torch backend "
                                   "classifies the windows of all concurrent streams in one batch; the onnx backend "
                                   "runs them one by one. Prints the URL it "
                                   "listens on; stops on Ctrl-C or SIGTERM and prints a summary.")
    p.add_argument("--model", type=Path, default=None,
                   help="a crnn checkpoint (.pt) or its ONNX export (.onnx) (default: the model shipped with the package)")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                   help="torch: the windows of all streams classified in one batch; onnx: ONNX Runtime, stream by "
                        "stream (about twice the streams on 2 cores); auto (default): onnx for a .onnx model or the "
                        "shipped model when onnxruntime is installed, else torch")
    p.add_argument("--keywords", default=None,
                   help="comma-separated keywords of a stream whose config names none (default: all the model knows)")
    p.add_argument("--threshold", type=float, default=None,
                   help="threshold of a stream whose config sets none (default: the one stored with the model)")
    add_serve_args(p, "KWS_SERVE_TOKEN")


def run_serve(args) -> int:
    from asr.cli import serve_limits, serve_token
    from asr.serve.server import run_server
    from kws.serve import load_kws_engine

    limits = serve_limits(args)
    keywords = [k.strip() for k in args.keywords.split(",") if k.strip()] if args.keywords else None
    engine = load_kws_engine(args.model, args.backend, keywords, args.threads, threshold=args.threshold)
    summary = run_server(engine, args.host, args.port, limits, serve_token(args, "KWS_SERVE_TOKEN"),
                         on_listening=lambda url: print(f"listening on {url}", flush=True))
    for key, value in summary.items():
        print(f"{key}\t{value}", flush=True)
    return 0
# --- end of kws serve ---


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kws", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_detect, _add_listen, _add_train, _add_train_keyword, _add_evaluate, _add_prepare, _add_split, _add_combine, _add_make_stream, _add_curve,
                _add_export, _add_cut, _add_mine, _add_serve):
        add(sub)
    return parser


def _detector(args, purpose: str = "kws detect", batch_windows: int = 256):
    import torch

    from kws.detect import Detector, load_detector

    torch.set_num_threads(max(1, args.threads))
    if args.model is not None and args.model.suffix == ".onnx":
        raise UsageError(f"{args.model}: {purpose} needs the PyTorch checkpoint (.pt), not its ONNX export")
    model, labels, cfg = load_detector(args.model, purpose=purpose)
    _apply_flags(args, cfg)
    keywords = [k.strip() for k in args.keywords.split(",") if k.strip()] if args.keywords else None
    return Detector(model, labels, keywords, cfg, batch_windows=batch_windows)


def _onnx_detector(args, batch_windows: int = 256):
    """The ONNX Runtime detector of ``--backend``/``--model``/``--int8``, or None for the torch one.

    ``batch_windows``: windows classified together; live audio wants 1 (each window as soon as it is ready)."""
    default = Path(__file__).resolve().parent / "pretrained" / "crnn.pt"
    model = args.model or default
    if args.backend == "torch":
        if model.suffix == ".onnx":
            raise UsageError(f"{model}: an ONNX model needs --backend onnx (or auto)")
        return None
    onnx_path = model if model.suffix == ".onnx" else model.with_suffix(".onnx")
    if args.int8 and not onnx_path.name.endswith(".int8.onnx"):
        onnx_path = onnx_path.with_name(onnx_path.stem + ".int8.onnx")
    if args.backend == "auto":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            if model.suffix == ".onnx":
                raise UsageError(f"{model}: the ONNX backend needs onnxruntime (pip install onnxruntime)") from None
            return None
        if model.suffix != ".onnx" and (args.model is not None or not onnx_path.is_file()):
            return None
    elif not onnx_path.is_file():
        raise MissingFileError(f"{onnx_path}: no ONNX export of {model} (write one with `kws export {model} "
                               f"{onnx_path}{' --int8' if args.int8 else ''}`)")
    from kws.onnx_detect import OnnxDetector

    detector = OnnxDetector(onnx_path, threads=args.threads)
    _apply_flags(args, detector.cfg)
    keywords = [k.strip() for k in args.keywords.split(",") if k.strip()] if args.keywords else None
    return OnnxDetector(onnx_path, keywords, config=detector.cfg, threads=args.threads, batch_windows=batch_windows)


def _apply_flags(args, cfg) -> None:
    for key in ("threshold", "hop", "smooth", "patience", "refractory", "trim_db", "trim_floor_db", "trim_gap", "end_pad",
                "isolation_db"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))


def _event_printer(fmt: str):
    """A function that prints one event in ``fmt`` (text, jsonl/json or csv; csv starts with its header)."""
    if fmt in ("jsonl", "json"):
        return lambda ev: print(json.dumps(ev.to_dict()), flush=True)
    if fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["file", "keyword", "start", "end", "score"])

        def write(ev) -> None:
            writer.writerow([ev.file, ev.keyword, f"{ev.start:.2f}", f"{ev.end:.2f}", f"{ev.score:.3f}"])
            sys.stdout.flush()
        return write
    return lambda ev: print(f"{ev.file}\t{ev.keyword}\t{ev.start:.2f}\t{ev.end:.2f}\t{ev.score:.3f}", flush=True)


def run_listen(args) -> int:
    from asr.serve.sources import list_devices, open_source
    from kws.listen import listen

    if args.list_devices:
        print(list_devices())
        return 0
    detector = _onnx_detector(args, batch_windows=1) or _detector(args, "kws listen", batch_windows=1)
    source = open_source(args.input, args.device, detector.sample_rate, args.block_ms, args.speed)
    if args.input is None:
        print(f"kws listen: listening to {source.name} for {', '.join(detector.keywords)} (Ctrl-C to stop)",
              file=sys.stderr, flush=True)
    summary = listen(detector, source, _event_printer(args.format))
    print(f"kws listen: {summary.events} events in {summary.seconds:.1f} s of audio"
          f"{' (stopped by Ctrl-C)' if summary.interrupted else ''}", file=sys.stderr)
    return 0


def run_detect(args) -> int:
    from kws.events import events_in_file as detect_file

    detector = _onnx_detector(args) or _detector(args)
    failed = 0
    emit = _event_printer(args.format)
    for path in args.files:
        try:
            for ev in detect_file(detector, path, args.block_seconds):
                emit(ev)
        except AudioError as e:
            print(f"kws detect: error: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def run_evaluate(args) -> int:
    from asr.data.manifest import read_manifest
    from kws.evaluate import evaluate_detector, format_speech_false_alarms, recordings_report
    from kws.speech import labelled_recordings, speech_false_alarms, speech_items

    if args.manifest is None and not args.recordings:
        raise UsageError("give --manifest (labelled clips) and/or --recordings")
    if args.manifest is None and (args.negative or args.stream):
        raise UsageError("--negative and --stream measure against the clips of --manifest: give it too")
    detector = _detector(args, purpose="kws evaluate")
    speech = speech_items(args.speech) if args.speech else ()
    recordings = labelled_recordings(args.recordings) if args.recordings else ()
    out: dict = {}
    if recordings:
        rec = recordings_report(detector, recordings)
        print(rec.format())
        out["recordings"] = rec.to_json()
    if args.manifest is None:
        if speech:
            out["speech"] = speech_false_alarms(detector, speech)
            print(format_speech_false_alarms(out["speech"]))
        if args.json:
            with atomic_open(args.json, "w") as f:
                json.dump(out, f, indent=1)
        return 0
    report = evaluate_detector(detector, read_manifest(args.manifest, check_audio=True), args.negative, args.stream, args.truth,
                               args.tolerance, args.batch_size, use_det_threshold=args.threshold is None, speech=speech)
    print(report.format())
    if report.det is not None or report.speech_det is not None:
        plot = args.det_plot or (args.json.with_suffix(".det.png") if args.json else None)
        if plot:
            report.save_plot(plot)
            print(f"DET curve: {plot}")
    if args.json:
        with atomic_open(args.json, "w") as f:
            json.dump({**report.to_json(), **out}, f, indent=1)
    return 0


def run_prepare(args) -> int:
    from asr.data.speech_commands import prepare_speech_commands

    out = prepare_speech_commands(args.root, args.out, protocol=args.protocol, silence_fraction=args.silence_fraction,
                                  unknown_fraction=args.unknown_fraction, seed=args.seed)
    for split, path in out.items():
        print(f"{split}\t{path}")
    return 0


def run_split(args) -> int:
    from asr.data.manifest import read_manifest, write_manifest
    from asr.constants import SILENCE
    from kws.curve import count_speakers
    from kws.data import split_by_speaker

    try:
        parts = {k.strip(): float(v) for k, v in (p.split("=") for p in args.parts.split(","))}
    except ValueError:
        raise UsageError(f"--parts: expected name=fraction,..., got {args.parts!r}") from None
    for name, items in split_by_speaker(read_manifest(args.manifest), parts, args.seed).items():
        path = write_manifest(args.out / f"{name}.jsonl", items)
        silence = sum(it.get("label") == SILENCE for it in items)
        print(f"{name}\t{path}\t{len(items)} clips\t{count_speakers(items)} speakers"
              + (f" (+ {silence} _silence_ clips, each split on its own)" if silence else ""))
    return 0


def run_combine(args) -> int:
    from kws.data import combine_manifests

    sources = []
    for spec in args.inputs:
        m = re.fullmatch(r"(.+?)(?::(\d+)(?::(\d+))?)?", spec)
        sources.append((Path(m[1]), int(m[2] or 1), int(m[3] or 0)))
    labels = [l.strip() for l in args.labels.split(",")] if args.labels else None
    out, n = combine_manifests(args.out, sources, labels)
    print(f"{out}\t{n} items")
    return 0


def run_curve(args) -> int:
    from kws.curve import speaker_curve

    runs = []
    for spec in args.runs:
        manifest, sep, result = spec.partition("=")
        if not sep or not manifest or not result:
            raise UsageError(f"expected MANIFEST=EVAL.json, got {spec!r}")
        runs.append((manifest, result))
    report = speaker_curve(runs, args.target)
    print(report.format())
    table, plot = report.save(args.out)
    print(f"{table}\n{plot}")
    return 0


def run_make_stream(args) -> int:
    from asr.audio import read_audio
    from asr.data.manifest import read_manifest
    from kws.stream import build_stream

    items = read_manifest(args.manifest)
    if args.labels:
        wanted = {l.strip() for l in args.labels.split(",")}
        items = [it for it in items if it.get("label") in wanted]
    noises = []
    if args.noise_manifest:
        noises = [read_audio(it["audio"], 16000)[0] for it in read_manifest(args.noise_manifest)]
    truth = build_stream(items, args.out, [k.strip() for k in args.keywords.split(",")], noises, args.minutes,
                         tuple(args.gap), tuple(args.snr), seed=args.seed)
    truth_path = args.truth or args.out.with_suffix(".truth.jsonl")
    with atomic_open(truth_path, "w") as f:
        for t in truth:
            f.write(json.dumps(t) + "\n")
    print(f"{args.out}\t{len(truth)} keywords\t{truth_path}")
    return 0


def run_train(args) -> int:
    """`asr train` itself (same config, same loop): the crnn family is one of its families."""
    from asr.cli import run_train as asr_train

    return asr_train(args)


def _threshold_from(path: Path) -> float:
    try:
        threshold = json.loads(path.read_text(encoding="utf-8")).get("threshold_at_0_5_fa_per_hour")
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror or e})") from None
    except (ValueError, AttributeError) as e:
        raise UsageError(f"{path}: not a `kws evaluate --json` file ({type(e).__name__}: {e})") from None
    if not isinstance(threshold, (int, float)) or threshold != threshold:
        raise UsageError(f"{path}: no threshold at 0.5 false alarms per hour (run evaluate with --negative)")
    return float(threshold)


def run_export(args) -> int:
    from asr.checkpoint import export_checkpoint
    from kws.detect import Detector, load_detector
    from kws.model import without_letter_head

    model, labels, cfg = load_detector(args.checkpoint, purpose="kws export")  # a keyword spotter, before anything is written
    settings: dict = {}
    for key in ("smooth", "patience", "isolation_db"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
            setattr(cfg, key, getattr(args, key))
    threshold = _threshold_from(args.threshold_from) if args.threshold_from is not None else args.threshold
    if args.target_fa_h is not None:
        if threshold is not None:
            raise UsageError("give one of --threshold, --threshold-from and --target-fa-h")
        if not args.speech and not args.negative:
            raise UsageError("--target-fa-h needs --speech and/or --negative audio to count false alarms on")
        from kws.speech import calibrate_threshold, speech_items

        threshold, fa = calibrate_threshold(Detector(model, labels, config=cfg), speech_items([*args.speech, *args.negative]),
                                            args.target_fa_h, args.min_threshold)
        print(f"threshold {threshold:.4f}: {fa:.2f} false alarms per hour on the calibration audio "
              f"(target {args.target_fa_h:g})")
    if threshold is not None:
        settings["threshold"] = float(threshold)
    if args.out.suffix == ".onnx":
        return _export_onnx(args, Detector(model, labels, config=cfg, **settings))
    if args.int8:
        raise UsageError("--int8 quantizes ONNX exports: give OUT.onnx")
    extra = {"detector": settings} if settings else None
    size = export_checkpoint(args.checkpoint, args.out, extra, transform=without_letter_head)
    model, labels, _ = load_detector(args.out, purpose="kws export")
    print(f"{args.out}\t{size / 1024:.0f} KiB\t{len(labels)} classes")
    return 0


def _export_onnx(args, detector) -> int:
    import numpy as np

    from kws.detect import Detector
    from kws.onnx_detect import OnnxDetector
    from kws.onnx_export import export_onnx

    export_onnx(detector, args.out, int8=args.int8)
    # check: the exported model against the PyTorch one, window by window, on 20 s of noise with a tone
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(20 * detector.sample_rate) * 0.05).astype(np.float32)
    x[64000:80000] += 0.3 * np.sin(np.arange(16000) * 0.2).astype(np.float32)
    ref = Detector(detector.model, detector.labels, config=detector.cfg, smooth=1).scores(x, final=True)[1]
    got = OnnxDetector(args.out, detector.keywords, config=detector.cfg, smooth=1).scores(x, final=True)[1]
    diff = float(np.abs(ref - got).max()) if ref.shape == got.shape else float("inf")
    size = args.out.stat().st_size
    print(f"{args.out}\t{size / 1024:.0f} KiB\t{len(detector.labels)} classes\t{'int8' if args.int8 else 'float32'}\t"
          f"max |onnx - torch| posterior {diff:.2g} over {len(ref)} windows")
    return 0


def run_cut(args) -> int:
    from asr.data.manifest import write_manifest
    from kws.speech import cut_windows, speech_items

    skip = [w.strip().lower() for w in args.skip_keywords.split(",") if w.strip()] if args.skip_keywords else ()
    items = speech_items(args.inputs)
    windows = cut_windows(items, args.window, args.hop, args.label, skip)
    write_manifest(args.out, windows)
    print(f"{args.out}\t{len(windows)} windows\tfrom {len(items)} recordings")
    return 0


def run_train_keyword(args) -> int:
    from kws.custom import KeywordRecipe, train_keyword

    fields = {k: getattr(args, k) for k in ("voices", "minutes", "target_fa_h", "min_threshold", "positives_per_phrase",
                                            "confusable_clips", "words", "sentences", "silence", "max_negative_windows",
                                            "positive_repeat", "epochs", "mine_epochs", "mine_rounds", "lr", "mine_threshold", "init", "seed",
                                            "threads", "workers")}
    report = train_keyword(KeywordRecipe(phrases=args.phrases, out=str(args.out), negatives=[str(p) for p in args.negative],
                                         positives=[str(p) for p in args.positive], progress=not args.quiet,
                                         noise=[str(p) for p in args.noise],
                                         work_dir=str(args.work_dir or ""), **fields))
    print(f"{report['model']}\t{', '.join(report['phrases'])}\tthreshold {report['threshold']:.4f}\t"
          f"{report['seconds'] / 60:.1f} min")
    return 0


def run_mine(args) -> int:
    from asr.data.manifest import write_manifest
    from kws.speech import mine_hard_negatives, speech_items

    if args.threshold is None:
        args.threshold = args.mine_threshold
    detector = _detector(args, purpose="kws mine")
    items = speech_items(args.inputs)
    mined = mine_hard_negatives(detector, items, detector.cfg.threshold)
    write_manifest(args.out, mined)
    per: dict[str, int] = {}
    for it in mined:
        per[it["keyword"]] = per.get(it["keyword"], 0) + 1
    print(f"{args.out}\t{len(mined)} windows at threshold {detector.cfg.threshold:g}\t"
          + " ".join(f"{k}={n}" for k, n in sorted(per.items(), key=lambda kv: -kv[1])))
    return 0


COMMANDS = {"detect": run_detect, "listen": run_listen, "train": run_train, "evaluate": run_evaluate, "prepare": run_prepare,
            "split": run_split, "combine": run_combine, "make-stream": run_make_stream, "curve": run_curve,
            "export": run_export, "cut": run_cut, "mine": run_mine, "train-keyword": run_train_keyword,
            "serve": run_serve}


def main(argv: list[str] | None = None) -> int:
    return run_cli("kws", build_parser(), COMMANDS, argv)
