"""Streaming recognition on ONNX Runtime and numpy, no torch: the folder ``asr export`` writes.

:class:`OnnxRecognizer` has the interface of :class:`asr.decode.streaming.Recognizer`:
``infer(samples, state=None, final=False) -> (text so far, state)``, one state per stream.
Per call: numpy log-mel frames (:class:`asr.runtime.features.LogMel`); whenever enough frames
are there for new encoder frames (``s * (m + 1) - 1`` feature frames give ``m``; a causal
Conformer takes whole attention chunks), ``encoder.onnx`` with the encoder's state; the
lookahead waits for its future frames (zeros at the end, as offline); ``head.onnx``; and the
family's greedy decoder (:data:`DECODERS`), which carries its state across chunks. The text
equals the PyTorch streaming recognizer's, which equals offline greedy decoding.

Example:
    >>> rec = OnnxRecognizer("exp/ctc_streaming.onnx")  # doctest: +SKIP
    >>> text, state = rec.infer(samples_16k[:3200])  # doctest: +SKIP
    >>> text, state = rec.infer(samples_16k[3200:], state, final=True)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np

from asr.constants import BLANK
from asr.errors import MissingFileError, ToolkitError, UsageError
from asr.runtime import ctc_greedy_merge, onnx_session
from asr.runtime.features import LogMel


class ExportError(ToolkitError, ValueError):
    """A folder that is not a streaming ASR export of this toolkit."""


def _session(path: Path, threads: int):
    if not path.is_file():
        raise MissingFileError(f"{path}: not found (write the export with `asr export CKPT {path.parent}`)")
    return onnx_session(path, threads, ExportError)


def _zeros(spec: list[dict]) -> dict[str, np.ndarray]:
    return {s["name"]: np.zeros(s["shape"], dtype=s["dtype"]) for s in spec}


def tokenizer_from_meta(meta: dict):
    """The tokenizer stored in the export's metadata."""
    from asr.text import tokenizer_from_state

    state = dict(meta)
    if "model_proto_b64" in state:
        state["model_proto"] = base64.b64decode(state.pop("model_proto_b64"))
    return tokenizer_from_state(state)


class CTCGreedy:
    """Greedy CTC over head outputs (log-probabilities), repeats merged across chunks."""

    def __init__(self, rec: "OnnxRecognizer"):
        pass

    def init_state(self) -> dict:
        return {"tokens": [], "last": BLANK}

    def step(self, out: np.ndarray, state: dict) -> dict:
        tokens, last = ctc_greedy_merge(out.argmax(-1).tolist(), state["last"], state["tokens"], BLANK)
        return {"tokens": tokens, "last": last}


class TransducerGreedy:
    """Greedy transducer decoding over the joiner's encoder projections: at most ``max_symbols``
    tokens per frame; the predictor runs after each emitted token."""

    def __init__(self, rec: "OnnxRecognizer"):
        self.predictor = _session(rec.path / "predictor.onnx", rec.threads)
        self.joiner = _session(rec.path / "joiner.onnx", rec.threads)
        self.spec = rec.meta["predictor_state"]
        self.max_symbols = int(rec.meta.get("max_symbols", 5))

    def _predict(self, token: int, pstate: dict) -> tuple[np.ndarray, dict]:
        outs = self.predictor.run(None, {"token": np.array([token], np.int64), **pstate})
        return outs[0], {s["name"]: o for s, o in zip(self.spec, outs[1:])}

    def init_state(self) -> dict:
        pred_proj, pstate = self._predict(BLANK, _zeros(self.spec))
        return {"tokens": [], "pred_proj": pred_proj, "pred_state": pstate}

    def step(self, enc_proj: np.ndarray, state: dict) -> dict:
        pred_proj, pstate, tokens = state["pred_proj"], state["pred_state"], list(state["tokens"])
        for t in range(enc_proj.shape[0]):
            for _ in range(self.max_symbols):
                logits = self.joiner.run(None, {"enc_proj": enc_proj[t:t + 1], "pred_proj": pred_proj})[0]
                best = int(logits[0].argmax())
                if best == BLANK:
                    break
                tokens.append(best)
                pred_proj, pstate = self._predict(best, pstate)
        return {"tokens": tokens, "pred_proj": pred_proj, "pred_state": pstate}


DECODERS = {"ctc_greedy": CTCGreedy, "transducer_greedy": TransducerGreedy}


