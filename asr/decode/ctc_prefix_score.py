"""Batched CTC prefix scores for joint CTC/attention decoding (Watanabe et al. 2017, Hori et al. 2017).

For a label prefix ``h`` the CTC prefix probability ``psi(h)`` is the probability of all frame
paths whose collapse *starts with* ``h``; ``psi`` never grows as ``h`` is extended, and a finished
hypothesis (``h + <eos>``) is scored by the probability of exactly ``h`` (summed over alignments).

Per hypothesis the scorer keeps, for every number of consumed frames ``s = 0..T``, the log
probabilities ``n[s]`` / ``b[s]`` of having produced exactly ``h`` from frames ``1..s`` with the
last frame a label / a blank. Extending ``h`` by ``c`` (probability space, ``y`` the frame posteriors):

    phi[s]  = b_h[s] + (n_h[s] if last(h) != c else 0)
    n_g[s]  = y_c[s] * (n_g[s-1] + phi[s-1])          b_g[s] = y_blank[s] * (b_g[s-1] + n_g[s-1])
    psi(g)  = sum_{s=1..T} phi[s-1] * y_c[s]

The two first-order recursions are solved without a loop over time: with ``C[s] = sum_{k<=s} log y_c[k]``,
``log n_g[s] = C[s] + logcumsumexp_{k<s}(log phi[k] - C[k])`` (and likewise for ``b_g``), computed in
float64 so the large cumulative sums cancel exactly enough. Every hypothesis x candidate token is
scored at once, ``(N, C, T + 1)`` tensors.

Example:
    >>> log_probs = torch.randn(1, 5, 4).log_softmax(-1)
    >>> scorer = CTCPrefixScorer(log_probs, torch.tensor([5]), blank=0, eos=2)
    >>> state = scorer.init_state(torch.tensor([0]))
    >>> scores, ext = scorer.extend(state, torch.tensor([[1, 3, 2]]))  # "1", "3", and "" finished
    >>> state = scorer.select(state, ext, torch.tensor([0]), torch.tensor([0]))  # keep "1"
    >>> state.last.tolist(), bool(state.score[0] == scores[0, 0])
    ([1], True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")
LOG_FLOOR = -1e5  # frame log-probabilities are clamped here so cumulative sums stay finite


@dataclass
class CTCPrefixState:
    """The CTC state of ``N`` hypotheses.

    ``utt (N,)`` the utterance each one belongs to; ``n``, ``b`` ``(N, T + 1)`` float64 log-probs
    of exactly the prefix after ``s`` frames ending in a label / a blank; ``last (N,)`` the last
    label (-1 for the empty prefix); ``score (N,)`` the prefix log-probability ``log psi``.
    """

    utt: torch.Tensor
    n: torch.Tensor
    b: torch.Tensor
    last: torch.Tensor
    score: torch.Tensor


@dataclass
class CTCExtension:
    """Candidate extensions from :meth:`CTCPrefixScorer.extend`: ``tokens (N, C)``, ``scores (N, C)``
    and the recursion arrays ``n``, ``b`` ``(N, C, T + 1)``."""

    tokens: torch.Tensor
    scores: torch.Tensor
    n: torch.Tensor
    b: torch.Tensor


class CTCPrefixScorer:
    """CTC prefix scorer over a batch of utterances.

    Args:
        log_probs: CTC log-probabilities ``(B, T, V)`` (frames past ``lengths`` are ignored).
        lengths: valid frames ``(B,)`` (0 allowed: only the empty sequence then has probability 1).
        blank: the blank id (never a candidate label).
        eos: the end-of-sentence id: extending by it gives the full-sequence log-probability.
    """

    def __init__(self, log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0, eos: int = 2):
        self.blank, self.eos = blank, eos
        self.T = log_probs.shape[1]
        self.lengths = lengths.to(log_probs.device).long().clamp(max=self.T)
        # (B, V, T), float32; the candidates' slices go to float64 when gathered
        self.log_probs = log_probs.float().clamp(min=LOG_FLOOR).transpose(1, 2).contiguous()
        blank_lp = self.log_probs[:, blank].double()  # (B, T)
        self.blank_cum = torch.cat([blank_lp.new_zeros(blank_lp.shape[0], 1), blank_lp.cumsum(-1)], dim=-1)  # (B, T+1)
        steps = torch.arange(1, self.T + 1, device=log_probs.device)
        self.valid = steps.unsqueeze(0) <= self.lengths.unsqueeze(1)  # (B, T): frame s = 1..T counts

    def init_state(self, utt: torch.Tensor) -> CTCPrefixState:
        """The empty prefix for hypotheses of utterances ``utt`` ``(N,)``."""
        utt = utt.to(self.blank_cum.device).long()
        N = utt.shape[0]
        n = self.blank_cum.new_full((N, self.T + 1), NEG_INF)
        b = self.blank_cum[utt].clone()  # all blanks so far
        last = torch.full((N,), -1, dtype=torch.long, device=utt.device)
        return CTCPrefixState(utt, n, b, last, self.blank_cum.new_zeros(N))

    def full_score(self, state: CTCPrefixState) -> torch.Tensor:
        """log p(exactly the prefix | all the utterance's frames) ``(N,)``."""
        end = self.lengths[state.utt].unsqueeze(1)
        return torch.logaddexp(state.n.gather(1, end), state.b.gather(1, end)).squeeze(1)

    def extend(self, state: CTCPrefixState, tokens: torch.Tensor) -> tuple[torch.Tensor, CTCExtension]:
        """Score each hypothesis extended by each of its candidates ``tokens`` ``(N, C)``.

        Returns:
            ``log psi(h + c)`` ``(N, C)`` (float64; for ``c == eos`` the full-sequence
            log-probability of ``h``, for ``c == blank`` ``-inf``), and the extension to pass
            to :meth:`select`.
        """
        N, C = tokens.shape
        y = self.log_probs[state.utt.unsqueeze(1), tokens].double()  # (N, C, T): frames 1..T
        cum = torch.cat([y.new_zeros(N, C, 1), y.cumsum(-1)], dim=-1)  # (N, C, T+1)
        repeat = (tokens == state.last.unsqueeze(1)).unsqueeze(-1)  # (N, C, 1)
        n_h, b_h = state.n.unsqueeze(1), state.b.unsqueeze(1)  # (N, 1, T+1)
        phi = torch.logaddexp(b_h, n_h.masked_fill(repeat, NEG_INF))  # (N, C, T+1)
        n = cum[..., 1:] + torch.logcumsumexp(phi[..., :-1] - cum[..., :-1], dim=-1)  # s = 1..T
        n = torch.cat([n.new_full((N, C, 1), NEG_INF), n], dim=-1)
        bcum = self.blank_cum[state.utt].unsqueeze(1)  # (N, 1, T+1)
        b = bcum[..., 1:] + torch.logcumsumexp(n[..., :-1] - bcum[..., :-1], dim=-1)
        b = torch.cat([b.new_full((N, C, 1), NEG_INF), b], dim=-1)
        valid = self.valid[state.utt].unsqueeze(1)  # (N, 1, T)
        scores = torch.logsumexp((phi[..., :-1] + y).masked_fill(~valid, NEG_INF), dim=-1)  # (N, C)
        scores = torch.where(tokens == self.eos, self.full_score(state).unsqueeze(1), scores)
        scores = scores.masked_fill(tokens == self.blank, NEG_INF)
        return scores, CTCExtension(tokens, scores, n, b)

    def select(self, state: CTCPrefixState, ext: CTCExtension, row: torch.Tensor, col: torch.Tensor) -> CTCPrefixState:
        """The state of the extended hypotheses ``(ext.tokens[row, col])`` ``(M,)``."""
        return CTCPrefixState(
            state.utt[row], ext.n[row, col], ext.b[row, col], ext.tokens[row, col], ext.scores[row, col]
        )
