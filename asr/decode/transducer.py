"""RNN-Transducer beam searches: Graves's standard search and the batched modified search.

Both return :class:`~asr.decode.hypothesis.Hypothesis` N-best lists, best first, whose
``score`` and ``am_score`` are the model log-probability the search accumulated for the
label sequence (blank is token 0, as in :mod:`asr.models.transducer`).

* :func:`transducer_beam_search` -- one utterance, Graves (2012) section 2.6: hypothesis sets
  ``A`` (still emitting on this frame) and ``B`` (blank taken on this frame), prefix merging
  at the start of each frame, expansion of the best of ``A`` until ``B`` holds ``beam``
  hypotheses better than anything left in ``A``, then ``B`` pruned to ``beam``. Equal label
  sequences reached by different alignments are one hypothesis (probabilities log-added), so
  ``am_score`` sums over every alignment the search explored. Hypotheses live in a prefix
  tree and the predictor runs once per tree node (label prefix), batched over the nodes that
  need it; the joiner runs once per node and frame.
* :func:`modified_beam_search` -- at most one symbol per frame (a label moves on to the next
  frame), batched over utterances and hypotheses: one joiner call for all ``B x beam``
  hypotheses per frame, duplicates merged by log-add before a top-k over ``beam x V`` per
  utterance, one predictor call for the hypotheses that emitted. With ``beam=1`` it is
  greedy search with one symbol per frame (``transducer_greedy(..., max_symbols=1)``).

Example:
    >>> from asr.models.config import ModelConfig, EncoderConfig, TransducerConfig
    >>> from asr.models.transducer import TransducerModel
    >>> cfg = ModelConfig(family="transducer", encoder=EncoderConfig(dim=16, layers=1),
    ...                   transducer=TransducerConfig(pred_dim=16, joint_dim=16))
    >>> model = TransducerModel(cfg, vocab_size=10).eval()
    >>> enc = torch.randn(2, 6, model.encoder.output_dim)
    >>> nbest = transducer_beam_search(model, enc[0], beam=4)
    >>> len(nbest) <= 4 and nbest[0].score >= nbest[-1].score
    True
    >>> [len(n) for n in modified_beam_search(model, enc, torch.tensor([6, 3]), beam=4)]
    [4, 4]
"""

from __future__ import annotations

import heapq
import math
from typing import Optional

import numpy as np
import torch

from asr.constants import BLANK
from asr.decode.hypothesis import Hypothesis, NBest
from asr.errors import UsageError

NEG_INF = float("-inf")

__all__ = ["transducer_beam_search", "modified_beam_search", "transducer_decode_nbest", "transducer_token_alignment",
           "TransducerStreamDecoder"]


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b == NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


def _stack_states(states: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.stack(parts) for parts in zip(*states))


class _PrefixTree:
    """Label prefixes as tree nodes (0 = the empty prefix) with cached predictor outputs.

    ``pred[n]`` is the projected predictor output ``(J,)`` after the prefix of node ``n``
    and ``state[n]`` the predictor state (tuple of per-row tensors); both are filled lazily
    by :meth:`compute`, once per node.
    """

    def __init__(self, model, device: torch.device):
        self.predictor, self.joiner = model.predictor, model.joiner
        self.parent, self.token, self.depth = [-1], [BLANK], [0]
        self.children: dict[tuple[int, int], int] = {}
        out, state = self.predictor.step(torch.full((1,), BLANK, dtype=torch.long, device=device),
                                         self.predictor.init_state(1, device))
        self.pred: dict[int, torch.Tensor] = {0: self.joiner.project_predictor(out)[0]}
        self.state: dict[int, tuple[torch.Tensor, ...]] = {0: tuple(s[0] for s in state)}
        self.device = device

    def child(self, node: int, token: int) -> int:
        key = (node, token)
        c = self.children.get(key)
        if c is None:
            c = self.children[key] = len(self.parent)
            self.parent.append(node)
            self.token.append(token)
            self.depth.append(self.depth[node] + 1)
        return c

    def compute(self, nodes: list[int]) -> None:
        """Run the predictor (one batched step) for the nodes that have no output yet."""
        todo = [n for n in nodes if n not in self.pred]
        if not todo:
            return
        tokens = torch.tensor([self.token[n] for n in todo], dtype=torch.long, device=self.device)
        out, state = self.predictor.step(tokens, _stack_states([self.state[self.parent[n]] for n in todo]))
        proj = self.joiner.project_predictor(out)
        rows = [s.unbind(0) for s in state]
        for i, (n, p) in enumerate(zip(todo, proj.unbind(0))):
            self.pred[n] = p
            self.state[n] = tuple(r[i] for r in rows)

    def tokens(self, node: int) -> list[int]:
        out = []
        while node > 0:
            out.append(self.token[node])
            node = self.parent[node]
        return out[::-1]


