#!/usr/bin/env bash
# Train, evaluate and (with --install) ship the default keyword spotter, on CPU.
#
#   recipes/synthetic/kws.sh [--install | --prepare-only] [key=value ...]
#
# --prepare-only writes the manifests below (under $WORK) and stops before training.
#
# Data: the synthetic keyword corpus (synthesized first when data/synthetic is missing) plus,
# when $SHARED/speech-commands-real exists (default ../shared/data), the real Speech Commands
# clips split by speaker: 50% + 10% of the speakers for training (repeated 16x, 8 of the copies
# read as recorded, without waveform augmentation; the epoch is picked on the synthetic dev
# voices), 40% held out for the accuracy figure and never trained on. REAL_DEV=dev keeps the
# 10% out of training as a real dev set instead (the recipe before: fewer real speakers, see
# recipes/synthetic/kws_speakers.sh for what each real speaker is worth).
# Then: accuracy on the held-out real speakers and on the synthetic test voices, the FRR at
# 0.5 false alarms per hour with a DET plot, keyword localisation on a long file of held-out
# real clips, all written to $EXP/*.json. --install copies the model to kws/pretrained/crnn.pt, with
# 0.7 as its default detection threshold.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
install=0 prepare_only=0
if [ "${1:-}" = "--install" ]; then install=1; shift; fi
if [ "${1:-}" = "--prepare-only" ]; then prepare_only=1; shift; fi
data=${DATA:-data/synthetic}
shared=${SHARED:-../shared/data}
work=${WORK:-data/kws}
exp=${EXP:-exp/kws/default}
real_dev=${REAL_DEV:-train}
case $real_dev in train|dev) ;; *) echo "kws.sh: REAL_DEV must be train or dev, got '$real_dev'" >&2; exit 2 ;; esac

[ -f "$data/manifests/kws/train.jsonl" ] || asr prepare synthetic --out "$data"
[ -f "$data/manifests/kws/noise_train.jsonl" ] || kws prepare "$data/speech_commands" --out "$data/manifests/kws"
mkdir -p "$work"
train=("$data/manifests/kws/train.jsonl")
dev=("$data/manifests/kws/valid.jsonl")
if [ -d "$shared/speech-commands-real" ]; then
    kws prepare "$shared/speech-commands-real" --out "$work/real_all" >/dev/null
    kws combine "$work/real_all/all.jsonl" "$work"/real_all/{train,valid,test}.jsonl
    kws split "$work/real_all/all.jsonl" --out "$work/real" --parts train=0.5,dev=0.1,test=0.4
    train+=("$work/real/train.jsonl:16:8")
    if [ "$real_dev" = train ]; then train+=("$work/real/dev.jsonl:16:8"); else dev+=("$work/real/dev.jsonl"); fi
fi
kws combine "$work/train.jsonl" "${train[@]}"
kws combine "$work/dev.jsonl" "${dev[@]}"
# background noise for augmentation: the synthetic corpus's, plus the real training speakers' silence clips
# (those of the 50% part, whichever way REAL_DEV goes)
noise=("$data/manifests/kws/noise_train.jsonl")
[ -f "$work/real/train.jsonl" ] && noise+=("$work/real/train.jsonl")
kws combine "$work/noise_train.jsonl" "${noise[@]}" --labels _silence_
[ "$prepare_only" = 1 ] && exit 0

kws train --config "$here/conf/kws.yaml" out_dir="$exp" data.train="$work/train.jsonl" data.dev="$work/dev.jsonl" \
    data.noise_manifest="$work/noise_train.jsonl" "$@"
model="$exp/best.pt"

# Long recordings: keyword-free (false alarms per hour) and with keywords (localisation).
neg_clips="$data/manifests/kws/test.jsonl"
kws make-stream --manifest "$neg_clips" --labels _unknown_,_silence_ --noise-manifest "$data/manifests/kws/noise_test.jsonl" \
    --minutes 60 --out "$work/negative_synthetic_1h.wav" --seed 1
negatives=("$work/negative_synthetic_1h.wav")
if [ -f "$work/real/test.jsonl" ]; then
    kws make-stream --manifest "$work/real/test.jsonl" --labels _unknown_,_silence_ \
        --noise-manifest "$data/manifests/kws/noise_test.jsonl" --minutes 30 --out "$work/negative_real_30min.wav" --seed 2
    kws make-stream --manifest "$work/real/test.jsonl" --noise-manifest "$data/manifests/kws/noise_test.jsonl" \
        --out "$work/stream_real.wav" --seed 3
    negatives+=("$work/negative_real_30min.wav")
    kws evaluate --model "$model" --manifest "$work/real/test.jsonl" --negative "${negatives[@]}" \
        --stream "$work/stream_real.wav" --json "$exp/eval_real.json" --det-plot "$exp/det_real.png"
fi
kws evaluate --model "$model" --manifest "$data/manifests/kws/test.jsonl" --json "$exp/eval_synthetic.json"
if [ "$install" = 1 ]; then
    # 0.7: on the real held-out stream it finds 70% of the keywords; the threshold of 0.5 false
    # alarms per hour (eval_real.json, about 0.99) misses two thirds of them (see the README)
    kws export "$model" kws/pretrained/crnn.pt --threshold 0.7
fi
