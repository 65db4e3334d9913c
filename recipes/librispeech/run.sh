#!/usr/bin/env bash
# LibriSpeech: download -> prepare -> train -> evaluate, for one model family on one GPU.
#
#   recipes/librispeech/run.sh ctc|transducer|attention [key=value ...]
#
# Environment: CORPORA (download folder, default corpora; a folder that already holds LibriSpeech
# - CORPORA/LibriSpeech/<subset> or CORPORA/<subset> - is used as it is when each subset is
# complete, so the recipe runs offline on shared storage), SUBSETS (training subsets,
# default "train-clean-100"), DATA (manifest folder), EXP (output folder).
# Multi-GPU: set NPROC=8 to launch the training through torchrun (DistributedDataParallel).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
family=${1:?usage: run.sh ctc|transducer|attention [key=value ...]}
shift
corpora=${CORPORA:-corpora}
subsets=${SUBSETS:-train-clean-100}
data=${DATA:-data/librispeech}
exp=${EXP:-exp/librispeech/$family}
nproc=${NPROC:-1}

for subset in $subsets dev-clean test-clean test-other; do
    base=$(asr download librispeech --root "$corpora" --subset "$subset")  # kept when already complete
done
asr prepare librispeech "$base" --out "$data" --subsets $subsets dev-clean test-clean test-other

# concatenate the training subsets into one manifest
train="$data/train.jsonl"
: > "$train.tmp"
for subset in $subsets; do cat "$data/$subset.jsonl" >> "$train.tmp"; done
mv "$train.tmp" "$train"

args=(--config "$here/conf/$family.yaml" out_dir="$exp" data.train="$train" data.dev="$data/dev-clean.jsonl" "$@")
if [ "$nproc" -gt 1 ]; then
    torchrun --standalone --nproc-per-node "$nproc" -m asr train "${args[@]}"
else
    asr train "${args[@]}"
fi
for test in test-clean test-other; do
    asr evaluate --model "$exp/avg.pt" --manifest "$data/$test.jsonl"
done