@torch.no_grad()
def transducer_beam_search(
    model, enc: torch.Tensor, beam: int = 4, nbest: Optional[int] = None, max_symbols_per_frame: int = 10,
    length_norm: bool = False,
) -> NBest:
    """Graves's RNN-T beam search over one utterance's encoder output ``enc (T, H_enc)``.

    Args:
        model: a :class:`~asr.models.transducer.TransducerModel` (or anything with its
            ``predictor`` and ``joiner``), in eval mode.
        beam: hypotheses kept per frame (the size of ``B``), also the number of labels
            expanded per popped hypothesis.
        nbest: hypotheses returned (default ``beam``).
        max_symbols_per_frame: how many labels the expansion adds to a hypothesis of ``B``
            on one frame (prefix merging also follows at most this many labels).
        length_norm: rank ``B`` by ``am_score / (len(tokens) + 1)`` instead of ``am_score``,
            both when it is pruned after each frame and at the end (Graves normalizes the
            final choice by length; torchaudio's ``RNNTBeamSearch`` also prunes this way).
            It counters the search's bias towards short outputs.

    Returns:
        Up to ``nbest`` hypotheses, best first by ``score``; ``am_score`` is the log-probability
        of the label sequence summed over the alignments the search explored (exact when
        the beam holds every prefix and no alignment exceeds ``max_symbols_per_frame``);
        ``score`` is ``am_score``, or its length-normalized value with ``length_norm``.
    """
    if beam < 1:
        raise UsageError(f"beam must be >= 1, got {beam}")
    joiner = model.joiner
    tree = _PrefixTree(model, enc.device)
    enc_proj = joiner.project_encoder(enc)  # (T, J)

    def rank(item: tuple[int, float]) -> float:
        node, logp = item
        return logp / (tree.depth[node] + 1) if length_norm else logp

    B: dict[int, float] = {0: 0.0}
    for t in range(enc.shape[0]):
        A0 = B
        e = enc_proj[t]
        blank_lp: dict[int, float] = {}
        top_lp: dict[int, list[tuple[float, int]]] = {}

        def joint(nodes: list[int]) -> torch.Tensor:
            """Log-probs ``(n, V)`` at frame t of ``nodes``; records blank and top-k labels."""
            tree.compute(nodes)
            lp = joiner.joint(e, torch.stack([tree.pred[n] for n in nodes])).float().log_softmax(-1)
            vals, ids = lp[:, 1:].topk(min(beam, lp.shape[-1] - 1), dim=-1)
            for n, b, vs, ks in zip(nodes, lp[:, BLANK].tolist(), vals.tolist(), ids.tolist()):
                blank_lp[n] = b
                top_lp[n] = list(zip(vs, ks))
            return lp

        # Prefix merging (Graves's first step): y in A0 also gets every alignment that
        # starts from a shorter z in A0 and emits the rest of y on this frame.
        chains = []  # (y, z, the nodes from y down to the child of z on the path)
        for y in A0:
            path, n = [], y
            for _ in range(min(max_symbols_per_frame, tree.depth[y])):
                path.append(n)
                n = tree.parent[n]
                if n in A0:
                    chains.append((y, n, list(path)))
        extra = sorted({tree.parent[n] for _, _, path in chains for n in path} - A0.keys())
        nodes = list(A0) + extra
        lp = joint(nodes)
        gamma = dict(A0)
        if chains:
            row = {n: i for i, n in enumerate(nodes)}
            flat = [(row[tree.parent[n]], tree.token[n]) for _, _, path in chains for n in path]
            steps = lp[[r for r, _ in flat], [c for _, c in flat]].tolist()
            i = 0
            for y, z, path in chains:
                s = A0[z] + sum(steps[i : i + len(path)])
                i += len(path)
                gamma[y] = _logaddexp(gamma[y], s)

        # Expansion: pop the best of A (all of A that beats the beam-th best of B, at most
        # `beam` at a time, batched) until B holds `beam` hypotheses better than all of A.
        A = dict(gamma)
        nsym = dict.fromkeys(A0, 0)
        Bn: dict[int, float] = {}
        heap: list[float] = []  # the `beam` best scores of Bn (min-heap)
        while A:
            thr = heap[0] if len(heap) >= beam else NEG_INF
            cand = [n for n, s in A.items() if s > thr]
            if not cand:
                break
            if len(cand) > beam:
                cand = heapq.nlargest(beam, cand, key=A.__getitem__)
            new = [n for n in cand if n not in blank_lp]
            if new:
                joint(new)
            popped = [(n, A.pop(n)) for n in cand]
            for n, s in popped:
                b = s + blank_lp[n]
                Bn[n] = b
                if len(heap) < beam:
                    heapq.heappush(heap, b)
                elif b > heap[0]:
                    heapq.heapreplace(heap, b)
            thr = heap[0] if len(heap) >= beam else NEG_INF
            for n, s in popped:
                if nsym[n] >= max_symbols_per_frame:
                    continue
                for v, k in top_lp[n]:
                    cs = s + v
                    if cs <= thr:
                        break  # labels are sorted: the rest cannot enter B either
                    c = tree.child(n, k + 1)
                    if c in A0:  # its alignments through n were counted by prefix merging
                        continue
                    A[c] = cs
                    nsym[c] = nsym[n] + 1
        B = dict(heapq.nlargest(beam, Bn.items(), key=rank))
    best = sorted(B.items(), key=rank, reverse=True)[: nbest or beam]
    return [Hypothesis(tree.tokens(n), score=rank((n, s)), am_score=s) for n, s in best]


