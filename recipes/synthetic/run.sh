#!/usr/bin/env bash
# Train and evaluate one model family on the synthetic corpus, on CPU.
#
#   recipes/synthetic/run.sh ctc|transducer|attention|demo [key=value ...]
#
# Synthesizes the corpus first when data/synthetic is missing (asr prepare synthetic),
# trains with recipes/synthetic/conf/<family>.yaml (extra key=value arguments override it;
# a run whose out_dir holds last.pt resumes), then prints greedy WER/CER on the test voices,
# which are never trained on. Environment: DATA (corpus folder), EXP (output folder).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
family=${1:?usage: run.sh ctc|transducer|attention|demo [key=value ...]}
shift
data=${DATA:-data/synthetic}
exp=${EXP:-exp/synthetic/$family}

if [ ! -f "$data/manifests/asr/train.jsonl" ]; then
    asr prepare synthetic --out "$data"
fi
asr train --config "$here/conf/$family.yaml" out_dir="$exp" \
    data.train="$data/manifests/asr/train.jsonl" data.dev="$data/manifests/asr/dev.jsonl" "$@"
model="$exp/best.pt"
[ -f "$model" ] || model="$exp/last.pt"
asr evaluate --model "$model" --manifest "$data/manifests/asr/test.jsonl"
