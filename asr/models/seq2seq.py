"""The attention encoder-decoder family: shared encoder + attention decoder, optional joint CTC.

The decoder (``attention.decoder``: location-aware LSTM or Transformer, see
:mod:`asr.models.attention`) reads ``<sos> y`` and predicts ``y <eos>`` (``<sos>`` and ``<eos>``
are both id 2). With ``ctc_weight > 0`` a CTC head on the encoder is trained jointly:
``loss = ctc_weight * ctc + (1 - ctc_weight) * attention`` per utterance (Kim et al. 2017).
With ``guided_weight > 0`` (LSTM decoder) a guided-attention loss (Tachibana et al. 2018) is
added: attention mass far from the diagonal ``t / T = u / U`` is penalised, which speeds up
learning the alignment when training time is short.

Example:
    >>> from asr.models.config import ModelConfig, EncoderConfig, AttentionConfig
    >>> cfg = ModelConfig(family="attention", encoder=EncoderConfig(dim=16, layers=1),
    ...                   attention=AttentionConfig(dim=32, att_dim=16))
    >>> model = AttentionModel(cfg, vocab_size=30).eval()
    >>> wav, wav_lengths = torch.randn(2, 16000), torch.tensor([16000, 8000])
    >>> model(wav, wav_lengths, torch.tensor([[2, 5, 6], [2, 7, 0]]))[0].shape
    torch.Size([2, 3, 30])
    >>> batch = {"wav": wav, "wav_lengths": wav_lengths, "tokens": torch.tensor([[5, 6], [7, 0]]),
    ...          "token_lengths": torch.tensor([2, 1])}
    >>> out = attention_loss(model, batch)
    >>> out.weight, sorted(out.metrics)
    (2.0, ['acc', 'att', 'ctc', 'empty', 'guided', 'tokens', 'too_short'])
    >>> len(attention_decode(model, batch))
    2
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from asr.config import ConfigError
from asr.constants import BLANK, EOS
from asr.errors import UsageError
from asr.models import Family, LossOutput, register_family
from asr.models.attention import build_decoder
from asr.models.config import ModelConfig
from asr.models.ctc import CTCHead, ctc_loss_per_utt
from asr.models.encoders import build_encoder
from asr.models.subsampling import length_mask
from asr.models.frontend import Frontend

PAD = BLANK  # padding of token tensors


class AttentionModel(nn.Module):
    """Waveforms ``(B, N)`` + decoder inputs ``(B, U)`` -> logits ``(B, U, V)``.

    ``.frontend`` and ``.encoder`` are the shared ones; ``.decoder`` is chosen by
    ``config.attention.decoder`` and projects the encoder output to its own size where needed;
    ``.ctc_head`` (a :class:`~asr.models.ctc.CTCHead` on the encoder) exists when
    ``ctc_weight > 0``, else it is ``None``.
    """

    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        a = config.attention
        if not 0.0 <= a.ctc_weight <= 1.0:
            raise ConfigError(f"ctc_weight must be in [0, 1], got {a.ctc_weight}")
        if not 0.0 <= a.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {a.label_smoothing}")
        if a.max_len_ratio <= 0:
            raise ConfigError(f"max_len_ratio must be positive, got {a.max_len_ratio}")
        if a.guided_weight < 0 or a.guided_sigma <= 0:
            raise ConfigError(f"guided_weight must be >= 0 and guided_sigma > 0, got {a.guided_weight}, {a.guided_sigma}")
        if a.guided_weight > 0 and a.decoder != "lstm":
            raise ConfigError(f"guided_weight needs the lstm decoder (its attention weights), not {a.decoder!r}")
        self.vocab_size = vocab_size
        self.ctc_weight, self.label_smoothing, self.max_len_ratio = a.ctc_weight, a.label_smoothing, a.max_len_ratio
        self.guided_weight, self.guided_sigma = a.guided_weight, a.guided_sigma
        self.frontend = Frontend(config)
        self.encoder = build_encoder(config.encoder, self.frontend.dim)
        self.decoder = build_decoder(a, self.encoder.output_dim, vocab_size)
        self.ctc_head = CTCHead(self.encoder.output_dim, vocab_size) if a.ctc_weight > 0 else None

    def encode(self, wav: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, N)``, ``(B,)`` -> encoder output ``(B, T', D)`` and frame counts ``(B,)``."""
        feats, lengths = self.frontend(wav, wav_lengths)
        return self.encoder(feats, lengths)

    def forward(
        self, wav: torch.Tensor, wav_lengths: torch.Tensor, ys_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Teacher-forced logits ``(B, U, V)`` for decoder inputs ``ys_in`` ``(B, U)`` (starting with ``<sos>``),
        with the encoder output ``(B, T', D)`` and its frame counts ``(B,)`` (for the CTC branch), and
        the attention weights ``(B, U, T')`` when the guided-attention loss is on (else ``None``).

        Training calls this through ``model(...)`` so that a DistributedDataParallel wrapper
        synchronises the gradients.
        """
        enc, lengths = self.encode(wav, wav_lengths)
        memory = _attendable(enc, lengths)
        if self.guided_weight > 0:
            logits, weights = self.decoder(*memory, ys_in, return_weights=True)
            return logits, enc, lengths, weights
        return self.decoder(*memory, ys_in), enc, lengths, None


def _attendable(enc: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Give every utterance at least one (zero) frame to attend to: an empty memory has no softmax."""
    if enc.shape[1] == 0:
        enc = enc.new_zeros(enc.shape[0], 1, enc.shape[2])
    return enc, lengths.clamp(min=1)


def decoder_io(tokens: torch.Tensor, token_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded labels ``(B, U)`` -> decoder inputs ``[sos] + y``, targets ``y + [eos]`` (padded with 0),
    both ``(B, U + 1)``, and the mask of target positions ``(B, U + 1)``.

    >>> ys_in, ys_out, valid = decoder_io(torch.tensor([[5, 6], [7, 0]]), torch.tensor([2, 1]))
    >>> ys_in.tolist(), ys_out.tolist(), valid.int().tolist()
    ([[2, 5, 6], [2, 7, 0]], [[5, 6, 2], [7, 2, 0]], [[1, 1, 1], [1, 1, 0]])
    """
    B = tokens.shape[0]
    valid_in = length_mask(token_lengths, tokens.shape[1])
    tokens = tokens.masked_fill(~valid_in, PAD)
    ys_in = torch.cat([tokens.new_full((B, 1), EOS), tokens], dim=1)
    ys_out = torch.cat([tokens, tokens.new_full((B, 1), PAD)], dim=1)
    ys_out = ys_out.scatter(1, token_lengths.unsqueeze(1), EOS)
    valid = length_mask(token_lengths + 1, tokens.shape[1] + 1)
    return ys_in, ys_out, valid


def guided_attention_penalty(
    weights: torch.Tensor, enc_lengths: torch.Tensor, out_lengths: torch.Tensor, sigma: float
) -> torch.Tensor:
    """Guided-attention penalty per utterance (Tachibana et al. 2018), summed over decoder steps.

    Step ``u`` of ``U_b`` putting weight ``a`` on frame ``t`` of ``T_b`` costs
    ``a * (1 - exp(-((t + 1/2) / T_b - (u + 1/2) / U_b)^2 / (2 sigma^2)))``: nothing on the diagonal,
    almost 1 far from it. ``weights`` ``(B, U, T)``; ``enc_lengths`` ``(B,)`` = ``T_b``;
    ``out_lengths`` ``(B,)`` = ``U_b`` (decoder steps, ``<eos>`` included). Returns ``(B,)``.

    >>> w = torch.eye(4).unsqueeze(0)  # step u attends frame u: on the diagonal
    >>> guided_attention_penalty(w, torch.tensor([4]), torch.tensor([4]), 0.2).item()
    0.0
    """
    B, U, T = weights.shape
    steps = torch.arange(U, device=weights.device, dtype=torch.float32)
    frames = torch.arange(T, device=weights.device, dtype=torch.float32)
    u = (steps + 0.5) / out_lengths.clamp(min=1).unsqueeze(1).float()  # (B, U)
    t = (frames + 0.5) / enc_lengths.clamp(min=1).unsqueeze(1).float()  # (B, T)
    cost = 1.0 - torch.exp(-(u.unsqueeze(2) - t.unsqueeze(1)) ** 2 / (2.0 * sigma**2))  # (B, U, T)
    valid = length_mask(out_lengths, U).unsqueeze(2) & length_mask(enc_lengths, T).unsqueeze(1)
    return (weights.float() * cost * valid).sum((1, 2))


def attention_loss(model: AttentionModel, batch: dict) -> LossOutput:
    """Label-smoothed cross entropy of the decoder (summed per utterance), joint with CTC.

    Per utterance: ``w * ctc + (1 - w) * att`` with ``w = ctc_weight``. Utterances with an empty
    transcript or too few frames for their labels are left out of the CTC part (and counted,
    ``empty`` / ``too_short``); an empty transcript still trains the decoder to emit ``<eos>``.
    With ``guided_weight > 0``, ``guided_weight *`` :func:`guided_attention_penalty` is added.
    ``weight`` is the number of utterances (those kept by CTC when ``w = 1``).
    Metrics: ``att``, ``ctc`` and ``guided`` (sums of the partial losses), ``acc`` (correctly
    predicted target tokens, ``<eos>`` included) over ``tokens`` (target tokens), ``empty``, ``too_short``.
    """
    tokens, token_lengths = batch["tokens"], batch["token_lengths"]
    B = tokens.shape[0]
    w = model.ctc_weight

    ys_in, ys_out, valid = decoder_io(tokens, token_lengths)
    logits, enc, lengths, weights = model(batch["wav"], batch["wav_lengths"], ys_in)
    logits = logits.float()  # (B, U + 1, V)
    ce = F.cross_entropy(logits.transpose(1, 2), ys_out, reduction="none", label_smoothing=model.label_smoothing)
    att = (ce * valid).sum(1)  # (B,)
    correct = ((logits.argmax(-1) == ys_out) & valid).sum()

    metrics = {"att": float(att.detach().sum()), "acc": float(correct), "tokens": float(valid.sum())}
    if model.ctc_head is not None:
        ctc, keep, counts = ctc_loss_per_utt(model.ctc_head(enc), lengths, tokens, token_lengths)
        metrics["ctc"] = float(ctc.detach().sum())
        loss = w * ctc.sum() + (1.0 - w) * att.sum()
        weight = float(keep.sum()) if w == 1.0 else float(B)
    else:
        counts = {"empty": float((token_lengths == 0).sum()), "too_short": 0.0}
        metrics["ctc"] = 0.0
        loss, weight = att.sum(), float(B)
    metrics.update(counts)
    metrics["guided"] = 0.0
    if weights is not None:
        guided = guided_attention_penalty(weights, _attendable(enc, lengths)[1], token_lengths + 1, model.guided_sigma)
        metrics["guided"] = float(guided.detach().sum())
        loss = loss + model.guided_weight * guided.sum()
    return LossOutput(loss=loss, weight=weight, metrics=metrics)


@torch.no_grad()
def attention_greedy(
    model: AttentionModel, enc: torch.Tensor, lengths: torch.Tensor, max_len: int | None = None
) -> list[list[int]]:
    """Batched greedy decoding: every utterance steps together until all have emitted ``<eos>``.

    Args:
        enc: encoder output ``(B, T, D)``; ``lengths`` ``(B,)`` its valid frames.
        max_len: the most tokens per utterance; by default ``ceil(max_len_ratio * T_b)`` for an
            utterance of ``T_b`` encoder frames (a guard against hypotheses that never end).

    Returns:
        token-id lists without ``<sos>``/``<eos>``.
    """
    B = enc.shape[0]
    if B == 0:
        return []
    limits = torch.ceil(model.max_len_ratio * lengths.float()).long()
    if max_len is not None:
        limits = limits.clamp(max=max_len)
    enc, att_lengths = _attendable(enc, lengths)
    mask = length_mask(att_lengths, enc.shape[1])
    decoder = model.decoder
    state = decoder.init_state(enc, att_lengths)
    token = torch.full((B,), EOS, dtype=torch.long, device=enc.device)
    hyp_len = torch.zeros(B, dtype=torch.long, device=enc.device)
    done = limits <= 0
    steps = int(limits.max())
    out = torch.zeros(B, max(steps, 1), dtype=torch.long, device=enc.device)
    for i in range(steps):
        if bool(done.all()):
            break
        log_probs, state = decoder.step(token, state, enc, mask)
        token = log_probs.argmax(-1)
        out[:, i] = token
        emitted = ~done & (token != EOS)
        hyp_len += emitted.long()
        done = done | (token == EOS) | (hyp_len >= limits)
    out, hyp_len = out.cpu(), hyp_len.cpu()
    return [out[b, : int(hyp_len[b])].tolist() for b in range(B)]


@torch.no_grad()
def attention_decode(model: AttentionModel, batch: dict) -> list[list[int]]:
    """Greedy token ids for a batch (``wav``, ``wav_lengths``)."""
    enc, lengths = model.encode(batch["wav"], batch["wav_lengths"])
    return attention_greedy(model, enc, lengths)


def build_attention(config: ModelConfig, vocab_size: int) -> AttentionModel:
    return AttentionModel(config, vocab_size)


def attention_nbest(model: AttentionModel, batch: dict, options, nbest: int | None = None, tokenizer=None,
                    lm=None) -> list:
    """Beam search with ``options.beam``, the joint CTC prefix score and the length penalty."""
    from asr.decode.seq2seq import attention_decode_nbest

    return attention_decode_nbest(model, batch, beam=options.beam, ctc_weight=options.ctc_weight,
                                  length_penalty=options.length_penalty, nbest=nbest)


@torch.no_grad()
def attention_align(model: AttentionModel, batch: dict, token_seqs: list[list[int]]) -> list:
    """Word timing of ``token_seqs`` from the joint CTC head's forced alignment
    (:func:`asr.decode.timestamps.ctc_token_alignment`), each token's confidence from the decoder:
    its teacher-forced probability given the tokens before it.

    Raises:
        UsageError: the model has no CTC head (it was trained with ``ctc_weight: 0``).
    """
    from asr.decode.timestamps import ctc_token_alignment

    if model.ctc_head is None:
        raise UsageError("timestamps need a CTC head: train with ctc_weight > 0 (this attention model has none)")
    enc, lengths = model.encode(batch["wav"], batch["wav_lengths"])
    alignments = ctc_token_alignment(model.ctc_head(enc), lengths, token_seqs)
    if not token_seqs:
        return alignments
    token_lengths = torch.tensor([len(s) for s in token_seqs], device=enc.device)
    tokens = torch.zeros(len(token_seqs), max(int(token_lengths.max()), 1), dtype=torch.long, device=enc.device)
    for b, seq in enumerate(token_seqs):
        tokens[b, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
    ys_in, ys_out, _ = decoder_io(tokens, token_lengths)
    log_probs = model.decoder(*_attendable(enc, lengths), ys_in).float().log_softmax(-1)  # (B, U + 1, V)
    probs = log_probs.gather(2, ys_out.unsqueeze(2)).squeeze(2).exp().cpu().numpy()
    for b, seq in enumerate(token_seqs):
        alignments[b].confidence = probs[b, : len(seq)].astype("float64")
    return alignments


def _egl_head(model: AttentionModel, enc, enc_lengths, tokens, token_lengths) -> tuple[torch.Tensor, ...]:
    ys_in, _, _ = decoder_io(tokens, token_lengths)
    out = (model.decoder(*_attendable(enc, enc_lengths), ys_in).float(),)  # (R, U+1, V)
    if model.ctc_head is not None:
        out += (model.ctc_head.linear(enc).float(),)  # (R, T, V)
    return out


def _egl_losses(model: AttentionModel):
    w, smoothing = float(model.ctc_weight), float(model.label_smoothing)

    def losses(inputs, enc_lengths, tokens, token_lengths) -> torch.Tensor:
        from asr.active.adapters import ctc_nll

        _, ys_out, valid = decoder_io(tokens, token_lengths)
        ce = F.cross_entropy(inputs[0].transpose(1, 2), ys_out, reduction="none", label_smoothing=smoothing)
        att = (ce * valid).sum(1)
        if len(inputs) == 1:
            return att
        return w * ctc_nll(inputs[1], enc_lengths, tokens, token_lengths) + (1.0 - w) * att

    return losses


def attention_egl_adapter(model: AttentionModel):
    """EGL's split: the encoder is the trunk; the decoder (and the joint CTC head) see the hypothesis."""
    from asr.active.adapters import EGLAdapter, encode_trunk, has_rnn

    return EGLAdapter("attention", encode_trunk, _egl_head, _egl_losses(model), rnn_trunk=has_rnn(model.encoder))


FAMILY = register_family(Family(
    "attention", build_attention, attention_loss, attention_decode, model_type=AttentionModel,
    decoders=("greedy", "beam"), nbest=attention_nbest, egl_adapter=attention_egl_adapter, align=attention_align))
