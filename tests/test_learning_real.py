"""Each family overfits 4 real LibriSpeech utterances through the real training loop (slow).

Proves the whole pipeline (reading FLAC, features, CMVN, bucketing, the loop, checkpoints,
loading, greedy decoding) learns real speech, not only synthetic voices.
"""

import json

import pytest
import torch

from asr.config import from_dict
from asr.data.librispeech import prepare_librispeech
from asr.data.manifest import read_manifest, write_manifest
from asr.decode import transcribe_items
from asr.evaluate import error_rates
from asr.text import normalize_text
from asr.train import TrainConfig, load_model, train

ENCODER = {"kind": "conformer", "subsampling": 4, "conv_channels": 16, "dim": 96, "layers": 3, "heads": 4,
           "conv_kernel": 15, "dropout": 0.0}
FAMILIES = {
    "ctc": {},
    "transducer": {"transducer": {"pred_dim": 96, "joint_dim": 96}},
    "attention": {"attention": {"decoder": "lstm", "dim": 96, "layers": 1, "att_dim": 64, "dropout": 0.0,
                                "label_smoothing": 0.0, "ctc_weight": 0.3}},
}


@pytest.fixture(scope="module")
def four_utterances(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ls4")
    manifests = prepare_librispeech(shared_data / "librispeech-mini", out)
    items = sorted((it for m in manifests.values() for it in read_manifest(m)), key=lambda it: it["duration"])[:4]
    # each utterance 8 times per epoch (distinct ids), so an epoch is 8 steps of 4
    repeated = [{**it, "id": f"{it['id']}-{k}"} for k in range(8) for it in items]
    write_manifest(out / "train.jsonl", repeated)
    write_manifest(out / "four.jsonl", items)
    return out, items


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_overfits_real_librispeech(family, four_utterances, tmp_path):
    folder, items = four_utterances
    model = {"family": family, "specaugment": {"enabled": False}, "encoder": ENCODER, **FAMILIES[family]}
    cfg = from_dict(TrainConfig, {
        "model": model,
        "data": {"train": str(folder / "train.jsonl"), "batch_size": 4, "num_workers": 0, "sortagrad": False,
                 "cmvn_max_items": 0},
        "optim": {"lr": 0.003, "schedule": "warmup_cosine", "warmup_steps": 30, "weight_decay": 0.0},
        "epochs": 80, "out_dir": str(tmp_path), "ckpt_every_steps": 0, "keep_checkpoints": 1,
        "tensorboard": False, "threads": 1, "log_every": 40,
    })
    torch.set_num_threads(1)
    train(cfg)
    model, fam, tokenizer, _ = load_model(tmp_path / "last.pt")
    hyps = transcribe_items(model, fam, tokenizer, items, batch_size=4, progress=False)
    refs = [normalize_text(it["text"]) for it in items]
    cer = error_rates(refs, hyps)["cer"]
    print(f"{family}: CER {cer:.4f} on the 4 utterances it trained on")
    assert cer <= 0.05, json.dumps(list(zip(refs, hyps)), indent=1)  # measured here: 0.000 for each family
