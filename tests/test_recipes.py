"""Every training config shipped under recipes/ loads and builds its model.

A typo in a recipe (an unknown key, a misspelt decoder name, a YAML boolean where a label was
meant) would otherwise only surface when someone runs the recipe.
"""

from pathlib import Path

import pytest

import kws  # noqa: F401  (registers the crnn family)
from asr.config import load_config
from asr.models import get_family
from asr.train import TrainConfig

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (REPO / "recipes").glob("*/conf/*.yaml") if p.parent.parent.name != "active_learning")


def test_every_recipe_config_is_found():
    names = {f"{p.parent.parent.name}/{p.name}" for p in CONFIGS}
    assert {"synthetic/attention.yaml", "synthetic/kws.yaml", "librispeech/ctc.yaml", "speech_commands/crnn12.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_recipe_config_builds_its_model(path, one_thread):
    cfg = load_config(TrainConfig, path)
    family = get_family(cfg.model.family)
    labels = cfg.data.labels
    assert all(isinstance(label, str) for label in labels), f"{path}: a label YAML read as a non-string"
    model = family.build(cfg.model, len(labels) if labels else 40)
    params = sum(p.numel() for p in model.parameters())
    assert params > 10_000
    if labels:  # the 12-class keyword protocols; the 35-class one takes its words from the data
        assert len(labels) == 12 and {"_unknown_", "_silence_", "yes", "no", "on", "off"} <= set(labels)


def test_synthetic_attention_recipe_uses_the_location_aware_decoder():
    """The measured 30-minute attention run (README) used the LSTM decoder; the Transformer one missed the target."""
    cfg = load_config(TrainConfig, REPO / "recipes/synthetic/conf/attention.yaml")
    model = get_family("attention").build(cfg.model, 40)
    assert type(model.decoder).__name__ == "LSTMAttentionDecoder"
    assert cfg.max_minutes == 30 and cfg.data.batch_size == 32
