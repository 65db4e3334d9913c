#!/usr/bin/env bash
# Running-speech negatives for the keyword spotter, and the held-out speech that measures false alarms.
#
#   recipes/synthetic/kws_negatives.sh
#
# Writes under $WORK (default data/kws):
#   negatives_train.jsonl   1-s _unknown_ windows (offset/duration into the source files, no audio copied) of
#                           - the synthetic sentences of the training voices whose transcript has no keyword,
#                           - 70% of the real Asterisk prompts (read-speech/; prompts with a keyword left out),
#                           - 70% of the speakers of untranscribed-speech/ (real audiobook speech of 251 people),
#                           - 4 of the 6 speakers of fsdd/ (real spoken digits) and 70% of wakewords-dev/ clips;
#   extra_train.jsonl       speech-commands-extra/ (363 more real speakers, none in the held-out clips), 12 classes;
#   speech_test.jsonl       held-out transcribed real read speech: librispeech-mini (39 utterances, 4.5 min) and
#                           the other 30% of the Asterisk prompts;
#   untranscribed_test.jsonl the other 30% of the untranscribed speakers (detections there are nearly all false).
# A keyword inside a sentence is not a command, but teaching it as _unknown_ would teach the model to miss the
# word itself; so utterances whose transcript contains a keyword give no training windows (the untranscribed
# speech cannot be checked: about one word in seventy there is a keyword).
set -euo pipefail
shared=${SHARED:-../shared/data}
data=${DATA:-data/synthetic}
work=${WORK:-data/kws}
kw=yes,no,up,down,left,right,on,off,stop,go
mkdir -p "$work/neg"
python - "$shared" "$work/neg" <<'PY'
import csv, json, sys
from pathlib import Path
import soundfile as sf
shared, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
def tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))
def write(name, items):
    with open(out / name, "w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
write("untranscribed.jsonl", [{"id": Path(r["file"]).stem, "audio": str(shared / "untranscribed-speech" / r["file"]),
                               "duration": float(r["duration"]), "speaker": r["speaker"]}
                              for r in tsv(shared / "untranscribed-speech/labels.tsv")])
write("fsdd.jsonl", [{"id": "fsdd_" + Path(r["file"]).stem, "audio": str(shared / "fsdd" / r["file"]),
                      "duration": sf.info(str(shared / "fsdd" / r["file"])).duration, "speaker": r["speaker"],
                      "label": "_unknown_"} for r in tsv(shared / "fsdd/labels.tsv")])
write("wakewords.jsonl", [{"id": "wake_" + r["file"].replace("/", "_").rsplit(".", 1)[0],
                           "audio": str(shared / "wakewords-dev" / r["file"]),
                           "duration": sf.info(str(shared / "wakewords-dev" / r["file"])).duration, "label": "_unknown_"}
                          for r in tsv(shared / "wakewords-dev/labels.tsv")])
PY
kws split "$shared/read-speech/asterisk.jsonl" --out "$work/neg/asterisk" --parts train=0.7,test=0.3
kws split "$work/neg/untranscribed.jsonl" --out "$work/neg/untranscribed" --parts train=0.7,test=0.3
kws split "$work/neg/fsdd.jsonl" --out "$work/neg/fsdd" --parts train=0.67,test=0.33
kws split "$work/neg/wakewords.jsonl" --out "$work/neg/wakewords" --parts train=0.7,test=0.3
kws cut "$data/manifests/asr/train.jsonl" --skip-keywords $kw --hop 1.0 --out "$work/neg/synthetic_windows.jsonl"
kws cut "$work/neg/asterisk/train.jsonl" --skip-keywords $kw --hop 0.5 --out "$work/neg/asterisk_windows.jsonl"
kws cut "$work/neg/untranscribed/train.jsonl" --hop 1.0 --out "$work/neg/untranscribed_windows.jsonl"
kws cut "$work/neg/fsdd/train.jsonl" --hop 1.0 --out "$work/neg/fsdd_windows.jsonl"
kws cut "$work/neg/wakewords/train.jsonl" --hop 0.5 --out "$work/neg/wakewords_windows.jsonl"
kws combine "$work/negatives_train.jsonl" "$work"/neg/{synthetic,asterisk,untranscribed,fsdd,wakewords}_windows.jsonl
asr prepare librispeech "$shared/librispeech-mini/LibriSpeech" --out "$work/neg/librispeech_mini" \
    --subsets test-clean test-other dev-clean train-clean-100 >/dev/null
kws combine "$work/speech_test.jsonl" "$work"/neg/librispeech_mini/{test-clean,test-other,dev-clean,train-clean-100}.jsonl \
    "$work/neg/asterisk/test.jsonl"
cp "$work/neg/untranscribed/test.jsonl" "$work/untranscribed_test.jsonl.tmp" && mv "$work/untranscribed_test.jsonl.tmp" "$work/untranscribed_test.jsonl"
kws prepare "$shared/speech-commands-extra" --out "$work/extra" >/dev/null
kws combine "$work/extra_train.jsonl" "$work"/extra/{train,valid,test}.jsonl
