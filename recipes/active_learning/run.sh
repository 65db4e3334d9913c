#!/usr/bin/env bash
# Active-learning experiment: random, least confidence, N-best entropy and four variants of
# Expected Gradient Length on a pool that mixes the seed model's condition with shifted ones.
#
#   recipes/active_learning/run.sh [key=value ...]
#
# Synthesizes the corpus first when data/synthetic is missing, then runs
# `python -m asr.active.simulate` with conf/default.yaml (extra key=value arguments override it;
# a killed run started again resumes). Writes in $EXP: results.csv, selections.csv, correlation.csv,
# summary.md, wer.png and egl_vs_confidence.png.
# Environment: DATA (corpus folder), EXP (output folder).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
data=${DATA:-data/synthetic}
exp=${EXP:-exp/active_learning}

if [ ! -f "$data/manifests/asr/train.jsonl" ]; then
    asr prepare synthetic --out "$data"
fi
python -m asr.active.simulate --config "$here/conf/default.yaml" out_dir="$exp" \
    corpus="$data/manifests/asr/train.jsonl" \
    heldout="[$data/manifests/asr/dev.jsonl,$data/manifests/asr/test.jsonl]" \
    pool.noise_dir="$data/speech_commands/_background_noise_" "$@"
