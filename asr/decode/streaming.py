"""Streaming recognition for CTC and transducer models with forward-only / causal encoders.

Audio arrives in chunks of any size; :class:`Recognizer` runs the pipeline every
``chunk_ms`` of audio: streaming features (:meth:`FeatureExtractor.infer`), global CMVN,
the encoder's ``infer`` (forward-only RNN or causal Conformer) and greedy decoding carried
across chunks (CTC: the last frame's best token, for merging repeats; transducer: the
predictor state and its last output). The final text equals offline greedy decoding of
the whole utterance with the same model.

Example:
    >>> from asr.models.config import ModelConfig, EncoderConfig
    >>> from asr.models.ctc import CTCModel
    >>> from asr.text import CharTokenizer
    >>> tok = CharTokenizer.english()
    >>> cfg = ModelConfig(encoder=EncoderConfig(dim=16, layers=1, bidirectional=False, lookahead=2))
    >>> model = CTCModel(cfg, tok.vocab_size)
    >>> rec = Recognizer(model, tok, chunk_ms=200)
    >>> wav = torch.randn(16000)
    >>> state = None
    >>> for i in range(0, 16000, 1000):  # 62.5 ms pieces
    ...     partial, state = rec.infer(wav[i : i + 1000], state)
    >>> text, state = rec.infer(wav[:0], state, final=True)
    >>> text == transcribe_stream(model, tok, wav, chunk_ms=100)
    True
    >>> " ".join(w.word for w in rec.words(state)) == text
    True
    >>> algorithmic_latency_ms(model, chunk_ms=200)  # 200 + 2*4*10 + (6*10 + 25)
    365.0
"""

from __future__ import annotations

import torch
import torch.nn as nn

from asr.decode.ctc import WordSplitter
from asr.decode.timestamps import WordTiming, frame_seconds, words_from_alignment
from asr.errors import UsageError
from asr.models import Family, all_families, family_of
from asr.text import Tokenizer

__all__ = ["Recognizer", "transcribe_stream", "algorithmic_latency_ms"]


def _check_streamable(encoder: nn.Module) -> None:
    if not getattr(encoder, "streamable", False):
        raise UsageError(
            f"{type(encoder).__name__} cannot stream: it sees the whole utterance. Use a forward-only RNN "
            "encoder (bidirectional: false, optionally lookahead > 0) or a causal Conformer (causal: true)"
        )


