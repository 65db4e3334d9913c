#!/usr/bin/env bash
# Active-learning simulation: random vs least confidence vs Expected Gradient Length.
#
#   recipes/active_learning/run.sh [key=value ...]
#
# Synthesizes the corpus first when data/synthetic is missing, then runs
# `python -m asr.active.simulate` with conf/default.yaml (extra key=value arguments override it;
# a killed run started again resumes). Writes $EXP/results.csv and $EXP/wer.png.
# Environment: DATA (corpus folder), EXP (output folder).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
data=${DATA:-data/synthetic}
exp=${EXP:-exp/active_learning}

if [ ! -f "$data/manifests/asr/train.jsonl" ]; then
    asr prepare synthetic --out "$data"
fi
python -m asr.active.simulate --config "$here/conf/default.yaml" out_dir="$exp" \
    corpus="$data/manifests/asr/train.jsonl" test="$data/manifests/asr/test.jsonl" "$@"
