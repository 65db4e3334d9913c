"""Configuration of a training run: ``TrainConfig`` with its ``data`` and ``optim`` sections.

Mapped from YAML by :func:`asr.config.load_config`; every field has a default. Re-exported
by :mod:`asr.train`.

Example:
    >>> from asr.config import from_dict
    >>> cfg = from_dict(TrainConfig, {"data": {"train": "train.jsonl"}}, ["optim.lr=3e-4", "epochs=5"])
    >>> cfg.data.train, cfg.optim.lr, cfg.epochs, cfg.model.family
    ('train.jsonl', 0.0003, 5, 'ctc')
"""

from __future__ import annotations

from dataclasses import dataclass, field

from asr.models.config import ModelConfig


@dataclass
class DataConfig:
    train: str = ""  # training manifest (JSON lines)
    dev: str = ""  # dev manifest for per-epoch loss / error rate; empty = no dev evaluation
    tokenizer: str = "char"  # char | bpe | unigram (SentencePiece trained on the train texts)
    vocab_size: int = 256  # SentencePiece vocabulary size (bpe / unigram)
    labels: list[str] = field(default_factory=list)  # class names; non-empty = targets from the manifest "label" field
    shuffle: bool = True  # shuffle batches (inside duration buckets) each epoch
    batch_size: int = 16  # utterances per batch and rank (0 = only max_batch_seconds caps it)
    max_batch_seconds: float = 0.0  # padded seconds per batch (0 = no cap)
    num_buckets: int = 10  # duration buckets of the sampler
    num_workers: int = 2  # DataLoader worker processes
    sortagrad: bool = True  # first epoch shortest utterances first (SortaGrad)
    skip_bad: bool = False  # skip unreadable audio / malformed manifest lines (counted) instead of failing
    min_duration: float = 0.0  # drop training utterances shorter than this (seconds)
    max_duration: float = 0.0  # drop training utterances longer than this (seconds; 0 = keep all)
    noise_manifest: str = ""  # manifest of noise recordings for additive noise; empty = no noise
    snr_range: list[float] = field(default_factory=lambda: [5.0, 20.0])  # SNR of added noise in dB, drawn uniformly
    noise_prob: float = 0.5  # probability of adding noise to an utterance (needs noise_manifest)
    speed_factors: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])  # speed perturbation factors
    speed_prob: float = 0.0  # probability of a speed change
    max_shift_ms: float = 0.0  # largest random time shift (0 = off)
    shift_prob: float = 0.5  # probability of a time shift
    gain_db: list[float] = field(default_factory=lambda: [0.0, 0.0])  # random gain range in dB (0, 0 = off)
    gain_prob: float = 0.5  # probability of a gain change (when gain_db is not 0, 0)
    reverb_prob: float = 0.0  # probability of reverberation by a synthetic room impulse response
    rt60: list[float] = field(default_factory=lambda: [0.2, 0.8])  # its reverberation time range in seconds
    cmvn_max_items: int = 500  # training utterances for the global CMVN statistics (0 = all)


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 1e-2  # decoupled (adamw) or L2 (adam, sgd) weight decay; not on biases and norms
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # Adam betas
    momentum: float = 0.9  # SGD momentum
    schedule: str = "warmup_cosine"  # noam | warmup_cosine | warmup_linear | constant
    warmup_steps: int = 500  # linear warm-up steps
    min_lr_ratio: float = 0.01  # decays end at (never go below) lr * min_lr_ratio
    grad_clip: float = 5.0  # clip the total gradient norm (0 = off)
    accum_steps: int = 1  # batches accumulated per optimizer step


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)  # the model (family, front-end, encoder, heads)
    data: DataConfig = field(default_factory=DataConfig)  # manifests, tokenizer, batching, augmentation
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizer and learning-rate schedule
    epochs: int = 20  # passes over the training data
    max_steps: int = 0  # stop after this many optimizer steps (0 = no limit)
    max_minutes: float = 0.0  # wall-clock budget of one invocation; a checkpoint is saved on stopping (0 = none)
    amp: str = "none"  # none | fp16 | bf16 mixed precision (CUDA only; ignored on CPU)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0  # seed of python, numpy and torch (model init, dropout, shuffling, augmentation)
    out_dir: str = "exp/run"  # checkpoints, metrics.csv and TensorBoard logs
    ckpt_every_steps: int = 1000  # write out_dir/last.pt every this many steps (0 = only at epoch ends)
    keep_checkpoints: int = 5  # epoch checkpoints kept (older ones deleted; 0 = keep all)
    early_stop_patience: int = 0  # stop after this many epochs without dev improvement (0 = off)
    early_stop_metric: str = "error"  # loss | error: dev metric for best.pt and early stopping
    max_bad_steps: int = 20  # non-finite losses skipped before training stops with an error
    log_every: int = 50  # steps between metrics rows
    tensorboard: bool = True  # also log to out_dir/tensorboard (when tensorboard is installed)
    distributed: str = "ddp"  # ddp | fsdp (under torchrun)
    average_last: int = 0  # average the last N epoch checkpoints into out_dir/avg.pt at the end (0 = off)
    threads: int = 0  # torch.set_num_threads (0 = torch's default)
    init_from: str = ""  # checkpoint whose model weights start a new run (not a resume: fresh optimizer and schedule)
