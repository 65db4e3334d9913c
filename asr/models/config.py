"""Model configuration: one dataclass tree shared by every family.

A config names its ``family`` (``ctc``, ``transducer``, ``attention``, or one a
package registers, such as the keyword spotter) and fills the sections it uses;
the other sections keep their defaults and are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from asr.features import FeatureConfig


@dataclass
class SpecAugmentConfig:
    freq_masks: int = 2  # frequency masks per utterance
    freq_width: int = 27  # widest frequency mask (bins)
    time_masks: int = 2  # time masks per utterance
    time_width: float = 0.05  # widest time mask, as a fraction of the utterance
    enabled: bool = True  # only ever active in training mode


@dataclass
class EncoderConfig:
    kind: str = "rnn"  # rnn (Deep Speech 2 style) | conformer
    subsampling: int = 4  # time downsampling of the convolutional front: 2, 4 or 8
    conv_channels: int = 32  # channels of the 2-D convolutions
    dim: int = 256  # hidden size (per direction for bidirectional RNNs); model dim for conformer
    layers: int = 3  # recurrent or conformer layers
    dropout: float = 0.1
    # rnn
    rnn_type: str = "gru"  # gru | lstm
    bidirectional: bool = True  # False = forward-only (streaming)
    lookahead: int = 0  # frames of future context of the row convolution (forward-only encoders)
    # conformer
    heads: int = 4  # attention heads
    ff_mult: int = 4  # feed-forward expansion
    conv_kernel: int = 15  # depthwise convolution kernel
    causal: bool = False  # causal convolutions + chunked attention mask (streaming)
    chunk_size: int = 0  # frames per attention chunk when causal (0 = fully causal, frame by frame)
    left_chunks: int = -1  # chunks of left context when causal (-1 = all)


@dataclass
class CTCConfig:
    pass


@dataclass
class TransducerConfig:
    predictor: str = "lstm"  # lstm | stateless (embedding of the last `context` tokens)
    pred_dim: int = 256  # predictor embedding / hidden size
    pred_layers: int = 1  # LSTM layers
    context: int = 2  # tokens of context of the stateless predictor
    joint_dim: int = 256  # joiner hidden size
    joint_chunk: int = 0  # utterances per joint/loss chunk (0 = whole batch); chunks are trimmed and recomputed in backward


@dataclass
class AttentionConfig:
    decoder: str = "lstm"  # lstm (location-aware, Chorowski et al. 2015) | transformer
    dim: int = 256  # decoder hidden size
    layers: int = 1  # decoder layers
    heads: int = 4  # transformer heads
    att_dim: int = 128  # attention projection size (lstm)
    conv_channels: int = 10  # location filters (lstm)
    conv_kernel: int = 31  # location filter width (lstm)
    dropout: float = 0.1
    label_smoothing: float = 0.1
    ctc_weight: float = 0.3  # joint CTC-attention training: loss = w * ctc + (1 - w) * attention
    max_len_ratio: float = 1.0  # greedy decoding stops after this many tokens per encoder frame
    guided_weight: float = 0.0  # weight of the guided-attention loss (diagonal prior; lstm decoder only; 0 = off)
    guided_sigma: float = 0.2  # width of that diagonal, as a fraction of the utterance


@dataclass
class CRNNConfig:
    """The small-footprint keyword spotter of the ``kws`` package (Arik et al. 2017; :mod:`kws.model`)."""

    conv_channels: int = 32  # filters of the 2-D convolution
    kernel: list[int] = field(default_factory=lambda: [20, 5])  # convolution size (time frames, frequency bins)
    stride: list[int] = field(default_factory=lambda: [8, 2])  # convolution stride (time, frequency)
    rnn_type: str = "gru"  # gru | lstm
    rnn_dim: int = 88  # hidden units per direction
    rnn_layers: int = 2  # recurrent layers
    bidirectional: bool = False  # False = forward-only (what the streaming detector runs)
    dense: int = 64  # units of the dense layer before the output
    dense_activation: str = "relu"  # relu | leaky_relu (slope 0.1: its units cannot all die, which once left a model at chance)
    dropout: float = 0.1  # dropout after the convolution and before the output
    class_balance: bool = True  # weight the loss by inverse class frequency of the training set
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    # Auxiliary CTC over the letters of each clip's "text" (the word said), on every recurrent
    # frame; 0 = off. Only training uses the extra head (kws export drops it): it asks the
    # recurrent layers to spell the word, meant to separate look-alikes (go / no / down); on the
    # real held-out speakers it changed accuracy by less than a point (README).
    ctc_weight: float = 0.0


@dataclass
class ModelConfig:
    family: str = "ctc"  # ctc | transducer | attention | crnn (the keyword spotter)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    specaugment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    ctc: CTCConfig = field(default_factory=CTCConfig)
    transducer: TransducerConfig = field(default_factory=TransducerConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    crnn: CRNNConfig = field(default_factory=CRNNConfig)
    extra: dict = field(default_factory=dict)  # settings of families registered by other packages

    def __post_init__(self) -> None:
        # configs and checkpoints written before the crnn section existed kept it under extra.crnn
        if isinstance(self.extra, dict) and "crnn" in self.extra:
            from asr.config import from_dict

            extra = dict(self.extra)
            old = extra.pop("crnn") or {}
            self.crnn = from_dict(CRNNConfig, old, source="model.extra.crnn") if isinstance(old, dict) else old
            self.extra = extra
