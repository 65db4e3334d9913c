"""Export a CRNN keyword spotter to ONNX for :class:`kws.onnx_detect.OnnxDetector` (no torch at run time).

The graph is the streaming detector's model part, with its state as explicit inputs and outputs:

    inputs   feats    (1, T, F)   new log-mel frames (before CMVN), T = (n - 1) * stride + kernel
             cache    (P, G)      the projected convolution frames kept from earlier calls
             starts   (N,)        window starts, indices into concat(cache, new frames)
    outputs  probs    (N, C)      class posteriors of each window
             frames   (n, G)      the new projected convolution frames (the caller keeps what later windows need)

Inside: global CMVN -> the convolution and ReLU -> the first recurrent layer's input
projection (``x W_ih^T + b_ih``, ``G`` = 3 or 4 times the hidden size), once per convolution
frame and shared by every window that reads it; then, per window, the recurrent layers from a
zero state unrolled over its ``W`` frames (the input projection of the layers above the first
and every recurrent product are MatMuls, which ``--int8`` quantizes), the dense layers and a
softmax. This is the same arithmetic as :class:`kws.detect.Detector`, which restarts the
recurrent layers at every window, so the two agree to float rounding.

The metadata property ``kws`` holds what the runtime needs, as JSON: labels, feature config,
geometry (kernel, stride, window), detector settings.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from asr.errors import UsageError
from asr.utils import atomic_open

FORMAT = 1  # version of the metadata layout


class StreamingCRNN(nn.Module):
    """The exported computation (see the module docstring), in plain tensor operations."""

    def __init__(self, model, window_frames: int):
        super().__init__()
        c = model.cfg
        if c.bidirectional:
            raise UsageError("ONNX export: a bidirectional CRNN does not stream; export forward-only models")
        if model.frontend.features.config.kind != "logmel":
            raise UsageError(f"ONNX export: the runtime front-end computes log-mel features, this model uses "
                             f"{model.frontend.features.config.kind!r}")
        self.model, self.W, self.lstm = model, window_frames, c.rnn_type == "lstm"
        self.H, self.layers = c.rnn_dim, c.rnn_layers

    def _weights(self, layer: int):
        rnn = self.model.rnn
        return (getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}"),
                getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}"))

    def _cell(self, gi: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor):
        """One step from the input projection ``gi`` (N, G) and the state."""
        gh = F.linear(h, w_hh, b_hh)
        H = self.H
        if self.lstm:  # gates i, f, g, o
            g = gi + gh
            i, f, gg, o = torch.sigmoid(g[:, :H]), torch.sigmoid(g[:, H:2 * H]), torch.tanh(g[:, 2 * H:3 * H]), torch.sigmoid(g[:, 3 * H:])
            c = f * c + i * gg
            return o * torch.tanh(c), c
        r = torch.sigmoid(gi[:, :H] + gh[:, :H])  # gates r, z, n
        z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        return (1 - z) * n + z * h, c

    def forward(self, feats: torch.Tensor, cache: torch.Tensor, starts: torch.Tensor):
        m = self.model
        x = m.frontend.cmvn(feats)
        w_ih, w_hh, b_ih, b_hh = self._weights(0)
        frames = F.linear(m.conv_frames(x)[0], w_ih, b_ih)  # (n, G)
        allf = torch.cat([cache, frames], dim=0)
        idx = starts.unsqueeze(1) + torch.arange(self.W, dtype=starts.dtype).unsqueeze(0)  # (N, W)
        gi = allf[idx]  # (N, W, G)
        N = starts.shape[0]
        zeros = torch.zeros(N, self.H, dtype=feats.dtype)
        h, c = zeros, zeros
        outs = []
        for t in range(self.W):
            h, c = self._cell(gi[:, t], h, c, w_hh, b_hh)
            outs.append(h)
        for layer in range(1, self.layers):
            w_ih, w_hh, b_ih, b_hh = self._weights(layer)
            h, c = zeros, zeros
            nxt = []
            for t in range(self.W):
                h, c = self._cell(F.linear(outs[t], w_ih, b_ih), h, c, w_hh, b_hh)
                nxt.append(h)
            outs = nxt
        d = m.dense(outs[-1])
        d = F.leaky_relu(d, 0.1) if m.cfg.dense_activation == "leaky_relu" else F.relu(d)
        return torch.softmax(m.output(d), dim=-1), frames


def metadata(detector) -> dict:
    """What :class:`kws.onnx_detect.OnnxDetector` reads from the model file."""
    from dataclasses import asdict

    model = detector.model
    return {"format": FORMAT, "labels": detector.labels, "features": model.frontend.features.config.to_dict(),
            "kernel_frames": model.kernel_frames, "stride_frames": model.stride_frames,
            "window_frames": detector.window_frames, "window": detector.window_seconds,
            "proj_dim": (4 if model.cfg.rnn_type == "lstm" else 3) * model.cfg.rnn_dim,
            "detector": asdict(detector.cfg)}


def export_onnx(detector, out: str | os.PathLike, int8: bool = False, opset: int = 17) -> dict:
    """Write ``detector``'s model (:class:`kws.detect.Detector`) as ONNX to ``out`` atomically;
    with ``int8`` the MatMul and convolution weights are quantized (dynamic int8).
    Returns the metadata written."""
    try:
        import onnx
    except ImportError:
        raise UsageError("ONNX export needs the onnx package: pip install 'asr-kws[onnx]'") from None
    out = Path(out)
    meta = metadata(detector)
    wrapper = StreamingCRNN(detector.model, detector.window_frames).eval()
    kt, F_ = detector.model.kernel_frames, detector.model.frontend.dim
    example = (torch.zeros(1, kt + 2 * detector.stride_frames, F_), torch.zeros(detector.window_frames, meta["proj_dim"]),
               torch.tensor([0, 1], dtype=torch.long))
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks that are constant here
            torch.onnx.export(wrapper, example, str(plain), dynamo=False, opset_version=opset,
                              input_names=["feats", "cache", "starts"], output_names=["probs", "frames"],
                              dynamic_axes={"feats": {1: "T"}, "cache": {0: "P"}, "starts": {0: "N"},
                                            "probs": {0: "N"}, "frames": {0: "n"}})
        path = plain
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            path = Path(tmp) / "model.int8.onnx"
            logging.disable(logging.WARNING)  # the quantizer logs a line per tensor it leaves in float
            try:
                # reduce_range: 7-bit weights, so that the u8 x s8 products cannot saturate on CPUs without
                # VNNI (AVX2's VPMADDUBSW), where full-range int8 can lose accuracy; results then agree across CPUs
                quantize_dynamic(str(plain), str(path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                                 reduce_range=True)
            finally:
                logging.disable(logging.NOTSET)
            meta["int8"] = True
        proto = onnx.load(str(path))
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key, entry.value = "kws", json.dumps(meta)
        with atomic_open(out, "wb") as f:
            f.write(proto.SerializeToString())
    return meta
