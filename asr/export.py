"""Export a streaming CTC or transducer model to ONNX for :class:`asr.runtime.recognizer.OnnxRecognizer`.

``asr export CKPT OUT_DIR`` writes one folder, in the layout sherpa-onnx users know:

    encoder.onnx     feats (1, L, F) log-mel frames before CMVN, L = s * (m + 1) - 1 for m new
                     encoder frames (s = the subsampling factor), and the encoder's streaming
                     state -> enc (1, m, D) and the new state. The state is explicit:
                       forward-only RNN:  h (layers, 1, H) [and c for LSTM]
                       causal Conformer:  offset (1,) position of the first new frame,
                                          k, v (layers, 1, L_cache, D) attention caches (at most
                                          left_chunks * chunk_size frames), conv (layers, 1, D,
                                          kernel - 1) the depthwise convolution caches
    head.onnx        x (1, n + lookahead, D) -> out (1, n, K): the lookahead row convolution (RNN
                     encoders with lookahead) and the family's head (CTC: logits over tokens;
                     transducer: the joiner's encoder projection)
    predictor.onnx   (transducer) token (1,) + predictor state -> projected predictor output + state
    joiner.onnx      (transducer) enc_proj (N, J), pred_proj (N, J) -> logits (N, V)

The metadata property ``asr`` of encoder.onnx holds the rest as JSON: family and runtime
decoder, feature config, subsampling, chunking, the state tensors' names, shapes and types,
and the tokenizer (characters, or the SentencePiece model in base64).

Each graph is the same arithmetic as the PyTorch streaming path (:meth:`RNNEncoder.infer`,
:meth:`ConformerEncoder.infer`, the family's stream decoder), so the transcripts agree.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from asr.errors import UsageError
from asr.utils import atomic_open

FORMAT = 1


@dataclass
class Graph:
    """One ONNX graph to write: a module, example inputs (by name, in order), output names and
    the dynamic axes of each input/output."""

    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)


@dataclass
class OnnxParts:
    """What a family adds after the encoder (see :attr:`asr.models.Family.onnx_parts`)."""

    head: nn.Module  # encoder frames (1, n, D) -> (1, n, K)
    decoder: str  # the torch-free greedy decoder's name in asr.runtime.recognizer.DECODERS
    graphs: list[Graph] = field(default_factory=list)  # further graphs (the transducer's predictor and joiner)
    meta: dict = field(default_factory=dict)  # what that decoder needs to know (state specs, max symbols)


def state_spec(tensors: dict[str, torch.Tensor]) -> list[dict]:
    """Names, shapes and types of initial state tensors (zeros), for the metadata."""
    return [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in tensors.items()]


class RNNStream(nn.Module):
    """CMVN, valid convolutional subsampling, LayerNorm, forward-only GRU/LSTM with explicit state."""

    def __init__(self, model):
        super().__init__()
        self.cmvn, self.enc = model.frontend.cmvn, model.encoder
        self.lstm = isinstance(self.enc.rnn, nn.LSTM)

    def forward(self, feats, h, c=None):
        sub = self.enc.subsampling_layer
        x = self.enc.norm(sub._project(sub.conv(self.cmvn(feats).unsqueeze(1))))
        if self.lstm:
            out, (h, c) = self.enc.rnn(x, (h, c))
            return out, h, c
        out, h = self.enc.rnn(x, h)
        return out, h

    def initial_state(self) -> dict[str, torch.Tensor]:
        rnn = self.enc.rnn
        h = torch.zeros(rnn.num_layers, 1, rnn.hidden_size)
        return {"h": h, "c": h.clone()} if self.lstm else {"h": h}


class ConformerStream(nn.Module):
    """CMVN, valid convolutional subsampling, sinusoidal positions from ``offset``, the causal
    Conformer blocks on one chunk with explicit attention and convolution caches."""

    def __init__(self, model):
        super().__init__()
        self.cmvn, self.enc = model.frontend.cmvn, model.encoder
        c = self.enc.config
        self.max_cache = c.left_chunks * max(c.chunk_size, 1) if c.left_chunks >= 0 else None
        dim = c.dim
        self.register_buffer("div", torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim)), persistent=False)
        self.scale = math.sqrt(dim)

    def forward(self, feats, offset, k, v, conv):
        sub = self.enc.subsampling_layer
        x = sub._project(sub.conv(self.cmvn(feats).unsqueeze(1)))  # (1, t, D)
        t = x.shape[1]
        angle = (offset + torch.arange(t, dtype=offset.dtype)).to(x.dtype).unsqueeze(1) * self.div  # (t, D/2)
        pe = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1).reshape(t, -1)
        h = x * self.scale + pe
        ks, vs, convs = [], [], []
        for i, block in enumerate(self.enc.blocks):
            h, cache = block.infer(h, {"k": k[i], "v": v[i], "conv": conv[i]}, None)
            kk, vv = cache["k"], cache["v"]
            if self.max_cache is not None:
                kk, vv = kk[:, -self.max_cache:], vv[:, -self.max_cache:]
            ks.append(kk)
            vs.append(vv)
            convs.append(cache["conv"])
        return h, torch.stack(ks), torch.stack(vs), torch.stack(convs)

    def initial_state(self) -> dict[str, torch.Tensor]:
        c = self.enc.config
        n, D = len(self.enc.blocks), c.dim
        return {"offset": torch.zeros(1, dtype=torch.long), "k": torch.zeros(n, 1, 0, D), "v": torch.zeros(n, 1, 0, D),
                "conv": torch.zeros(n, 1, D, c.conv_kernel - 1)}


class Head(nn.Module):
    """Encoder frames ``(1, n + lookahead, D)`` -> the lookahead row convolution (valid) -> the family's head."""

    def __init__(self, encoder, head: nn.Module):
        super().__init__()
        self.lookahead = getattr(encoder, "lookahead", None)
        self.head = head

    def forward(self, x):
        if self.lookahead is not None:
            x = self.lookahead.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.head(x)