@torch.no_grad()
def modified_beam_search(
    model, enc: torch.Tensor, lengths: torch.Tensor, beam: int = 4, nbest: Optional[int] = None
) -> list[NBest]:
    """Beam search with at most one symbol per frame, batched over utterances and hypotheses.

    Each hypothesis takes exactly one token per frame: blank, or a label (which also moves
    it to the next frame). The candidates ``score + log p(token)`` of all ``beam``
    hypotheses of an utterance are merged where two give the same label sequence (``y``
    + blank and ``y[:-1]`` + ``y[-1]``; log-add) and the best ``beam`` kept.

    Args:
        model: a :class:`~asr.models.transducer.TransducerModel`, in eval mode.
        enc: encoder output ``(B, T, H_enc)``; ``lengths (B,)`` valid frames.
        beam: hypotheses kept per utterance.
        nbest: hypotheses returned per utterance (default ``beam``).

    Returns:
        One N-best list per utterance, best first; ``score == am_score`` is the
        log-probability summed over the merged alignments.
    """
    if beam < 1:
        raise UsageError(f"beam must be >= 1, got {beam}")
    predictor, joiner = model.predictor, model.joiner
    Bsz, T, _ = enc.shape
    K, device = beam, enc.device
    N = Bsz * K
    enc_proj = joiner.project_encoder(enc)  # (B, T, J)
    out, state = predictor.step(torch.full((1,), BLANK, dtype=torch.long, device=device),
                                predictor.init_state(1, device))
    pred = joiner.project_predictor(out).expand(N, -1).contiguous()  # (B*K, J)
    state = tuple(s.expand(N, *s.shape[1:]).contiguous() for s in state)
    scores = torch.full((Bsz, K), NEG_INF, device=device)
    scores[:, 0] = 0.0
    # label sequences are identified by rolling hashes: of y, of y[:-1], and y's last label
    seq_hash = torch.zeros(Bsz, K, dtype=torch.long, device=device)
    prev_hash = torch.full((Bsz, K), -1, dtype=torch.long, device=device)
    last = torch.full((Bsz, K), -1, dtype=torch.long, device=device)
    base = torch.arange(Bsz, device=device).unsqueeze(1) * K  # (B, 1) first row of each utterance
    keep_src = torch.arange(K, device=device).expand(Bsz, K)
    lengths = lengths.to(device)
    history: list[tuple[torch.Tensor, torch.Tensor]] = []  # per frame: (source slot, token), (B, K)
    T_max = min(T, int(lengths.max())) if Bsz else 0
    for t in range(T_max):
        lp = joiner.joint(enc_proj[:, t].repeat_interleave(K, 0), pred).float().log_softmax(-1)
        V = lp.shape[-1]
        cand = scores.unsqueeze(-1) + lp.view(Bsz, K, V)  # (B, K, V)
        # merge: hypothesis j (y) + blank == hypothesis i (y[:-1]) + y[-1]; no host sync
        if K > 1:
            valid = scores > NEG_INF
            same = (prev_hash.unsqueeze(2) == seq_hash.unsqueeze(1)) & valid.unsqueeze(2) & valid.unsqueeze(1)  # [j, i]
            has = same.any(-1)  # (B, K): j has its prefix i in the beam (at most one: hashes are unique)
            flat = cand.view(Bsz, K * V)
            pos = torch.where(has, same.int().argmax(-1) * V + last.clamp(min=0),  # the candidate i + y[-1]
                              torch.arange(K, device=device) * V + BLANK)  # else a harmless own cell
            blank = torch.where(has, torch.logaddexp(flat[:, ::V], flat.gather(1, pos)), flat[:, ::V])
            flat[:, ::V] = blank
            flat.scatter_(1, pos, torch.where(has, torch.full_like(blank, NEG_INF), blank))
        top, idx = cand.view(Bsz, K * V).topk(K, dim=-1)  # (B, K)
        src, token = idx // V, idx % V
        active = (lengths > t).unsqueeze(1)
        src = torch.where(active, src, keep_src)
        token = torch.where(active, token, torch.zeros_like(token))
        scores = torch.where(active, top, scores)
        history.append((src, token))
        emit = token != BLANK
        g = (base + src).view(-1)  # rows of the source hypotheses
        h_src, last_src = seq_hash.gather(1, src), last.gather(1, src)
        prev_hash = torch.where(emit, h_src, prev_hash.gather(1, src))
        seq_hash = torch.where(emit, h_src * 1_000_003 + token + 1, h_src)
        last = torch.where(emit, token, last_src)
        pred = pred[g]
        state = tuple(s[g] for s in state)
        rows = (emit & (scores > NEG_INF)).view(-1).nonzero().squeeze(1)
        if rows.numel():
            out, new = predictor.step(token.view(-1)[rows], tuple(s[rows] for s in state))
            pred = pred.index_copy(0, rows, joiner.project_predictor(out).to(pred.dtype))
            state = tuple(s.index_copy(0, rows, n.to(s.dtype)) for s, n in zip(state, new))
    # backtrack the label sequences on the CPU
    scores_l = scores.tolist()
    hist = [(s.tolist(), k.tolist()) for s, k in history]
    results: list[NBest] = []
    for b in range(Bsz):
        hyps = []
        for j in range(K):
            if scores_l[b][j] == NEG_INF:
                continue
            toks, slot = [], j
            for src_l, tok_l in reversed(hist):
                if tok_l[b][slot] != BLANK:
                    toks.append(tok_l[b][slot])
                slot = src_l[b][slot]
            hyps.append(Hypothesis(toks[::-1], score=scores_l[b][j], am_score=scores_l[b][j]))
        results.append(hyps[: nbest or K])  # topk keeps them sorted
    return results


