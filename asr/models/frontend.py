"""The model-side front-end: features, global normalisation, SpecAugment."""

from __future__ import annotations

import torch
import torch.nn as nn

from asr.augment import SpecAugment
from asr.features import FeatureExtractor, GlobalCMVN
from asr.models.config import ModelConfig


class Frontend(nn.Module):
    """Waveforms ``(B, N)`` + lengths -> normalised, augmented features ``(B, T, F)`` + lengths.

    The normalisation statistics are buffers (saved in checkpoints); the training loop
    sets them from the training manifest with :meth:`set_cmvn`. SpecAugment acts in
    training mode only.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.features = FeatureExtractor(config.features)
        dim = self.features.dim
        self.cmvn = GlobalCMVN(torch.zeros(dim), torch.ones(dim))
        sa = config.specaugment
        self.specaugment = (
            SpecAugment(sa.freq_masks, min(sa.freq_width, dim // 2), sa.time_masks, sa.time_width) if sa.enabled else None
        )

    @property
    def dim(self) -> int:
        return self.features.dim

    def set_cmvn(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.cmvn.mean.copy_(mean)
        self.cmvn.std.copy_(std.clamp(min=1e-5))

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(wav.device.type, enabled=False):  # features in float32 under AMP
            feats, lengths = self.features(wav.float(), lengths)
            feats = self.cmvn(feats, lengths)
        if self.specaugment is not None and self.training:
            feats = self.specaugment(feats, lengths)
        return feats, lengths
