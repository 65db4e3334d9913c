#!/usr/bin/env bash
# Custom wake words from text alone: `kws train-keyword` for "alexa" and "computer", scored on the real
# recordings of ../shared/data/wakewords-dev (never in training), and again with 10 of those recordings
# added to training (--positive) to see what a few real examples buy.
#
#   recipes/synthetic/kws_custom.sh [PHRASE ...]        (default: alexa computer)
#
# Needs kws_negatives.sh to have run (data/kws/neg/*, data/kws/speech_test.jsonl) and a spotter to start
# from that never heard the wake-word recordings: $INIT, by default exp/kws/speakers/all+dev/best.pt
# (recipes/synthetic/kws_speakers.sh all+dev; the same model was shipped as kws/pretrained/crnn.pt at
# commit 9695810: `git show 9695810:kws/pretrained/crnn.pt > exp/kws/speakers/all+dev/best.pt`). The
# shipped spotter is not that model: kws_negatives.sh gave it 70% of the wake-word recordings as
# _unknown_, so starting from it would teach the phrase from a model trained to reject these very
# recordings (and their speakers). The negative speech
# given to train-keyword is the training part of the real speech (70% of the untranscribed speakers and
# of the Asterisk prompts, 4 of the 6 fsdd speakers, the speech-commands-extra clips); the wake-word
# recordings are not in it. The noise added in training is the synthetic noise plus the real silence clips
# of the training speakers (data/kws/noise_train.jsonl). Per phrase, written to $EXP/<phrase>/ and $EXP/<phrase>-10real/:
#   model.pt (+ model.json: the train-keyword report with its stage times), eval.json: recall on the
#   phrase's recordings, false accepts on the other phrase's, false alarms per hour on the held-out read
#   speech (data/kws/speech_test.jsonl: librispeech-mini and 30% of the Asterisk prompts).
set -euo pipefail
ww=${WAKEWORDS:-../shared/data/wakewords-dev}
work=${WORK:-data/kws}
exp=${EXP:-exp/kws/custom}
init=${INIT:-exp/kws/speakers/all+dev/best.pt}
phrases=("$@")
[ ${#phrases[@]} -gt 0 ] || phrases=(alexa computer)
negatives=("$work/neg/untranscribed/train.jsonl" "$work/neg/asterisk/train.jsonl" "$work/neg/fsdd/train.jsonl"
           "$work/extra_train.jsonl")
for f in "${negatives[@]}" "$work/speech_test.jsonl" "$work/noise_train.jsonl"; do
    [ -f "$f" ] || { echo "kws_custom.sh: $f is missing: run recipes/synthetic/kws_negatives.sh" >&2; exit 2; }
done
[ -f "$init" ] || { echo "kws_custom.sh: $init is missing: run recipes/synthetic/kws_speakers.sh all+dev (or see the top of this script)" >&2; exit 2; }

for phrase in "${phrases[@]}"; do
    # from text alone, scored on every recording of both phrases
    run="$exp/$phrase"
    if [ ! -f "$run/eval.json" ]; then
        kws train-keyword "$phrase" --out "$run/model.pt" --negative "${negatives[@]}" --noise "$work/noise_train.jsonl" --init "$init"
        kws evaluate --model "$run/model.pt" --recordings "$ww/alexa" "$ww/computer" \
            --speech "$work/speech_test.jsonl" --json "$run/eval.json"
    fi
    # + 10 real recordings of the phrase (the first 10 files by name), scored on the others
    run="$exp/$phrase-10real"
    if [ ! -f "$run/eval.json" ]; then
        mkdir -p "$run/enrol/$phrase" "$run/test/$phrase"
        i=0
        for f in "$ww/$phrase"/*.flac; do
            if [ $i -lt 10 ]; then ln -sf "$(realpath "$f")" "$run/enrol/$phrase/"; else ln -sf "$(realpath "$f")" "$run/test/$phrase/"; fi
            i=$((i + 1))
        done
        kws train-keyword "$phrase" --out "$run/model.pt" --negative "${negatives[@]}" --noise "$work/noise_train.jsonl" --init "$init" --positive "$run/enrol/$phrase"
        others=()
        for d in "$ww"/*/; do [ "$(basename "$d")" = "$phrase" ] || others+=("${d%/}"); done
        kws evaluate --model "$run/model.pt" --recordings "$run/test/$phrase" "${others[@]}" \
            --speech "$work/speech_test.jsonl" --json "$run/eval.json"
    fi
done