class OnnxRecognizer:
    """Incremental greedy recognition of audio streams with an ``asr export`` folder.

    Args:
        path: the folder (encoder.onnx, head.onnx, and the family's graphs).
        chunk_ms: the pipeline runs on whole chunks of this much audio, as
            :class:`asr.decode.streaming.Recognizer` does (results do not depend on it).
        threads: ONNX Runtime intra-op threads per graph.
    """

    def __init__(self, path: str | os.PathLike, chunk_ms: float = 200.0, threads: int = 1):
        self.path, self.threads = Path(path), threads
        if not self.path.is_dir():
            raise MissingFileError(f"{self.path}: not an export folder (write one with `asr export CKPT {self.path}`)")
        self.encoder = _session(self.path / "encoder.onnx", threads)
        raw = self.encoder.get_modelmeta().custom_metadata_map.get("asr")
        if raw is None:
            raise ExportError(f"{self.path / 'encoder.onnx'}: no 'asr' metadata (not written by `asr export`)")
        try:
            self.meta = meta = json.loads(raw)
            self.frontend = LogMel(meta["features"])
            self.s, self.chunk, self.lookahead = int(meta["subsampling"]), int(meta["chunk"]), int(meta["lookahead"])
            self.dim = int(meta["encoder_dim"])
            self.state_spec = meta["encoder_state"]
            self.tokenizer = tokenizer_from_meta(meta["tokenizer"])
            decoder = DECODERS[meta["decoder"]]
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ToolkitError):
                raise
            raise ExportError(f"{self.path / 'encoder.onnx'}: bad 'asr' metadata ({type(e).__name__}: {e})") from None
        self.head = _session(self.path / "head.onnx", threads)
        self.decoder = decoder(self)
        if chunk_ms <= 0:
            raise UsageError(f"chunk_ms must be positive, got {chunk_ms}")
        self.chunk_samples = max(1, int(round(chunk_ms * self.frontend.sample_rate / 1000)))
        self._outputs = [o.name for o in self.encoder.get_outputs()]
        self.head_log: list[np.ndarray] | None = None  # set to a list to keep every head output (n, K)

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    def init_state(self) -> dict:
        return {"samples": np.zeros(0, np.float32), "features": None, "feats": np.zeros((0, self.frontend.dim), np.float32),
                "encoder": _zeros(self.state_spec), "pending": np.zeros((0, self.dim), np.float32),
                "decoder": self.decoder.init_state(), "finished": False}

    def infer(self, samples, state: dict | None = None, final: bool = False) -> tuple[str, dict]:
        """Feed samples ``(n,)`` at the model's rate -> the text recognised so far and the new state."""
        if state is None:
            state = self.init_state()
        elif state["finished"]:
            raise ValueError("this stream is finished (final=True was passed); start a new one with state=None")
        state = dict(state)
        pending = np.concatenate([state["samples"], np.asarray(samples, np.float32).reshape(-1)])
        ready = pending.shape[0] if final else pending.shape[0] // self.chunk_samples * self.chunk_samples
        if ready > 0 or final:
            self._process(pending[:ready], state, final)
        state["samples"] = pending[ready:]
        state["finished"] = final
        return self.tokenizer.decode(state["decoder"]["tokens"]), state

    def _encode(self, feats: np.ndarray, m: int, state: dict) -> np.ndarray:
        """``m`` new encoder frames from the first ``s * (m + 1) - 1`` buffered feature frames."""
        enc_state = state["encoder"]
        outs = self.encoder.run(None, {"feats": feats[None, : self.s * (m + 1) - 1], **enc_state})
        new = dict(enc_state)
        for name, value in zip(self._outputs[1:], outs[1:]):
            new[name[: -len("_out")]] = value
        if "offset" in new:
            new["offset"] = enc_state["offset"] + m
        state["encoder"] = new
        return outs[0][0]

    def _process(self, samples: np.ndarray, state: dict, final: bool) -> None:
        frames, state["features"] = self.frontend.infer(samples, state["features"])
        feats = np.concatenate([state["feats"], frames])
        available = max(0, (feats.shape[0] + 1) // self.s - 1)  # encoder frames the features give
        if self.chunk:  # a causal Conformer attends in whole chunks; the last partial one at the end
            sizes = [self.chunk] * (available // self.chunk) + ([available % self.chunk] if final and available % self.chunk else [])
        else:
            sizes = [available] if available else []
        enc = [state["pending"]]
        for m in sizes:
            enc.append(self._encode(feats, m, state))
            feats = feats[m * self.s:]
        state["feats"] = feats
        x = np.concatenate(enc)
        if final and self.lookahead:
            x = np.concatenate([x, np.zeros((self.lookahead, self.dim), np.float32)])
        n = x.shape[0] - self.lookahead
        if n > 0:
            out = self.head.run(None, {"x": x[None]})[0][0]
            if self.head_log is not None:
                self.head_log.append(out)
            state["decoder"] = self.decoder.step(out, state["decoder"])
            x = x[n:]
        state["pending"] = x if not final else x[:0]


def transcribe_file(recognizer: OnnxRecognizer, path: str | os.PathLike) -> str:
    """One file through ``recognizer`` a chunk at a time (any format and rate; resampled as a stream)."""
    from asr.audio import iter_audio_blocks

    state = None
    for block in iter_audio_blocks(path, recognizer.sample_rate, recognizer.chunk_samples / recognizer.sample_rate,
                                   numpy=True):
        _, state = recognizer.infer(block, state)
    text, _ = recognizer.infer(np.zeros(0, np.float32), state, final=True)
    return text
