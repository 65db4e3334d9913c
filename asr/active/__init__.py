"""Active learning: choose which unlabeled utterances to transcribe next.

- :mod:`asr.active.strategies`: random, least confidence, N-best entropy and Expected Gradient
  Length (Huang et al. 2016) scores;
- :mod:`asr.active.gradients`: per-hypothesis squared gradient norms, batched (``torch.func``
  vmap of vector-Jacobian products, trunk forward shared by the N-best, closed-form output layer),
  with :mod:`asr.active.adapters` splitting each model family into trunk and head;
- :mod:`asr.active.selection`: budgets (utterances or hours), per-speaker cap, k-center diversity;
- :mod:`asr.active.select`: the resumable, multi-process ``asr select`` job;
- :mod:`asr.active.simulate`: the select -> label -> fine-tune -> evaluate simulation.
"""
