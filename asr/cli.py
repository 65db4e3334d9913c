"""The ``asr`` command. ``asr <subcommand> --help`` explains every flag.

Subcommands available:
  prepare librispeech ROOT --out DIR        manifests from the LibriSpeech layout
  prepare speech-commands ROOT --out DIR    manifests from the Speech Commands layout
  prepare synthetic --out DIR               synthesize the offline default corpora (espeak-ng, flite)
  download librispeech|speech-commands      fetch a public corpus (needs internet)
  train --config FILE.yaml [key=value ...]  train a model (CTC, RNN-T or attention)
  transcribe --model CKPT FILE ...          print one transcript per audio file (--format json|srt|...: word times)
  evaluate --model CKPT --manifest M.jsonl  WER/CER and per-utterance alignments
  lm --manifest M.jsonl --out LM.arpa       build a word n-gram LM for beam search
  select --model CKPT --pool P.jsonl --budget N[h] --strategy S --out SEL.jsonl   active-learning selection
  export CKPT OUT_DIR [--int8]              a streaming CTC/transducer model as ONNX (no torch needed to run it)
  listen --model CKPT [--device N]          live transcripts from the microphone (--input F: a file as if live)
  serve --model CKPT [--port P]             streaming recognition over WebSocket (client: transcribe --server URL)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from asr.audio import AudioError
from asr.errors import MissingFileError, UsageError, run_cli

log = logging.getLogger("asr")
TRANSCRIBE_FORMATS = ("text", "json", "jsonl", "srt", "vtt")  # == asr.decode.timestamps.FORMATS (not imported: fast --help)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="write JSON-lines manifests for a corpus",
                       description="Write JSON-lines manifests ({id, audio, duration, text|label}) for a corpus.")
    corp = p.add_subparsers(dest="corpus", required=True, metavar="CORPUS")

    ls = corp.add_parser("librispeech", help="the LibriSpeech layout: <subset>/<spk>/<chapter>/*.flac + trans.txt",
                         description="Writes OUT/<subset>.jsonl for each subset found under ROOT.")
    ls.add_argument("root", type=Path, help="the LibriSpeech folder (or its parent)")
    ls.add_argument("--out", type=Path, required=True, help="folder for the manifests")
    ls.add_argument("--subsets", nargs="+", default=None, help="only these subsets (default: every subset found)")

    sc = corp.add_parser("speech-commands", help="the Speech Commands layout: <word>/<speaker>_nohash_<n>.wav",
                         description="Writes OUT/{train,valid,test}.jsonl. Splits follow validation_list.txt/"
                                     "testing_list.txt when present, else the dataset's speaker-hash rule.")
    add_speech_commands_args(sc)

    sy = corp.add_parser("synthetic", help="synthesize a keyword corpus and a sentence corpus offline",
                         description="Synthesizes, with espeak-ng (and flite when installed), a Speech Commands-"
                                     "layout keyword corpus (all 35 words + background noise) and a LibriSpeech-"
                                     "layout sentence corpus, with train/dev/test split by voice, then writes "
                                     "OUT/manifests/{kws,kws35,asr}/*.jsonl. Re-running resumes.")
    sy.add_argument("--out", type=Path, required=True, help="output folder")
    sy.add_argument("--sentences", type=int, default=3000, help="sentence utterances in total (default 3000)")
    sy.add_argument("--speakers", type=int, default=240, help="espeak-ng speakers to draw (default 240)")
    sy.add_argument("--keyword-repeats", type=int, default=1, help="clips per speaker and word (default 1)")
    sy.add_argument("--noise-files", type=int, default=6, help="background-noise recordings (default 6)")
    sy.add_argument("--noise-seconds", type=float, default=60.0, help="length of each noise recording (default 60)")
    sy.add_argument("--no-flite", action="store_true", help="use espeak-ng voices only")
    sy.add_argument("--seed", type=int, default=0, help="everything follows from this seed (default 0)")
    sy.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")


def add_speech_commands_args(p: argparse.ArgumentParser) -> None:
    """The flags of `asr prepare speech-commands` (and `kws prepare`)."""
    p.add_argument("root", type=Path, help="the extracted corpus folder")
    p.add_argument("--out", type=Path, required=True, help="folder for the manifests")
    p.add_argument("--protocol", type=int, choices=(12, 35), default=12,
                   help="12: ten keywords + _unknown_ + _silence_; 35: every word is a class (default 12)")
    p.add_argument("--silence-fraction", type=float, default=0.1,
                   help="silence windows per split, as a fraction of its clips (default 0.1)")
    p.add_argument("--unknown-fraction", type=float, default=None,
                   help="cap _unknown_ clips to this fraction of the keyword clips (default: keep all)")
    p.add_argument("--seed", type=int, default=0, help="seed for the silence and unknown choices")


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download a public corpus (resumable, checksummed; needs internet)",
                       description="Download and unpack a public corpus into --root, unless it is already there "
                                   "and complete: a LibriSpeech subset in ROOT/LibriSpeech/SUBSET (or ROOT/SUBSET) "
                                   "whose chapters all have their transcripts, every transcribed .flac present and "
                                   "the released number of utterances; Speech Commands in "
                                   "ROOT/speech_commands_v0.02 (or ROOT) with its list files, every listed clip, "
                                   "all 35 word folders, the background noise and 105,829 clips. Prints the "
                                   "folder to prepare.")
    p.add_argument("corpus", choices=("librispeech", "speech-commands"))
    p.add_argument("--root", type=Path, required=True, help="folder to download and extract into")
    p.add_argument("--subset", default="train-clean-100",
                   help="LibriSpeech subset, e.g. train-clean-100, dev-clean, test-clean (default train-clean-100)")
    p.add_argument("--keep-archive", action="store_true", help="keep the .tar.gz after extracting")
    p.add_argument("--mirror", default=None,
                   help="base URL to fetch the archive from instead of openslr.org / download.tensorflow.org "
                        "(e.g. an OpenSLR mirror or a local server)")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config",
                       description="Train a model. The YAML config maps onto asr.train.TrainConfig; every field has "
                                   "a default. key=value arguments override it (e.g. optim.lr=0.001 epochs=5). "
                                   "A run whose out_dir holds last.pt resumes from it.")
    p.add_argument("--config", type=Path, default=None, help="YAML config file (see recipes/*/conf)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, dotted keys for sections")


def _add_decode_flags(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    p.add_argument("--model", type=Path, required=model_required, help="a checkpoint written by `asr train` (last.pt, best.pt, avg.pt); transcribe also takes an `asr export` folder")
    p.add_argument("--batch-size", type=int, default=16, help="utterances decoded together (default 16)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument("--decoder", choices=("greedy", "beam", "modified_beam"), default="greedy",
                   help="greedy; beam (CTC prefix beam search, RNN-T beam search of Graves 2012, attention beam "
                        "search); modified_beam (RNN-T, at most one symbol per frame, batched)")
    p.add_argument("--beam", type=int, default=4, help="beam width (default 4)")
    p.add_argument("--lm", type=Path, default=None, help="word n-gram LM in ARPA format for CTC beam search (see `asr lm`)")
    p.add_argument("--lm-weight", type=float, default=0.5, help="LM weight in shallow fusion (default 0.5)")
    p.add_argument("--word-bonus", type=float, default=0.0, help="score added per word with an LM (default 0)")
    p.add_argument("--ctc-weight", type=float, default=0.0,
                   help="attention models: weight of the CTC prefix score in beam search (default 0)")
    p.add_argument("--length-penalty", type=float, default=0.0,
                   help="attention models: score added per output token in beam search (default 0)")


def _decode_options(args: argparse.Namespace):
    from asr.decode import DecodeOptions

    return DecodeOptions(decoder=args.decoder, beam=args.beam, lm=str(args.lm or ""), lm_weight=args.lm_weight,
                         word_bonus=args.word_bonus, ctc_weight=args.ctc_weight, length_penalty=args.length_penalty)


def _add_lm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lm", help="build a word n-gram language model (ARPA) from text",
                       description="Trains a word n-gram LM on normalised text (one sentence per line of --text, "
                                   "or the \"text\" of every --manifest item) and writes it as an ARPA file for "
                                   "`--lm` shallow fusion.")
    p.add_argument("--text", type=Path, nargs="*", default=[], help="text files, one sentence per line")
    p.add_argument("--manifest", type=Path, nargs="*", default=[], help="manifests whose texts to use")
    p.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    p.add_argument("--out", type=Path, required=True, help="the ARPA file to write")


def _add_transcribe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files",
                       description="Prints FILE<TAB>TRANSCRIPT for each file (--format text), or the transcripts "
                                   "with each word's start and end (seconds) and confidence (0-1): --format json (one "
                                   "JSON list of {audio, text, words: [{word, start, end, confidence}]}), jsonl (one "
                                   "such object per line), srt or vtt (subtitles; with several files --out-dir DIR "
                                   "writes DIR/<stem>.srt|.vtt for each). Word times come from the alignment of the "
                                   "decoded tokens (CTC forced alignment, the RNN-T lattice's best path, the joint CTC "
                                   "head of attention models) and work with every --decoder, --lm and --streaming. "
                                   "An unreadable file is reported on stderr (naming it) and the others are still "
                                   "transcribed; the exit status is then 1.")
    p.add_argument("files", nargs="+", type=Path, help="audio files (any format soundfile reads, any sample rate)")
    _add_decode_flags(p, model_required=False)
    p.add_argument("--server", default=None, metavar="URL",
                   help="stream each file to an `asr serve` server (ws://HOST:PORT) instead of loading --model; "
                        "prints its final transcripts")
    p.add_argument("--token", default=None,
                   help="with --server: the server's secret (default: $ASR_SERVE_TOKEN)")
    p.add_argument("--streaming", action="store_true",
                   help="recognise as a stream, chunk by chunk (forward-only/causal CTC or transducer models)")
    p.add_argument("--chunk-ms", type=float, default=200.0, help="streaming chunk length in milliseconds (default 200)")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                   help="onnx: an `asr export` folder on ONNX Runtime with numpy, no PyTorch (streaming, greedy, "
                        "--format text only); torch: a checkpoint; auto (default): onnx when --model is a folder, "
                        "else torch")
    p.add_argument("--threads", type=int, default=1, help="onnx backend: ONNX Runtime threads per graph (default 1)")
    p.add_argument("--format", choices=TRANSCRIBE_FORMATS, default="text",
                   help="text (default): FILE<TAB>TRANSCRIPT lines; json: one JSON list with per-word start, end and "
                        "confidence; jsonl: one JSON object per file and line; srt / vtt: subtitles (cues of up to 7 "
                        "words / 3.5 s, split at pauses over 0.8 s)")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="srt / vtt: write DIR/<audio file stem>.srt|.vtt per file (needed with several files; "
                        "prints FILE<TAB>SUBTITLE FILE) instead of printing the subtitles")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a streaming model to ONNX",
                       description="Write OUT_DIR/encoder.onnx (the streaming encoder with its state as inputs and "
                                   "outputs: RNN hidden states, or the causal Conformer's attention and convolution "
                                   "caches), head.onnx (lookahead + CTC head / joiner encoder projection) and, for "
                                   "transducers, predictor.onnx and joiner.onnx; features, tokenizer and state shapes "
                                   "travel in encoder.onnx's metadata. Run it with `asr transcribe --model OUT_DIR`. "
                                   "The export is checked: the ONNX and PyTorch streaming recognizers must give the "
                                   "same text on 4 s of noise.")
    p.add_argument("checkpoint", type=Path, help="a CTC or transducer checkpoint with a forward-only RNN or causal "
                                                 "Conformer encoder")
    p.add_argument("out", type=Path, help="the folder to write")
    p.add_argument("--int8", action="store_true",
                   help="quantize MatMul/Gemm/LSTM weights to int8 (ONNX Runtime dynamic quantization)")


def _add_listen(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("listen", help="transcribe the microphone as you speak",
                       description="Read the default input device (or --device) through PortAudio and recognise it as "
                                   "a stream with a streaming model (a forward-only/causal CTC or transducer "
                                   "checkpoint, or an `asr export` folder): the partial transcript as it grows, and a "
                                   "final line per utterance (START END TEXT, seconds since listening began) once "
                                   "--endpoint-silence seconds pass without a new word. Stop with Ctrl-C. --input FILE "
                                   "plays a file as if it were the microphone.")
    p.add_argument("--model", type=Path, required=True,
                   help="a streaming checkpoint (see recipes/synthetic/conf/ctc_streaming.yaml) or an `asr export` folder")
    add_source_args(p, "a model")
    p.add_argument("--chunk-ms", type=float, default=200.0,
                   help="the recognizer runs on chunks of this many milliseconds (default 200)")
    p.add_argument("--endpoint-silence", type=float, default=1.0,
                   help="seconds without a new token that end an utterance (default 1.0; 0 = one utterance until "
                        "the end)")
    p.add_argument("--max-utterance", type=float, default=30.0,
                   help="seconds after which an utterance ends regardless (default 30; 0 = no limit)")
    p.add_argument("--format", choices=("text", "jsonl"), default="text",
                   help="text: finals as START<TAB>END<TAB>TEXT lines (partials overwrite one line of the "
                        "terminal on stderr); jsonl: partial and final objects with word times, one per line")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="WER/CER of a model on a manifest",
                       description="Decodes every utterance of the manifest, prints WER and CER (jiwer) and writes "
                                   "per-utterance alignments (REF/HYP with substitutions, deletions, insertions).")
    p.add_argument("--manifest", type=Path, required=True, help="JSON-lines manifest with text")
    p.add_argument("--alignments", type=Path, default=None,
                   help="where to write the alignments (default: <model folder>/alignments-<manifest name>.txt)")
    _add_decode_flags(p)


def _add_select(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("select", help="pick the utterances to label next (active learning)",
                       description="Scores every utterance of an unlabeled pool with a model and selects the "
                                   "best-scored ones up to a budget: random, least confidence, N-best entropy or "
                                   "Expected Gradient Length (Huang et al. 2016). Writes the selected manifest and "
                                   "a scores file (TSV: id, duration, score, selected). Scores are cached per shard "
                                   "in the work folder, so a killed job started again resumes; under torchrun each "
                                   "process scores its shards and rank 0 selects.")
    p.add_argument("--model", type=Path, default=None, help="checkpoint to score with (not needed for random)")
    p.add_argument("--pool", type=Path, required=True, help="JSON-lines manifest of the unlabeled utterances")
    p.add_argument("--budget", required=True, help="how much to select: utterances (500) or hours (2.5h)")
    p.add_argument("--strategy", choices=("egl", "random", "confidence", "entropy"), default="egl",
                   help="egl: expected squared gradient norm over the N-best; confidence: least confident best "
                        "hypothesis; entropy: N-best entropy; random (default egl)")
    p.add_argument("--out", type=Path, required=True, help="the selected manifest to write")
    p.add_argument("--nbest", type=int, default=4, help="hypotheses per utterance, the beam size (default 4)")
    p.add_argument("--batch-size", type=int, default=8, help="utterances scored together (default 8)")
    p.add_argument("--scores", type=Path, default=None, help="scores file (default: OUT without suffix + .scores.tsv)")
    p.add_argument("--work-dir", type=Path, default=None, help="shard cache for resuming (default: OUT without suffix + .work)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random strategy (default 0)")
    p.add_argument("--max-per-speaker", type=int, default=0, help="at most K utterances per speaker (default 0 = no cap)")
    p.add_argument("--diversity", choices=("none", "kcenter"), default="none",
                   help="kcenter: among the best-scored candidates, greedy k-center on mean-pooled encoder outputs")
    p.add_argument("--candidates", type=float, default=3.0, help="kcenter candidate set, in budgets (default 3)")
    p.add_argument("--params", nargs="+", default=[], metavar="PREFIX",
                   help="egl: only parameters whose name starts with a PREFIX (e.g. encoder.); 'output' = the "
                        "family's output layer (closed form for CTC, about 5x faster); default all")
    p.add_argument("--normalize", choices=("none", "duration", "auto"), default="none",
                   help="duration: divide each score by the utterance's duration (a score per second, what an "
                        "hour budget pays for); auto: duration when --budget is in hours; none (default: in the "
                        "README's experiment per-second EGL did no better than plain EGL at equal hours)")
    p.add_argument("--shard-size", type=int, default=64, help="utterances per cached shard (default 64)")
    p.add_argument("--max-shards", type=int, default=0, help="stop after scoring this many shards (default 0 = all)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")


def _device(name: str) -> str:
    import re

    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise UsageError(f"--device: cpu, cuda, cuda:N or auto, not {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine")
    return name


def run_train(args: argparse.Namespace) -> int:
    from asr.config import load_config
    from asr.train import TrainConfig, train

    config = load_config(TrainConfig, args.config, args.overrides)
    result = train(config)
    for key, value in result.items():
        print(f"{key}\t{value}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from asr.checkpoint import load_model
    from asr.decode.streaming import Recognizer
    from asr.export import export_streaming_onnx
    from asr.runtime.recognizer import OnnxRecognizer

    model, family, tokenizer, _ = load_model(args.checkpoint, "cpu", purpose="asr export", recognizer=True)
    meta = export_streaming_onnx(model, family, tokenizer, args.out, int8=args.int8)
    x = torch.from_numpy((np.random.default_rng(0).standard_normal(4 * 16000) * 0.1).astype(np.float32))
    sr = model.frontend.features.config.sample_rate
    ref, _ = Recognizer(model, tokenizer, family=family).infer(x[: 4 * sr], None, final=True)
    got, _ = OnnxRecognizer(args.out).infer(x[: 4 * sr].numpy(), None, final=True)
    size = sum((args.out / f"{g}.onnx").stat().st_size for g in meta["graphs"])
    print(f"{args.out}\t{', '.join(g + '.onnx' for g in meta['graphs'])}\t{size / 1024:.0f} KiB\t"
          f"{'int8' if args.int8 else 'float32'}\t{family.name}\tsame text as PyTorch on noise: {got == ref}")
    return 0


def _transcribe_onnx(args: argparse.Namespace) -> int:
    from asr.runtime.recognizer import OnnxRecognizer, transcribe_file

    if args.decoder != "greedy" or args.lm is not None:
        raise UsageError("the onnx backend decodes greedily (no --decoder beam, no --lm)")
    if args.format != "text":
        raise UsageError(f"{args.model}: the onnx backend prints text only; --format {args.format} (word timestamps) "
                         "needs a checkpoint (--backend torch)")
    recognizer = OnnxRecognizer(args.model, chunk_ms=args.chunk_ms, threads=args.threads)
    failed = 0
    for path in args.files:
        try:
            text = transcribe_file(recognizer, path)
        except AudioError as e:
            print(f"asr transcribe: error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}\t{text}", flush=True)
    return 1 if failed else 0


def _check_transcribe_output(args: argparse.Namespace) -> None:
    """``--format`` / ``--out-dir`` fit together and with the files (before any work)."""
    subtitles = args.format in ("srt", "vtt")
    if args.out_dir is not None:
        if not subtitles:
            raise UsageError(f"--out-dir {args.out_dir}: only for --format srt or vtt (not {args.format})")
        if args.out_dir.exists() and not args.out_dir.is_dir():
            raise UsageError(f"--out-dir {args.out_dir}: exists and is not a folder")
        stems: dict[str, Path] = {}
        for path in args.files:
            other = stems.setdefault(path.stem, path)
            if other != path:
                raise UsageError(f"{other} and {path} would both be written to {args.out_dir / path.stem}."
                                 f"{args.format}: give files with different names")
    elif subtitles and len(args.files) > 1:
        raise UsageError(f"--format {args.format} with {len(args.files)} files needs --out-dir DIR "
                         f"(one DIR/<stem>.{args.format} per file)")


def _print_transcripts(transcripts: list, args: argparse.Namespace) -> None:
    """Print (or with ``--out-dir`` write) the transcripts in ``args.format``."""
    from asr.decode.timestamps import format_transcripts
    from asr.utils import atomic_open

    if args.format == "json":
        print(format_transcripts(transcripts, "json"), flush=True)
        return
    for t in transcripts:
        if args.out_dir is not None:
            out = args.out_dir / f"{Path(t.audio).stem}.{args.format}"
            try:
                with atomic_open(out, "w", encoding="utf-8") as f:
                    f.write(t.format(args.format))
            except OSError as e:
                raise UsageError(f"{out}: cannot write it ({e.strerror or e})") from None
            print(f"{t.audio}\t{out}", flush=True)
        else:
            print(t.format(args.format).rstrip("\n"), flush=True)


def run_transcribe(args: argparse.Namespace) -> int:
    _check_transcribe_output(args)
    if args.server:
        return _transcribe_server(args)
    if args.model is None:
        raise UsageError("give --model CKPT (or --server URL)")
    if args.backend == "onnx" or (args.backend == "auto" and args.model.is_dir()):
        return _transcribe_onnx(args)
    if args.model.is_dir():
        raise UsageError(f"{args.model}: an ONNX export folder needs --backend onnx (or auto)")
    from asr.audio import audio_info
    from asr.checkpoint import load_model
    from asr.decode import transcribe_items

    device = _device(args.device)
    model, family, tokenizer, _ = load_model(args.model, device, purpose="asr transcribe", recognizer=True)
    items, failed = [], 0
    for i, path in enumerate(args.files):
        try:
            items.append({"id": str(i), "audio": str(path), "duration": audio_info(path).duration})
        except AudioError as e:
            print(f"asr transcribe: error: {e}", file=sys.stderr)
            failed += 1
    if args.streaming:
        return _transcribe_streaming(model, family, tokenizer, items, args, device, failed)
    timestamps = args.format != "text"
    try:
        results = transcribe_items(model, family, tokenizer, items, args.batch_size, device, progress=False,
                                   skip_bad=True, options=_decode_options(args), timestamps=timestamps,
                                   on_error=lambda item, e: print(f"asr transcribe: error: {e}", file=sys.stderr))
    except UsageError as e:
        if not timestamps:
            raise
        raise UsageError(f"{args.model}: {e}") from None
    failed += sum(r is None for r in results)
    if timestamps:
        _print_transcripts([r for r in results if r is not None], args)
    else:
        for item, text in zip(items, results):
            if text is not None:
                print(f"{item['audio']}\t{text}", flush=True)
    return 1 if failed else 0


def _transcribe_streaming(model, family, tokenizer, items: list[dict], args: argparse.Namespace, device: str,
                          failed: int) -> int:
    import torch

    from asr.audio import iter_audio_blocks
    from asr.decode.streaming import Recognizer
    from asr.decode.timestamps import Transcript

    chunk_ms = args.chunk_ms
    recognizer = Recognizer(model.to(device), tokenizer, chunk_ms=chunk_ms, family=family)
    sr = model.frontend.features.config.sample_rate
    transcripts = []
    for item in items:
        try:
            state, text = None, ""
            for block in iter_audio_blocks(item["audio"], sr, block_seconds=chunk_ms / 1000):
                text, state = recognizer.infer(block.to(device), state)
            text, state = recognizer.infer(torch.zeros(0, device=device), state, final=True)
        except AudioError as e:
            print(f"asr transcribe: error: {e}", file=sys.stderr)
            failed += 1
            continue
        if args.format == "text":
            print(f"{item['audio']}\t{text}", flush=True)
        else:
            transcripts.append(Transcript(text, recognizer.words(state), item["audio"]))
    if args.format != "text":
        _print_transcripts(transcripts, args)
    return 1 if failed else 0


# --- asr listen (asr/serve/listen.py) ---
def _streaming_recognizer(model_path: Path, chunk_ms: float, threads: int, purpose: str):
    """A PyTorch streaming recognizer of a checkpoint, or the ONNX one of an `asr export` folder."""
    if model_path.is_dir():
        from asr.runtime.recognizer import OnnxRecognizer

        return OnnxRecognizer(model_path, chunk_ms=chunk_ms, threads=threads)
    import torch

    from asr.checkpoint import load_model
    from asr.decode.streaming import Recognizer

    torch.set_num_threads(max(1, threads))
    model, family, tokenizer, _ = load_model(model_path, "cpu", purpose=purpose, recognizer=True)
    return Recognizer(model, tokenizer, chunk_ms=chunk_ms, family=family)


def run_listen(args: argparse.Namespace) -> int:
    import json

    from asr.serve.listen import listen
    from asr.serve.sources import list_devices, open_source

    if args.list_devices:
        print(list_devices())
        return 0
    recognizer = _streaming_recognizer(args.model, args.chunk_ms, args.threads, "asr listen")
    source = open_source(args.input, args.device, recognizer.sample_rate, args.chunk_ms, args.speed)
    live = sys.stderr.isatty() and args.format == "text"  # partials overwrite one terminal line
    if args.input is None:
        print(f"asr listen: listening to {source.name} (Ctrl-C to stop)", file=sys.stderr, flush=True)

    def show(utt) -> None:
        if args.format == "jsonl":
            print(json.dumps(utt.to_json()), flush=True)
        elif utt.final:
            if live:
                print("\r\033[K", end="", file=sys.stderr, flush=True)
            print(f"{utt.start:.2f}\t{utt.end:.2f}\t{utt.text}", flush=True)
        elif live:
            print(f"\r\033[K{utt.text[-150:]}", end="", file=sys.stderr, flush=True)

    summary = listen(recognizer, source, show, args.endpoint_silence, args.max_utterance)
    print(f"asr listen: {summary.utterances} utterances in {summary.seconds:.1f} s of audio"
          f"{' (stopped by Ctrl-C)' if summary.interrupted else ''}", file=sys.stderr)
    return 0
# --- end of asr listen ---


def run_lm(args: argparse.Namespace) -> int:
    from asr.data.manifest import read_manifest
    from asr.decode.lm import build_ngram

    texts: list[str] = []
    for path in args.text:
        if not path.is_file():
            raise MissingFileError(f"{path}: text file not found")
        texts += path.read_text(encoding="utf-8").splitlines()
    for path in args.manifest:
        texts += [it["text"] for it in read_manifest(path, needs_text=True) if "text" in it]
    if not texts:
        raise UsageError("no text: give --text and/or --manifest")
    build_ngram(texts, order=args.order, path=args.out)
    print(args.out)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from asr.data.manifest import read_manifest
    from asr.decode import transcribe_items
    from asr.evaluate import error_rates, write_alignments
    from asr.checkpoint import load_model
    from asr.text import normalize_text

    device = _device(args.device)
    model, family, tokenizer, _ = load_model(args.model, device, purpose="asr evaluate", recognizer=True)
    items = read_manifest(args.manifest, needs_text=True, check_audio=True)
    hyps = transcribe_items(model, family, tokenizer, items, args.batch_size, device, options=_decode_options(args))
    refs = [normalize_text(it["text"]) for it in items]
    rates = error_rates(refs, hyps)
    out = args.alignments or args.model.parent / f"alignments-{args.manifest.stem}.txt"
    write_alignments(out, [it["id"] for it in items], refs, hyps)
    print(f"WER {100 * rates['wer']:.2f}%  ({rates['substitutions']} sub, {rates['deletions']} del, "
          f"{rates['insertions']} ins / {rates['words']} words)")
    print(f"CER {100 * rates['cer']:.2f}%  ({rates['utterances']} utterances)")
    print(f"alignments\t{out}")
    return 0


def run_select(args: argparse.Namespace) -> int:
    from asr.active.select import SelectOptions, run_selection
    opts = SelectOptions(
        pool=str(args.pool), budget=args.budget, out=str(args.out), strategy=args.strategy,
        model=str(args.model or ""), nbest=args.nbest, batch_size=args.batch_size, scores=str(args.scores or ""),
        work_dir=str(args.work_dir or ""), seed=args.seed, max_per_speaker=args.max_per_speaker,
        diversity=args.diversity, candidates=args.candidates, params=list(args.params), normalize=args.normalize,
        shard_size=args.shard_size,
        max_shards=args.max_shards, device=args.device, progress=True,
    )
    summary = run_selection(opts)
    for key, value in summary.items():
        print(f"{key}\t{value}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    if args.corpus == "librispeech":
        from asr.data.librispeech import prepare_librispeech

        out = prepare_librispeech(args.root, args.out, args.subsets)
    elif args.corpus == "speech-commands":
        from asr.data.speech_commands import prepare_speech_commands

        out = prepare_speech_commands(args.root, args.out, protocol=args.protocol,
                                      silence_fraction=args.silence_fraction,
                                      unknown_fraction=args.unknown_fraction, seed=args.seed)
    else:
        from asr.data.synthetic import prepare_synthetic

        out = prepare_synthetic(args.out, n_sentences=args.sentences, keyword_repeats=args.keyword_repeats,
                                n_noise_files=args.noise_files, noise_seconds=args.noise_seconds, seed=args.seed,
                                jobs=args.jobs, n_speakers=args.speakers,
                                use_flite=False if args.no_flite else None)
    for name, path in _flatten(out):
        print(f"{name}\t{path}")
    return 0


def _flatten(out, prefix: str = ""):
    if isinstance(out, dict):
        for k, v in out.items():
            yield from _flatten(v, f"{prefix}{k}/" if isinstance(v, dict) else f"{prefix}{k}")
    else:
        yield prefix, out


def run_download(args: argparse.Namespace) -> int:
    from asr.data import download as dl

    if args.corpus == "librispeech":
        path = dl.download_librispeech(args.subset, args.root, keep_archive=args.keep_archive, mirror=args.mirror)
    else:
        path = dl.download_speech_commands(args.root, keep_archive=args.keep_archive, mirror=args.mirror)
    print(path)
    return 0


def add_source_args(p, trying: str) -> None:
    """``--device``, ``--list-devices``, ``--input`` and ``--speed``: where ``asr listen`` and
    ``kws listen`` take their audio from (see :func:`asr.serve.sources.open_source`)."""
    p.add_argument("--device", default=None,
                   help="input device: its number or a part of its name (default: the system's default input; "
                        "--list-devices shows them)")
    p.add_argument("--list-devices", action="store_true", help="print the audio devices and exit")
    p.add_argument("--input", type=Path, default=None,
                   help=f"read this audio file as if it were the microphone (for trying {trying})")
    p.add_argument("--speed", type=float, default=1.0,
                   help="with --input: 1 = real time (default), 2 = twice as fast, 0 = as fast as it can be read")


# --- asr serve / transcribe --server (the WebSocket server and its client: asr/serve/, asr/client.py) ---
def add_serve_args(p: argparse.ArgumentParser, token_env: str) -> None:
    """The server flags of `asr serve` (and `kws serve`): address, token, limits."""
    from asr.serve.protocol import ServerLimits

    d = ServerLimits()
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network, "
                        "then also set a token)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port, printed at start)")
    p.add_argument("--token", default=None,
                   help=f"a secret every client's config must carry (default: ${token_env}, else none; prefer the "
                        "environment variable: command lines are visible to other users)")
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   help=f"concurrent streams; one more is closed with code 1013 (default {d.max_connections})")
    p.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes,
                   help=f"largest message; a bigger one closes the stream with 1009 (default {d.max_message_bytes})")
    p.add_argument("--max-stream-seconds", type=float, default=d.max_stream_seconds,
                   help=f"audio per stream; past it the final result is sent and the stream closed with 4000 "
                        f"(default {d.max_stream_seconds:g})")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout,
                   help=f"seconds without a message from a client before its stream is closed with 4001 "
                        f"(default {d.idle_timeout:g})")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of the model (default 1)")


def serve_limits(args: argparse.Namespace):
    """The :class:`asr.serve.protocol.ServerLimits` of the flags of :func:`add_serve_args`."""
    from asr.serve.protocol import ServerLimits

    limits = ServerLimits(max_connections=args.max_connections, max_message_bytes=args.max_message_bytes,
                          max_stream_seconds=args.max_stream_seconds, idle_timeout=args.idle_timeout)
    limits.check()
    return limits


def serve_token(args: argparse.Namespace, env: str) -> str | None:
    import os

    return args.token if args.token is not None else (os.environ.get(env) or None)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve streaming recognition over WebSocket",
                       description="Serve a streaming model over WebSocket: a client sends a JSON config, audio "
                                   "chunks and end-of-stream, and gets partial transcripts with word timings and a "
                                   "final one (the protocol: asr/serve/protocol.py; a client: `asr transcribe "
                                   "--server URL FILE`). Concurrent streams share the model; their encoder steps run "
                                   "batched. Prints the URL it listens on; stops on Ctrl-C or SIGTERM and prints a "
                                   "summary.")
    p.add_argument("--model", type=Path, required=True,
                   help="a streaming CTC/transducer checkpoint, or an `asr export` folder (ONNX Runtime, no batching)")
    add_serve_args(p, "ASR_SERVE_TOKEN")
    p.add_argument("--chunk-ms", type=float, default=None,
                   help="the recognizer's chunk in milliseconds (default 200, for a causal Conformer rounded to whole "
                        "attention chunks so that all streams batch together)")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                   help="auto (default): onnx for an export folder, else torch")
    p.add_argument("--device", default="cpu", help="torch backend: cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--no-batch", action="store_true", help="run every stream's encoder step on its own (for comparison)")


def run_serve(args: argparse.Namespace) -> int:
    from asr.serve.engines import load_asr_engine
    from asr.serve.server import run_server

    onnx = args.backend == "onnx" or (args.backend == "auto" and args.model.is_dir())
    device = "cpu" if onnx else _device(args.device)
    limits = serve_limits(args)
    engine = load_asr_engine(args.model, chunk_ms=args.chunk_ms, device=device, threads=args.threads,
                             backend=args.backend, batch=not args.no_batch)
    summary = run_server(engine, args.host, args.port, limits, serve_token(args, "ASR_SERVE_TOKEN"),
                         on_listening=lambda url: print(f"listening on {url}", flush=True))
    for key, value in summary.items():
        print(f"{key}\t{value}", flush=True)
    return 0


def _transcribe_server(args: argparse.Namespace) -> int:
    """`asr transcribe --server URL FILE...`: each file streamed to the server, its final transcript printed."""
    from asr.client import ServerError, stream_file
    from asr.decode.timestamps import Transcript, WordTiming

    fmt = args.format
    token = serve_token(args, "ASR_SERVE_TOKEN")
    done, failed = [], 0
    for path in args.files:
        try:
            final = stream_file(args.server, path, token=token, config={"partial": False})["final"]
        except (AudioError, ServerError) as e:
            print(f"asr transcribe: error: {e}", file=sys.stderr)
            failed += 1
            continue
        t = Transcript(final["text"], [WordTiming(**w) for w in final.get("words", [])], str(path))
        if fmt == "text":
            print(t.format(fmt), flush=True)
        else:
            done.append(t)
    if done:
        _print_transcripts(done, args)
    return 1 if failed else 0
# --- end of asr serve ---


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_prepare(sub)
    _add_download(sub)
    _add_train(sub)
    _add_transcribe(sub)
    _add_evaluate(sub)
    _add_lm(sub)
    _add_select(sub)
    _add_export(sub)
    _add_listen(sub)
    _add_serve(sub)
    return parser


COMMANDS = {"prepare": run_prepare, "download": run_download, "train": run_train,
            "transcribe": run_transcribe, "evaluate": run_evaluate, "lm": run_lm,
            "select": run_select, "export": run_export, "listen": run_listen,
            "serve": run_serve}


def main(argv: list[str] | None = None) -> int:
    return run_cli("asr", build_parser(), COMMANDS, argv)