class Recognizer:
    """Incremental greedy recognition of one audio stream.

    Args:
        model: a model whose family streams (``Family.stream_decoder``: CTC and transducer) and whose
            encoder streams (forward-only RNN or causal Conformer); it is put in eval mode.
        tokenizer: turns token ids into text.
        chunk_ms: the pipeline runs on whole chunks of this much audio (the rest waits for
            the next call or ``final``). Results do not depend on it; latency and the
            per-call overhead do.
        family: the model's family (default: the family that built ``model``, from the registry).

    ``infer(samples (n,), state=None, final=False) -> (text so far, state)``. Start each
    stream with ``state=None``; pass ``final=True`` with the last samples (possibly none)
    to flush the buffered audio and the encoder's look-ahead. Each stream has its own
    state, so one recognizer serves many streams. ``words(state)`` gives the words so far
    with their times and confidences (:class:`~asr.decode.timestamps.WordTiming`).
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, chunk_ms: float = 200.0, family: Family | None = None):
        family = family or family_of(model)
        if family.stream_decoder is None:
            raise UsageError(f"the {family.name} family cannot stream (streaming recognition: "
                             f"{', '.join(f.name for f in all_families() if f.stream_decoder)})")
        _check_streamable(model.encoder)
        if chunk_ms <= 0:
            raise UsageError(f"chunk_ms must be positive, got {chunk_ms}")
        self.family = family
        self.model = model.eval()
        self.decoder = family.stream_decoder(self.model)
        self.tokenizer = tokenizer
        self.chunk_ms = chunk_ms
        sr = model.frontend.features.config.sample_rate
        self.chunk_samples = max(1, int(round(chunk_ms * sr / 1000)))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def sample_rate(self) -> int:
        """The rate ``infer`` expects its samples at."""
        return self.model.frontend.features.config.sample_rate

    def init_state(self) -> dict:
        """A fresh stream: no audio, no tokens."""
        return {"samples": torch.zeros(0, device=self.device), "features": None, "encoder": None,
                "decoder": self.decoder.init_state(self.device), "finished": False}

    @torch.no_grad()
    def infer(self, samples: torch.Tensor, state: dict | None = None, final: bool = False) -> tuple[str, dict]:
        """Feed samples ``(n,)`` (any ``n``, 0 included) -> the text recognised so far and the new state.

        The text can only grow by appending (greedy decisions are never revised); after
        ``final`` it is the full transcript and the state cannot take more audio.
        """
        if state is None:
            state = self.init_state()
        elif state["finished"]:
            raise ValueError("this stream is finished (final=True was passed); start a new one with state=None")
        state = dict(state)
        samples = torch.as_tensor(samples)  # a numpy array (a microphone block) works too
        pending = torch.cat([state["samples"], samples.reshape(-1).to(self.device, torch.float32)])
        ready = pending.shape[0] if final else pending.shape[0] // self.chunk_samples * self.chunk_samples
        if ready > 0 or final:
            self._process(pending[:ready], state, final)
        state["samples"] = pending[ready:]
        state["finished"] = final
        return self.tokenizer.decode(state["decoder"]["tokens"]), state

    def words(self, state: dict | None) -> list[WordTiming]:
        """The words recognised so far in a stream's ``state``: times in seconds from the start of
        the stream, and confidences (see :mod:`asr.decode.timestamps`; for CTC the same as
        offline greedy decoding gives). The last word may still grow until ``final``."""
        if state is None:
            return []
        if getattr(self, "_splitter", None) is None:
            self._splitter = WordSplitter(self.tokenizer)
        dec = state["decoder"]
        return words_from_alignment(dec["tokens"], self.decoder.alignment(dec), self._splitter, self.tokenizer,
                                    frame_seconds(self.model))

    def _process(self, samples: torch.Tensor, state: dict, final: bool) -> None:
        frontend, encoder = self.model.frontend, self.model.encoder
        with torch.autocast(samples.device.type, enabled=False):  # features in float32, as offline
            feats, state["features"] = frontend.features.infer(samples.unsqueeze(0), state["features"])
            feats = frontend.cmvn(feats)
        enc, state["encoder"] = encoder.infer(feats, state["encoder"], final=final)
        if enc.shape[1] > 0:
            state["decoder"] = self.decoder.step(enc, state["decoder"])


def transcribe_stream(model: nn.Module, tokenizer: Tokenizer, wav: torch.Tensor, chunk_ms: float = 200.0) -> str:
    """Transcribe a waveform ``(N,)`` by feeding it to a :class:`Recognizer` ``chunk_ms`` at a time."""
    rec = Recognizer(model, tokenizer, chunk_ms)
    wav = wav.reshape(-1)
    state = None
    for start in range(0, wav.shape[0], rec.chunk_samples):
        _, state = rec.infer(wav[start : start + rec.chunk_samples], state)
    text, _ = rec.infer(wav[:0], state, final=True)
    return text


def algorithmic_latency_ms(model: nn.Module, chunk_ms: float = 200.0) -> float:
    """Upper bound on the algorithmic latency of streaming ``model`` in ``chunk_ms`` chunks (ms).

    ``chunk_ms + look-ahead``, where the look-ahead is how much audio past the start of an
    encoder frame (frame ``k`` starts at ``k * subsampling * hop``) must have arrived before
    that frame is final:

    * the subsampling convolutions: ``(rf - 1) * hop + win``, with ``rf = 2^(layers+1) - 1``
      feature frames per output frame (7 for 4x: 6 * 10 + 25 = 85 ms at the defaults);
    * forward-only RNN: ``lookahead * subsampling * hop`` more (the row convolution);
    * causal Conformer: ``(max(chunk_size, 1) - 1) * subsampling * hop`` more (the first
      frame of a chunk waits for the chunk's last frame; frame by frame adds nothing).

    Compute time is not included: it is the delay the algorithm imposes on a real-time stream.
    """
    encoder = model.encoder
    _check_streamable(encoder)
    fc = model.frontend.features.config
    hop_ms = fc.hop_length * 1000.0 / fc.sample_rate
    win_ms = fc.win_length * 1000.0 / fc.sample_rate
    sub = encoder.subsampling_layer
    conv_ms = (sub.receptive_field - 1) * hop_ms + win_ms
    if hasattr(encoder, "rnn"):
        future = encoder.lookahead.future if encoder.lookahead is not None else 0
    else:
        future = max(encoder.config.chunk_size, 1) - 1
    return float(chunk_ms + future * encoder.subsampling * hop_ms + conv_ms)