def encoder_stream(model) -> nn.Module:
    """The encoder's streaming graph module (forward-only RNN or causal Conformer)."""
    from asr.models.conformer import ConformerEncoder
    from asr.models.encoders import RNNEncoder

    enc = model.encoder
    if not getattr(enc, "streamable", False):
        raise UsageError(f"ONNX export is for streaming models: this {type(enc).__name__} sees the whole utterance "
                         "(train a forward-only RNN encoder or a causal Conformer)")
    if isinstance(enc, RNNEncoder):
        return RNNStream(model).eval()
    if isinstance(enc, ConformerEncoder):
        return ConformerStream(model).eval()
    raise UsageError(f"ONNX export: no streaming graph for the encoder {type(enc).__name__}")


def _tokenizer_meta(tokenizer) -> dict:
    state = tokenizer.state_dict()
    if state.get("kind") == "sentencepiece":
        return {"kind": "sentencepiece", "model_proto_b64": base64.b64encode(state["model_proto"]).decode("ascii")}
    return state


def _write(graph: Graph, path: Path, int8: bool, metadata: dict | None, opset: int) -> None:
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "g.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape checks that are constant here
            torch.onnx.export(graph.module, tuple(graph.inputs.values()), str(plain), dynamo=False, opset_version=opset,
                              input_names=list(graph.inputs), output_names=graph.outputs, dynamic_axes=graph.dynamic)
        src = plain
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            src = Path(tmp) / "g.int8.onnx"
            logging.disable(logging.WARNING)  # the quantizer logs a line per tensor it leaves in float
            try:
                quantize_dynamic(str(plain), str(src), weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul", "Gemm", "LSTM"],
                                 reduce_range=True)  # 7-bit weights: no u8 x s8 saturation on CPUs without VNNI
            finally:
                logging.disable(logging.NOTSET)
        proto = onnx.load(str(src))
        if metadata is not None:
            del proto.metadata_props[:]
            entry = proto.metadata_props.add()
            entry.key, entry.value = "asr", json.dumps(metadata)
        with atomic_open(path, "wb") as f:
            f.write(proto.SerializeToString())


def export_streaming_onnx(model, family, tokenizer, out_dir: str | os.PathLike, int8: bool = False,
                          opset: int = 17) -> dict:
    """Write the streaming ONNX export of ``model`` (see the module docstring) into ``out_dir``;
    returns the metadata. Files are written atomically; a failed export leaves none of them."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UsageError("ONNX export needs the onnx package: pip install onnx") from None
    if family.onnx_parts is None:
        raise UsageError(f"the {family.name} family has no streaming ONNX export (ctc and transducer have)")
    model = model.eval().cpu()
    enc = encoder_stream(model)
    parts = family.onnx_parts(model)
    fc = model.frontend.features.config
    s = model.encoder.subsampling
    state = enc.initial_state()
    m = 3
    lookahead = model.encoder.lookahead.future if getattr(model.encoder, "lookahead", None) is not None else 0
    chunk = 0
    if hasattr(model.encoder, "blocks"):
        chunk = max(model.encoder.config.chunk_size, 1)
        m = chunk
    feats = torch.zeros(1, s * (m + 1) - 1, model.frontend.dim)
    state_axes = {"k": {2: "L"}, "v": {2: "L"}}
    encoder_graph = Graph(
        "encoder", enc, {"feats": feats, **state}, ["enc", *[f"{k}_out" for k in state if k != "offset"]],  # (the runtime advances offset)
        {"feats": {1: "L_feats"}, "enc": {1: "m"}, **{k: v for k, v in state_axes.items() if k in state},
         **{f"{k}_out": v for k, v in state_axes.items() if k in state}})
    if "k" in state:  # trace with a non-empty cache (the runtime starts from an empty one)
        encoder_graph.inputs["k"] = torch.zeros(state["k"].shape[0], 1, 2, state["k"].shape[3])
        encoder_graph.inputs["v"] = encoder_graph.inputs["k"].clone()
        encoder_graph.inputs["offset"] = torch.tensor([2])
    D = model.encoder.output_dim
    head = Head(model.encoder, parts.head).eval()
    head_graph = Graph("head", head, {"x": torch.zeros(1, 2 + lookahead, D)}, ["out"], {"x": {1: "n_in"}, "out": {1: "n"}})
    meta = {"format": FORMAT, "family": family.name, "decoder": parts.decoder, "features": fc.to_dict(),
            "subsampling": s, "chunk": chunk, "lookahead": lookahead, "encoder_dim": D,
            "encoder_state": state_spec(state), "tokenizer": _tokenizer_meta(tokenizer), "int8": bool(int8),
            "graphs": ["encoder", "head", *[g.name for g in parts.graphs]], **parts.meta}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for g in [encoder_graph, head_graph, *parts.graphs]:
            path = out_dir / f"{g.name}.onnx"
            _write(g, path, int8, meta if g.name == "encoder" else None, opset)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return meta