@torch.no_grad()
def transducer_decode_nbest(model, batch: dict, decoder: str = "beam", beam: int = 4,
                            nbest: Optional[int] = None, length_norm: bool = False) -> list[NBest]:
    """Encode ``batch`` (``wav (B, N)``, ``wav_lengths (B,)``) and beam-search it.

    ``decoder`` is ``"beam"`` (:func:`transducer_beam_search`, one utterance at a time;
    ``length_norm`` is passed on) or ``"modified_beam"`` (:func:`modified_beam_search`, the
    whole batch at once).
    """
    enc, lengths = model.encode(batch["wav"], batch["wav_lengths"])
    if decoder == "beam":
        return [transducer_beam_search(model, enc[b, : int(n)], beam, nbest, length_norm=length_norm)
                for b, n in enumerate(lengths.tolist())]
    if decoder == "modified_beam":
        return modified_beam_search(model, enc, lengths, beam, nbest)
    raise UsageError(f"unknown decoder {decoder!r} (beam or modified_beam)")


def transducer_token_alignment(model, enc: torch.Tensor, lengths: torch.Tensor, token_seqs: list[list[int]],
                               max_cells: int = 4_000_000) -> list:
    """Viterbi alignment of each token sequence through its RNN-T lattice (any decoder's output).

    The joint's log-probabilities of blank ``(T, U+1)`` and of the next label ``(T, U)`` are
    computed per utterance, a few frames at a time (at most ``max_cells`` joint hidden values
    alive), then :func:`asr.decode.timestamps.rnnt_viterbi` finds the best path of the whole batch.

    Args:
        model: a :class:`~asr.models.transducer.TransducerModel`, in eval mode.
        enc: encoder output ``(B, T, H_enc)``; ``lengths (B,)`` valid frames.
        token_seqs: ``B`` label sequences.

    Returns:
        per utterance a :class:`~asr.decode.timestamps.TokenAlignment`: each token on the frame that
        emits it (``start == end``), with the joint's probability of emitting it there.
    """
    from asr.decode.timestamps import NEG, TokenAlignment, rnnt_viterbi

    B, T, _ = enc.shape
    device = enc.device
    U = max((len(s) for s in token_seqs), default=0)
    token_lengths = torch.tensor([len(s) for s in token_seqs], dtype=torch.long)
    tokens = torch.zeros(B, max(U, 1), dtype=torch.long, device=device)
    for b, seq in enumerate(token_seqs):
        tokens[b, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
    joiner = model.joiner
    enc_proj = joiner.project_encoder(enc)  # (B, T, J)
    pred_proj = joiner.project_predictor(model.predictor(tokens[:, :U], token_lengths))  # (B, U+1, J)
    blank = torch.full((B, T, U + 1), NEG, dtype=torch.float64)
    emit = torch.full((B, T, max(U, 1)), NEG, dtype=torch.float64)
    lens = [min(int(n), T) for n in lengths.tolist()]
    for b, seq in enumerate(token_seqs):
        n, u = lens[b], len(seq)
        rows = max(1, max_cells // ((u + 1) * enc_proj.shape[-1]))
        for start in range(0, n, rows):
            lp = joiner.joint(enc_proj[b, start : min(n, start + rows)].unsqueeze(1),
                              pred_proj[b, : u + 1].unsqueeze(0)).float().log_softmax(-1)  # (t, u+1, V)
            blank[b, start : start + lp.shape[0], : u + 1] = lp[..., BLANK].double().cpu()
            if u:
                idx = tokens[b, :u].view(1, u, 1).expand(lp.shape[0], u, 1)
                emit[b, start : start + lp.shape[0], :u] = lp[:, :u].gather(2, idx).squeeze(2).double().cpu()
    out = []
    for b, (seq, ali) in enumerate(zip(token_seqs, rnnt_viterbi(blank, emit[:, :, :U], torch.tensor(lens),
                                                                 token_lengths))):
        if ali is None:
            out.append(TokenAlignment.spread(len(seq), lens[b]))
            continue
        frames, _ = ali
        conf = emit[b, frames, torch.arange(len(seq))].exp().numpy() if len(seq) else frames.astype("float64")
        out.append(TokenAlignment(frames, frames.copy(), conf))
    return out


class TransducerStreamDecoder:
    """Greedy transducer decoding carried across the chunks of a stream (the family's ``stream_decoder``).

    The state holds the emitted ``tokens``, the predictor state and its projected last output;
    at most ``max_symbols`` tokens are emitted per encoder frame, as offline greedy decoding does.
    For word timestamps it also records, per token, the global encoder frame that emitted it
    (``frames``) and the joint's probability of it there (``probs``); ``offset`` counts the
    frames seen.
    """

    def __init__(self, model, max_symbols: int = 5):
        self.model = model
        self.max_symbols = max_symbols

    def init_state(self, device: torch.device) -> dict:
        pred = self.model.predictor
        out, pstate = pred.step(torch.full((1,), BLANK, dtype=torch.long, device=device), pred.init_state(1, device))
        return {"tokens": [], "pred_proj": self.model.joiner.project_predictor(out), "pred_state": pstate,
                "frames": [], "probs": [], "offset": 0}

    def step(self, enc: torch.Tensor, state: dict) -> dict:
        """Encoder frames ``(1, t, D)`` of one stream -> its new state."""
        predictor, joiner = self.model.predictor, self.model.joiner
        enc_proj = joiner.project_encoder(enc[0])  # (t, J)
        pred_proj, pstate, tokens = state["pred_proj"], state["pred_state"], list(state["tokens"])
        frames, probs, offset = list(state["frames"]), list(state["probs"]), state["offset"]
        for t in range(enc_proj.shape[0]):
            for _ in range(self.max_symbols):
                logits = joiner.joint(enc_proj[t : t + 1], pred_proj)  # (1, V)
                best = logits.argmax(-1)  # (1,)
                if int(best) == BLANK:
                    break
                tokens.append(int(best))
                frames.append(offset + t)
                probs.append(float(logits.float().softmax(-1)[0, best]))
                out, pstate = predictor.step(best, pstate)
                pred_proj = joiner.project_predictor(out)
        return {"tokens": tokens, "pred_proj": pred_proj, "pred_state": pstate, "frames": frames, "probs": probs,
                "offset": offset + enc_proj.shape[0]}

    def alignment(self, state: dict):
        """The emitted tokens' frames and probabilities (:class:`~asr.decode.timestamps.TokenAlignment`)."""
        from asr.decode.timestamps import TokenAlignment

        frames = np.asarray(state["frames"], dtype=np.int64)
        return TokenAlignment(frames, frames.copy(), np.asarray(state["probs"], dtype=np.float64))
