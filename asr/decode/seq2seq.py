"""Beam search for the attention encoder-decoder family, with optional joint CTC/attention scoring.

All utterances of a batch are searched together: ``B`` utterances x ``beam`` hypotheses are the
``B * beam`` rows of one decoder batch (encoder output and decoder states expanded once, reordered
with the decoder's ``reorder_state`` after every step). Each step takes the ``beam`` best
extensions over ``beam x V`` per utterance; an extension by ``<eos>`` ends its hypothesis (the
live beam refills from the remaining candidates at the next step).

Scores: a hypothesis ranks by ``(1 - w) * log p_att + w * log psi_ctc`` (``w = ctc_weight``,
``psi_ctc`` the CTC prefix probability, see :mod:`asr.decode.ctc_prefix_score`; an ended
hypothesis uses the CTC probability of the full sequence). The final score of an ended
hypothesis adds ``length_penalty * len(tokens)``, or with ``length_norm`` divides by
``len(tokens) + 1`` (the scored tokens, ``<eos>`` included).

Stopping: an utterance's search ends when no live hypothesis is left, or when ``beam``
hypotheses have ended and no live one can reach the ``beam``-th best final score (scores only
fall as hypotheses grow, so the bound is exact), or at the length guard: a hypothesis that has
``max_len`` tokens (``ceil(max_len_ratio * T_b)`` by default, as in greedy decoding) may only
emit ``<eos>`` — unfinished hypotheses are ended score-wise with the ``<eos>`` log-probability
added, never dropped. With ``beam = 1`` the search is exactly greedy decoding.

Without CTC every token id can be emitted (as in greedy decoding); with CTC the blank (id 0)
never can, and each hypothesis's candidates are its ``ctc_beam`` best tokens by the attention
score plus ``<eos>`` (all tokens when ``ctc_weight == 1`` and ``ctc_beam`` is not given; the
decoder is then not run at all).

Example:
    >>> from asr.models.config import ModelConfig, EncoderConfig, AttentionConfig
    >>> from asr.models.seq2seq import AttentionModel
    >>> cfg = ModelConfig(family="attention", encoder=EncoderConfig(dim=16, layers=1),
    ...                   attention=AttentionConfig(dim=32, att_dim=16, ctc_weight=0.3))
    >>> model = AttentionModel(cfg, vocab_size=12).eval()
    >>> batch = {"wav": torch.randn(2, 8000), "wav_lengths": torch.tensor([8000, 4000])}
    >>> nbest = attention_decode_nbest(model, batch, beam=3, ctc_weight=0.3)
    >>> len(nbest), len(nbest[0]) <= 3, nbest[0][0].score >= nbest[0][-1].score
    (2, True, True)
"""

from __future__ import annotations

import math

import torch

from asr.decode.ctc_prefix_score import CTCPrefixScorer
from asr.decode.hypothesis import Hypothesis, NBest
from asr.errors import UsageError
from asr.models.subsampling import length_mask
from asr.models.seq2seq import EOS, PAD, AttentionModel, _attendable

NEG_INF = float("-inf")


def _reorder(decoder: torch.nn.Module, state: dict, index: torch.Tensor) -> dict:
    """Rows ``index`` of a decoder state (batch dimension 0 unless the decoder says otherwise)."""
    if hasattr(decoder, "reorder_state"):
        return decoder.reorder_state(state, index)
    return {k: v.index_select(0, index) for k, v in state.items()}


