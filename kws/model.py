"""The small-footprint CRNN keyword spotter (Arik et al. 2017) as the ``crnn`` model family.

Features ``(B, T, 40)`` -> one 2-D convolution over time x frequency (no padding, strided)
-> ReLU -> recurrent layers (GRU by default) -> the output at each clip's last frame ->
a dense layer -> logits over the classes (keywords + ``_unknown_`` + ``_silence_``).

The front-end (log-mel or PCEN, global CMVN, SpecAugment) is the toolkit's shared
:class:`asr.models.frontend.Frontend`. The CRNN's own sizes live in the model config's
``crnn`` section (:class:`asr.models.config.CRNNConfig`); the defaults give about 230k parameters.

Example:
    >>> from asr.models.config import CRNNConfig, ModelConfig
    >>> from asr.features import FeatureConfig
    >>> cfg = ModelConfig(family="crnn", features=FeatureConfig(n_mels=40))
    >>> model = CRNN(cfg, num_classes=12)
    >>> logits = model(torch.randn(2, 16000), torch.tensor([16000, 12000]))
    >>> logits.shape
    torch.Size([2, 12])
    >>> 200_000 < count_parameters(model) < 260_000
    True
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from asr.config import ConfigError
from asr.models import Family, LossOutput, register_family
from asr.models.config import CRNNConfig, ModelConfig
from asr.models.frontend import Frontend
from asr.models.rnn import run_rnn


def crnn_config(config: ModelConfig) -> CRNNConfig:
    """The ``crnn`` section of a model config, checked."""
    cfg = config.crnn
    if len(cfg.kernel) != 2 or len(cfg.stride) != 2 or min(list(cfg.kernel) + list(cfg.stride)) < 1:
        raise ConfigError("model.crnn: kernel and stride are two positive integers (time, frequency)")
    if cfg.dense_activation not in ("relu", "leaky_relu"):
        raise ConfigError(f"model.crnn.dense_activation: relu or leaky_relu, not {cfg.dense_activation!r}")
    if not 0.0 <= cfg.ctc_weight:
        raise ConfigError(f"model.crnn.ctc_weight: must be >= 0, got {cfg.ctc_weight}")
    if cfg.rnn_type not in ("gru", "lstm"):
        raise ConfigError(f"model.crnn.rnn_type: gru or lstm, not {cfg.rnn_type!r}")
    return cfg


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class CRNN(nn.Module):
    """Waveforms ``(B, N)`` + lengths ``(B,)`` -> class logits ``(B, C)``.

    ``features(wav, lengths)`` and ``conv(feats)`` expose the stages the streaming
    detector reuses; ``classify(conv_frames, lengths)`` runs the rest.
    """

    def __init__(self, config: ModelConfig, num_classes: int):
        super().__init__()
        c = crnn_config(config)
        self.cfg = c
        self.frontend = Frontend(config)
        n_feats = self.frontend.dim
        kt, kf = c.kernel
        st, sf = c.stride
        if kf > n_feats:
            raise ConfigError(f"model.crnn.kernel: {kf} frequency bins but the features have only {n_feats}")
        self.kernel_frames, self.stride_frames = kt, st
        self.conv = nn.Conv2d(1, c.conv_channels, (kt, kf), (st, sf))
        conv_dim = c.conv_channels * ((n_feats - kf) // sf + 1)
        rnn = nn.GRU if c.rnn_type == "gru" else nn.LSTM
        self.rnn = rnn(conv_dim, c.rnn_dim, c.rnn_layers, batch_first=True, bidirectional=c.bidirectional,
                       dropout=c.dropout if c.rnn_layers > 1 else 0.0)
        out_dim = c.rnn_dim * (2 if c.bidirectional else 1)
        self.dense = nn.Linear(out_dim, c.dense)
        self.output = nn.Linear(c.dense, num_classes)
        self.dropout = nn.Dropout(c.dropout)
        self.register_buffer("class_weights", torch.ones(num_classes))
        # letters + blank (0) for the auxiliary CTC head, only when it is on
        self.letter_head = nn.Linear(out_dim, len(LETTERS) + 1) if c.ctc_weight > 0 else None

    def conv_lengths(self, feat_lengths: torch.Tensor) -> torch.Tensor:
        """Convolution output frames for ``feat_lengths`` feature frames (at least one)."""
        return ((feat_lengths.clamp(min=self.kernel_frames) - self.kernel_frames) // self.stride_frames) + 1

    def conv_frames(self, feats: torch.Tensor) -> torch.Tensor:
        """Normalised features ``(B, T, F)`` -> convolution frames ``(B, T', C * F')`` after ReLU."""
        if feats.shape[1] < self.kernel_frames:  # shorter than the kernel: pad with zeros (the CMVN mean)
            feats = F.pad(feats, (0, 0, 0, self.kernel_frames - feats.shape[1]))
        x = F.relu(self.conv(feats.unsqueeze(1)))  # (B, C, T', F')
        return x.permute(0, 2, 1, 3).flatten(2)

    def classify(self, frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Convolution frames ``(B, T', D)`` + lengths -> logits ``(B, C)``."""
        return self.head(self.recurrent(frames), lengths)

    def recurrent(self, frames: torch.Tensor) -> torch.Tensor:
        """Convolution frames ``(B, T', D)`` -> recurrent outputs ``(B, T', H * dirs)``."""
        return run_rnn(self.rnn, self.dropout(frames))[0]

    def head(self, out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Recurrent outputs + lengths -> logits ``(B, C)`` (from the last valid frame)."""
        idx = (lengths - 1).clamp(min=0)
        last = out[torch.arange(out.shape[0], device=out.device), idx]
        if self.cfg.bidirectional:  # the backward direction has read the whole clip at its first frame
            h = self.cfg.rnn_dim
            last = torch.cat([last[:, :h], out[:, 0, h:]], dim=-1)
        h = self.dense(last)
        h = F.leaky_relu(h, 0.1) if self.cfg.dense_activation == "leaky_relu" else F.relu(h)
        return self.output(self.dropout(h))

    def forward(self, wav: torch.Tensor, wav_lengths: torch.Tensor, with_letters: bool = False):
        """Logits ``(B, C)``; with ``with_letters`` (training with the letter head), ``(logits,
        letter logits (B, T', letters + 1), frame lengths (B,))``: one call, so DDP sees it all."""
        feats, lengths = self.frontend(wav, wav_lengths)
        frames = self.conv_frames(feats)
        lengths = self.conv_lengths(lengths).clamp(max=frames.shape[1])
        out = self.recurrent(frames)
        logits = self.head(out, lengths)
        if not with_letters:
            return logits
        if self.letter_head is None:
            raise ValueError("this CRNN has no letter head (model.crnn.ctc_weight is 0)")
        return logits, self.letter_head(self.dropout(out)), lengths

    def macs_per_second(self, frame_rate: float = 100.0) -> int:
        """Multiply-accumulates per second of audio for one forward pass over a stream
        (convolution, recurrent layers and dense layers once per convolution frame;
        the feature extraction is not counted)."""
        c = self.cfg
        conv_rate = frame_rate / self.stride_frames
        conv = self.rnn.input_size * self.conv.kernel_size[0] * self.conv.kernel_size[1]
        gates = 3 if c.rnn_type == "gru" else 4
        dirs = 2 if c.bidirectional else 1
        rnn, inp = 0, self.rnn.input_size
        for _ in range(c.rnn_layers):
            rnn += dirs * gates * c.rnn_dim * (inp + c.rnn_dim)
            inp = c.rnn_dim * dirs
        dense = self.dense.in_features * self.dense.out_features + self.output.in_features * self.output.out_features
        return int(round(conv_rate * (conv + rnn + dense)))


LETTERS = "abcdefghijklmnopqrstuvwxyz'"  # the auxiliary CTC head's symbols (1..27; 0 is the blank)


def encode_letters(text: str) -> list[int]:
    """The CTC targets of a clip's text: its letters and apostrophes (case folded), others dropped.

    >>> encode_letters("Go!"), encode_letters("")
    ([7, 15], [])
    """
    return [LETTERS.index(ch) + 1 for ch in text.lower() if ch in LETTERS]


def crnn_loss(model: CRNN, batch: dict) -> LossOutput:
    """Class-weighted cross-entropy, plus ``ctc_weight`` times the letter CTC loss of each clip
    (weighted like its class) when that is on; the loss is a sum, ``weight`` the sum of the item
    weights."""
    inner = model.module if hasattr(model, "module") else model
    letters = inner.letter_head is not None
    if letters:
        logits, letter_logits, lengths = model(batch["wav"], batch["wav_lengths"], with_letters=True)
    else:
        logits = model(batch["wav"], batch["wav_lengths"])
    labels = batch["labels"]
    w = inner.class_weights[labels]
    loss = F.cross_entropy(logits.float(), labels, reduction="none", label_smoothing=inner.cfg.label_smoothing)
    metrics = {"errors": float((logits.argmax(-1) != labels).sum())}
    if letters:
        targets = [torch.tensor(encode_letters(t), dtype=torch.long) for t in batch["texts"]]
        target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
        log_probs = F.log_softmax(letter_logits.float(), -1).transpose(0, 1)  # (T', B, V)
        # zero_infinity: a clip too short for its word (fewer frames than letters) adds nothing
        ctc = F.ctc_loss(log_probs, torch.cat(targets + [torch.zeros(0, dtype=torch.long)]).to(logits.device),
                         lengths, target_lengths, blank=0, reduction="none", zero_infinity=True)
        metrics["ctc"] = float((ctc.detach() * w).sum())
        loss = loss + inner.cfg.ctc_weight * ctc
    return LossOutput(loss=(loss * w).sum(), weight=float(w.sum()), metrics=metrics)


@torch.no_grad()
def crnn_decode(model: CRNN, batch: dict) -> list[int]:
    return model(batch["wav"], batch["wav_lengths"]).argmax(-1).tolist()


def set_class_weights(model: CRNN, items: list[dict], labels: list[str]) -> None:
    """Inverse-frequency class weights (mean 1 over the training items) when ``class_balance`` is on."""
    if not model.cfg.class_balance:
        return
    index = {name: i for i, name in enumerate(labels)}
    counts = torch.zeros(len(labels))
    for it in items:
        if it.get("label") in index:
            counts[index[it["label"]]] += 1
    present = counts > 0
    weights = torch.ones(len(labels))
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    model.class_weights.copy_(weights)


def without_letter_head(ckpt: dict) -> dict:
    """A crnn checkpoint without the training-only letter CTC head (its config's ``ctc_weight`` set to 0)."""
    model = (ckpt.get("config") or {}).get("model") or {}
    where = "crnn" if "crnn" in model else "extra"
    crnn = model.get("crnn") if where == "crnn" else (model.get("extra") or {}).get("crnn")
    if not crnn or not crnn.get("ctc_weight"):
        return ckpt
    ckpt = dict(ckpt, model={k: v for k, v in ckpt["model"].items() if not k.startswith("letter_head.")})
    config = dict(ckpt["config"])
    if where == "crnn":
        config["model"] = dict(model, crnn=dict(crnn, ctc_weight=0.0))
    else:
        config["model"] = dict(model, extra=dict(model["extra"], crnn=dict(crnn, ctc_weight=0.0)))
    ckpt["config"] = config
    return ckpt


def build_crnn(config: ModelConfig, num_classes: int) -> CRNN:
    return CRNN(config, num_classes)


FAMILY = register_family(Family("crnn", build_crnn, crnn_loss, crnn_decode, targets="labels", prepare=set_class_weights,
                                model_type=CRNN))
