"""Recurrent layers that also run under CPU autocast on every CPU.

``torch.autocast("cpu", dtype=torch.bfloat16)`` (and float16) sends ``nn.LSTM`` to oneDNN's
reduced-precision LSTM, which only exists on CPUs with AVX-512 BF16/AMX: on an AVX2 machine the
call fails with "could not create a primitive descriptor for the LSTM forward propagation
primitive". (The trainer's ``amp`` is CUDA-only; this is for code that runs the models under
CPU autocast itself.) Such code must run on any CPU, so :func:`run_rnn` runs an LSTM in float32
whenever CPU autocast is on (GRUs and LSTM cells already fall back to float32). On CUDA nothing changes: cuDNN's reduced-precision LSTM is used as usual.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.rnn import PackedSequence


def run_rnn(rnn: nn.RNNBase, x: torch.Tensor | PackedSequence, hx=None):
    """``rnn(x, hx)``; an LSTM on the CPU under autocast runs in float32 (outputs and states float32)."""
    data = x.data if isinstance(x, PackedSequence) else x
    if isinstance(rnn, nn.LSTM) and data.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            if hx is not None:
                hx = tuple(h.float() for h in hx)
            return rnn(x.float(), hx)
    return rnn(x, hx)
