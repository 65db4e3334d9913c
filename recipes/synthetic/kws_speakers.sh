#!/usr/bin/env bash
# How the held-out real accuracy of the default keyword spotter grows with the number of real
# speakers it is trained on: the default recipe (kws.sh's data and conf/kws.yaml) with the real
# training clips of none, a quarter, half or all of the real training speakers, and of all of
# them plus the real dev speakers. The real _silence_ clips are background-noise excerpts, not
# speakers: every run keeps all of them.
#
#   recipes/synthetic/kws_speakers.sh [SUBSET ...] [-- key=value ...]
#
# SUBSET: none, quarter, half, all, all+dev (default: the first four, one after another; give a
# few to run them in two shells at once). all+dev also trains on the real dev clips and picks its
# epoch on the synthetic dev voices alone. key=value pairs after -- override the training config of every run.
# Each run writes $EXP/<subset>/{best.pt,eval_real.json}; then `kws curve` turns every run that
# has finished into $EXP/curve.csv and $EXP/curve.png (accuracy with a 95% speaker-bootstrap
# interval against training speakers, and a log-linear fit).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
data=${DATA:-data/synthetic}
work=${WORK:-data/kws}
exp=${EXP:-exp/kws/speakers}
subsets=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do subsets+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#subsets[@]} -gt 0 ] || subsets=(none quarter half all)

DATA=$data WORK=$work "$here/kws.sh" --prepare-only
cur="$work/speakers"
mkdir -p "$cur" "$exp"
words=_unknown_,yes,no,up,down,left,right,on,off,stop,go
kws combine "$cur/people.jsonl" "$work/real/train.jsonl" --labels "$words" >/dev/null
kws combine "$cur/silence.jsonl" "$work/real/train.jsonl" --labels _silence_ >/dev/null
synthetic_dev="$data/manifests/kws/valid.jsonl"
kws combine "$cur/dev.jsonl" "$synthetic_dev" "$work/real/dev.jsonl" >/dev/null  # synthetic + real dev speakers
# nested subsets: quarter = q1, half = q1 + q2, all = q1 + q2 + rest
kws split "$cur/people.jsonl" --out "$cur" --parts q1=0.25,q2=0.25,rest=0.5
: > "$cur/none.jsonl"
kws combine "$cur/quarter.jsonl" "$cur/q1.jsonl" >/dev/null
kws combine "$cur/half.jsonl" "$cur/q1.jsonl" "$cur/q2.jsonl" >/dev/null
kws combine "$cur/all.jsonl" "$cur/q1.jsonl" "$cur/q2.jsonl" "$cur/rest.jsonl" >/dev/null

for s in "${subsets[@]}"; do
    case $s in none|quarter|half|all|all+dev) ;;
        *) echo "kws_speakers.sh: unknown subset '$s' (none, quarter, half, all, all+dev)" >&2; exit 2 ;; esac
    real=("$cur/silence.jsonl:16:8")
    [ -s "$cur/${s%+dev}.jsonl" ] && real+=("$cur/${s%+dev}.jsonl:16:8")
    dev="$cur/dev.jsonl"
    if [ "$s" = all+dev ]; then  # the data of kws.sh's default (in another order)
        real+=("$work/real/dev.jsonl:16:8")
        dev="$synthetic_dev"
        kws combine "$cur/all+dev.jsonl" "$cur/all.jsonl" "$work/real/dev.jsonl" >/dev/null
    fi
    kws combine "$cur/train_$s.jsonl" "$data/manifests/kws/train.jsonl" "${real[@]}"
    kws train --config "$here/conf/kws.yaml" out_dir="$exp/$s" data.train="$cur/train_$s.jsonl" \
        data.dev="$dev" data.noise_manifest="$work/noise_train.jsonl" "$@"
    kws evaluate --model "$exp/$s/best.pt" --manifest "$work/real/test.jsonl" --json "$exp/$s/eval_real.json"
done

runs=()
for s in none quarter half all all+dev; do
    [ -f "$exp/$s/eval_real.json" ] && runs+=("$cur/$s.jsonl=$exp/$s/eval_real.json")
done
kws curve "${runs[@]}" --out "$exp/curve" --target 0.9