@torch.no_grad()
def attention_beam_search(
    model: AttentionModel,
    enc: torch.Tensor,
    lengths: torch.Tensor,
    beam: int = 4,
    nbest: int | None = None,
    length_penalty: float = 0.0,
    length_norm: bool = False,
    max_len_ratio: float | None = None,
    max_len: int | None = None,
    ctc_weight: float = 0.0,
    ctc_beam: int | None = None,
    early_stop: bool = True,
) -> list[NBest]:
    """Batched beam search over an encoder output.

    Args:
        enc: encoder output ``(B, T, D)``; ``lengths`` ``(B,)`` its valid frames.
        beam: live hypotheses per utterance.
        nbest: hypotheses returned per utterance (default ``beam``); best first.
        length_penalty: final score ``+= length_penalty * len(tokens)`` (a bonus when positive).
        length_norm: final score = search score / ``(len(tokens) + 1)`` instead (not with
            ``length_penalty``).
        max_len_ratio: the length guard ``ceil(max_len_ratio * T_b)`` tokens for an utterance of
            ``T_b`` frames (default ``model.max_len_ratio``); ``max_len`` caps it further.
        ctc_weight: ``w`` of ``(1 - w) * att + w * ctc``; needs ``model.ctc_head``.
        ctc_beam: candidate tokens per hypothesis scored by CTC (default ``ceil(1.5 * beam)``,
            all tokens when ``ctc_weight == 1``).
        early_stop: stop an utterance once no live hypothesis can enter the ``beam`` best ended
            ones (the result is the same as without; False runs every utterance to the guard).

    Returns:
        per utterance a list of :class:`Hypothesis` (tokens without ``<sos>``/``<eos>``), sorted
        by final ``score``; ``am_score`` is the search score (joint log-probability, no length
        term), ``extra`` holds ``att`` (the attention log-probability, ``<eos>`` included; not when
        the decoder did not run) and, with CTC, ``ctc`` (the CTC log-probability of the tokens).
    """
    if beam < 1:
        raise UsageError(f"beam must be >= 1, got {beam}")
    if not 0.0 <= ctc_weight <= 1.0:
        raise UsageError(f"ctc_weight must be in [0, 1], got {ctc_weight}")
    if ctc_weight > 0 and getattr(model, "ctc_head", None) is None:
        raise UsageError("ctc_weight > 0 needs a model with a CTC head (trained with ctc_weight > 0)")
    if length_norm and length_penalty:
        raise UsageError("use either length_norm or length_penalty, not both")
    B = enc.shape[0]
    if B == 0:
        return []
    K, nbest = beam, nbest or beam
    device = enc.device
    ratio = model.max_len_ratio if max_len_ratio is None else max_len_ratio
    limits = torch.ceil(ratio * lengths.float()).long().to(device)
    if max_len is not None:
        limits = limits.clamp(max=max_len)
    limits = limits.clamp(min=0)

    enc, att_lengths = _attendable(enc, lengths)
    use_ctc, use_att = ctc_weight > 0, ctc_weight < 1
    decoder = model.decoder
    N = B * K
    utt = torch.arange(B, device=device).repeat_interleave(K)  # (N,) utterance of each row
    enc_rows, len_rows = enc.index_select(0, utt), att_lengths.to(device).index_select(0, utt)
    mask = length_mask(len_rows, enc.shape[1])
    state = decoder.init_state(enc_rows, len_rows) if use_att else None
    V = model.vocab_size
    if use_ctc:
        scorer = CTCPrefixScorer(model.ctc_head(enc), lengths.to(device), blank=PAD, eos=EOS)
        ctc_state = scorer.init_state(utt)
        if ctc_beam is None and not use_att:
            n_cand = V - 2  # every label but blank and eos
        else:
            n_cand = min(ctc_beam or math.ceil(1.5 * K), V - 2)
        if n_cand < V - 2:
            use_att = True  # the attention scores pick the candidates
            if state is None:
                state = decoder.init_state(enc_rows, len_rows)
    all_tokens = torch.arange(V, device=device)
    labels = all_tokens[(all_tokens != PAD) & (all_tokens != EOS)]

    # live hypotheses: (B, K); only slot 0 is alive at the start
    alive = torch.zeros(B, K, dtype=torch.bool, device=device)
    alive[:, 0] = True
    score = torch.zeros(B, K, dtype=torch.float64, device=device)  # search score
    att_sum = torch.zeros(B, K, dtype=torch.float64, device=device)
    hist = torch.zeros(B, K, 0, dtype=torch.long, device=device)
    token = torch.full((N,), EOS, dtype=torch.long, device=device)
    ended: list[list[Hypothesis]] = [[] for _ in range(B)]
    kth = torch.full((B, K), NEG_INF, dtype=torch.float64, device=device)  # best K final scores, sorted
    done = torch.zeros(B, dtype=torch.bool, device=device)
    w_att = 1.0 - ctc_weight

    for i in range(int(limits.max()) + 1):
        alive &= ~done.unsqueeze(1)
        if not bool(alive.any()):
            break
        # per-row candidate tokens (N, C) and their attention log-probs
        if use_att:
            log_probs, state = decoder.step(token, state, enc_rows, mask)
            log_probs = log_probs.double()
        if not use_ctc:
            cand = all_tokens.expand(N, V)
            att_lp = log_probs
            joint = score.view(N, 1) + att_lp
        else:
            if n_cand < V - 2:
                top = log_probs.index_select(1, labels).topk(n_cand, dim=1).indices
                cand = torch.cat([labels[top], torch.full((N, 1), EOS, device=device)], dim=1)
            else:
                cand = torch.cat([labels, labels.new_tensor([EOS])]).expand(N, -1)
            ctc_scores, ext = scorer.extend(ctc_state, cand)
            joint = ctc_weight * ctc_scores
            if use_att:
                att_lp = log_probs.gather(1, cand)
                if w_att > 0:
                    joint = joint + w_att * (att_sum.view(N, 1) + att_lp)
            else:
                att_lp = torch.zeros_like(joint)
        C = cand.shape[1]
        guard = (i >= limits).view(B, 1, 1) & (cand != EOS).view(B, K, C)  # only <eos> past the guard
        joint = joint.view(B, K, C).masked_fill(guard | ~alive.unsqueeze(2), NEG_INF).view(B, K * C)
        vals, idx = joint.topk(min(K, K * C), dim=1)  # (B, K')
        src, col = idx // C, idx % C
        rows = (torch.arange(B, device=device).unsqueeze(1) * K + src).view(-1)  # (B*K',)
        new_tok = cand[rows, col.view(-1)].view(B, -1)
        new_att = att_sum.gather(1, src) + att_lp[rows, col.view(-1)].view(B, -1)
        finite = vals > NEG_INF
        is_end = finite & (new_tok == EOS)

        # hypotheses that end here
        n_tokens = i  # tokens before <eos>
        if length_norm:
            final = vals / (n_tokens + 1)
        else:
            final = vals + length_penalty * n_tokens
        final = final.masked_fill(~is_end, NEG_INF)
        kth = torch.cat([kth, final], dim=1).topk(K, dim=1).values
        if bool(is_end.any()):
            bs, js = is_end.nonzero(as_tuple=True)
            ctc_full = ctc_scores[rows.view(B, -1)[bs, js], col[bs, js]].tolist() if use_ctc else None
            toks = hist[bs, src[bs, js]].tolist()
            for r, (b, j) in enumerate(zip(bs.tolist(), js.tolist())):
                extra = {"att": float(new_att[b, j])} if use_att else {}
                if use_ctc:
                    extra["ctc"] = ctc_full[r]
                ended[b].append(Hypothesis(tokens=toks[r], score=float(final[b, j]), am_score=float(vals[b, j]),
                                           extra=extra))

        # the live beam for the next step (empty slots padded with dead rows)
        keep = finite & ~is_end
        Kp = vals.shape[1]
        if Kp < K:
            pad = K - Kp
            keep = torch.cat([keep, keep.new_zeros(B, pad)], dim=1)
            vals = torch.cat([vals, vals.new_full((B, pad), NEG_INF)], dim=1)
            src = torch.cat([src, src.new_zeros(B, pad)], dim=1)
            col = torch.cat([col, col.new_zeros(B, pad)], dim=1)
            new_tok = torch.cat([new_tok, new_tok.new_full((B, pad), EOS)], dim=1)
            new_att = torch.cat([new_att, new_att.new_zeros(B, pad)], dim=1)
            rows = (torch.arange(B, device=device).unsqueeze(1) * K + src).view(-1)
        alive, score, att_sum = keep, vals.masked_fill(~keep, 0.0), new_att.masked_fill(~keep, 0.0)
        hist = torch.cat([hist.gather(1, src.unsqueeze(2).expand(-1, -1, hist.shape[2])), new_tok.unsqueeze(2)], dim=2)
        token = new_tok.view(N).masked_fill(~keep.view(N), EOS)
        if use_att:
            state = _reorder(decoder, state, rows)
        if use_ctc:
            ctc_state = scorer.select(ctc_state, ext, rows, col.view(-1))

        # stop where no live hypothesis can beat the beam-th ended one
        best_live = score.masked_fill(~alive, NEG_INF).max(dim=1).values  # (B,)
        if length_norm:
            bound = best_live / (limits.double() + 1)
        else:
            n_live = i + 1
            bound = best_live + torch.maximum(length_penalty * limits.double(),
                                              torch.full_like(best_live, length_penalty * n_live))
        done |= ~alive.any(dim=1)
        if early_stop:
            done |= (kth[:, -1] > NEG_INF) & (bound <= kth[:, -1])

    out = []
    for hyps in ended:
        hyps.sort(key=lambda h: h.score, reverse=True)
        out.append(hyps[:nbest] or [Hypothesis(tokens=[], score=NEG_INF, am_score=NEG_INF)])
    return out


@torch.no_grad()
def attention_decode_nbest(
    model: AttentionModel, batch: dict, beam: int = 4, ctc_weight: float = 0.0, length_penalty: float = 0.0,
    **kwargs,
) -> list[NBest]:
    """Beam search N-best lists for a batch (``wav``, ``wav_lengths``); ``kwargs`` go to
    :func:`attention_beam_search`."""
    enc, lengths = model.encode(batch["wav"], batch["wav_lengths"])
    return attention_beam_search(model, enc, lengths, beam=beam, ctc_weight=ctc_weight,
                                 length_penalty=length_penalty, **kwargs)
