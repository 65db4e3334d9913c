#!/usr/bin/env bash
# Speech Commands v0.02: download -> prepare -> train the CRNN -> evaluate, 12- or 35-class protocol.
#
#   recipes/speech_commands/run.sh 12|35 [key=value ...]
#
# The 12-class protocol: yes no up down left right on off stop go + _unknown_ (the other words,
# capped at 1x the keyword clips) + _silence_ (1 s windows of the background noise). The
# official validation/testing lists decide the splits. The 35-class protocol: every word.
# Then accuracy, per-class accuracy and confusion on the test split; for 12 classes also the FRR
# at 0.5 false alarms per hour on a 1-hour keyword-free recording of test _unknown_/_silence_
# clips, with a DET plot.
# Environment: CORPORA (download folder, default corpora; a complete corpus already in
# CORPORA/speech_commands_v0.02 or CORPORA itself is used without downloading), ROOT (an extracted
# corpus used as it is, complete or not), DATA (manifests), EXP (outputs).
# Multi-GPU: NPROC=N launches the training through torchrun.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
protocol=${1:?usage: run.sh 12|35 [key=value ...]}
shift
corpora=${CORPORA:-corpora}
data=${DATA:-data/speech_commands_$protocol}
exp=${EXP:-exp/speech_commands/crnn$protocol}
nproc=${NPROC:-1}

root=${ROOT:-$(asr download speech-commands --root "$corpora")}  # kept when already complete
if [ "$protocol" = 12 ]; then
    kws prepare "$root" --out "$data" --protocol 12 --unknown-fraction 1.0
else
    kws prepare "$root" --out "$data" --protocol 35
fi
noise=()
[ -f "$data/noise_train.jsonl" ] && noise=(data.noise_manifest="$data/noise_train.jsonl")
args=(--config "$here/conf/crnn$protocol.yaml" out_dir="$exp" data.train="$data/train.jsonl" data.dev="$data/valid.jsonl"
      "${noise[@]}" "$@")
if [ "$nproc" -gt 1 ]; then
    torchrun --standalone --nproc-per-node "$nproc" -m kws train "${args[@]}"
else
    kws train "${args[@]}"
fi
if [ "$protocol" = 12 ]; then
    kws make-stream --manifest "$data/test.jsonl" --labels _unknown_,_silence_ --minutes 60 \
        --noise-manifest "$data/noise_test.jsonl" --out "$data/negative_1h.wav"
    kws evaluate --model "$exp/best.pt" --manifest "$data/test.jsonl" --negative "$data/negative_1h.wav" \
        --json "$exp/eval_test.json" --det-plot "$exp/det_test.png"
else
    kws evaluate --model "$exp/best.pt" --manifest "$data/test.jsonl" --json "$exp/eval_test.json"
fi
