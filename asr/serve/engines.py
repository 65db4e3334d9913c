"""What the server runs on the audio: an *engine* turns the chunks of many streams into messages.

The server (:mod:`asr.serve.server`) collects, at each tick, the audio that arrived for every
stream and hands it to :meth:`Engine.step` in one call, off the event loop (one worker thread).
An engine therefore sees all the streams that have work at once and may batch them:

* :class:`AsrEngine` (PyTorch :class:`asr.decode.streaming.Recognizer`): each stream's audio is
  cut into the recognizer's chunks; in round ``r`` the ``r``-th chunks of all streams go through
  the features and then the encoder, the streams whose states have the same shapes
  (:func:`state_signature`; in practice every stream past its first chunk) stacked along the
  batch dimension (:func:`stack_states`), run in one call and split back (:func:`split_state`,
  :func:`infer_batch`: a causal Conformer's streams may be at different positions, with attention
  caches of different lengths); the greedy decoder runs per stream, and the word timings are
  updated incrementally. The text and words equal the single-stream recognizer's.
* :class:`OnnxAsrEngine` (an ``asr export`` folder on :class:`asr.runtime.recognizer.OnnxRecognizer`,
  no torch): its graphs take one stream, so the streams run one after the other.
* the keyword spotter's engine lives in :mod:`kws.serve` (asr never imports kws).

A failure on one stream (or one batch: its streams are then retried one by one) ends that
stream only: its :class:`JobResult` carries the error and the other streams go on.

Example:
    >>> from asr.models.config import ModelConfig, EncoderConfig
    >>> from asr.models.ctc import CTCModel
    >>> from asr.text import CharTokenizer
    >>> from asr.decode.streaming import Recognizer
    >>> tok = CharTokenizer.english()
    >>> model = CTCModel(ModelConfig(encoder=EncoderConfig(dim=16, layers=1, bidirectional=False)), tok.vocab_size)
    >>> engine = AsrEngine(Recognizer(model, tok))
    >>> a, b = engine.open({}), engine.open({"partial": False})
    >>> x = np.zeros(16000, np.float32)
    >>> results = engine.step([Job(a, x, final=True), Job(b, x, final=True)])
    >>> [r.messages[-1]["type"] for r in results], results[0].messages[-1]["audio_seconds"]
    (['final', 'final'], 1.0)
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from asr.serve.batching import infer_batch, split_state, stack_states, state_signature
from asr.serve.protocol import INVALID_DATA, ProtocolError

log = logging.getLogger("asr.serve")

__all__ = ["Engine", "Job", "JobResult", "AsrEngine", "OnnxAsrEngine", "load_asr_engine", "check_options",
           "aligned_chunk_ms"]


@dataclass
class Job:
    """The work of one stream in one tick: new samples ``(n,)`` float32 at the engine's rate
    (possibly none) and whether they end the stream."""

    stream: Any
    samples: np.ndarray
    final: bool = False


@dataclass
class JobResult:
    """The messages for the stream (in order), or the error that ended it."""

    messages: list[dict] = field(default_factory=list)
    error: str | None = None


class Engine:
    """The interface the server needs. ``open`` runs on the event loop (cheap, validates the
    client's options); ``step`` runs in the worker thread, one call per tick for all streams."""

    name: str = "engine"
    sample_rate: int = 16000

    def open(self, options: dict) -> Any:
        """A new stream with the client's engine options; raises :class:`ProtocolError` (1007) on bad ones."""
        raise NotImplementedError

    def step(self, jobs: Sequence[Job]) -> list[JobResult]:
        """Process every job of a tick (at most one per stream); one result per job, in order."""
        raise NotImplementedError

    def stats(self) -> dict:
        """Counters for the server's summary (e.g. how many streams went through each model call)."""
        return {}


def check_options(options: dict, allowed: dict[str, type | tuple[type, ...]]) -> dict:
    """``options`` with every key in ``allowed`` (name -> accepted type(s)); raises :class:`ProtocolError`."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ProtocolError(INVALID_DATA, f"config: unknown field(s) {', '.join(unknown)} (this server takes "
                                          f"sample_rate, format, token{''.join(', ' + k for k in allowed)})")
    for key, value in options.items():
        types = allowed[key] if isinstance(allowed[key], tuple) else (allowed[key],)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ProtocolError(INVALID_DATA, f"config: {key} has the wrong type ({type(value).__name__})")
    return options


# ---------------------------------------------------------------------------
# speech recognition
# ---------------------------------------------------------------------------
@dataclass(eq=False)
class _AsrStream:
    partial: bool
    state: Any
    samples: int = 0  # samples that went through the pipeline
    last_text: str = ""
    error: str | None = None
    words_done: list = field(default_factory=list)  # the words that can no longer change, as JSON
    done_tokens: int = 0  # the tokens they cover
    words_sent: int = 0  # how many of them the client has had in a partial message


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


class _AsrMessages:
    """Partial and final messages, shared by the PyTorch and ONNX engines."""

    sample_rate: int

    def open(self, options: dict) -> _AsrStream:
        check_options(options, {"partial": bool})
        return _AsrStream(partial=options.get("partial", True), state=None)

    def _words(self, stream: _AsrStream) -> list[dict]:  # pragma: no cover - per engine
        """All the words so far (updating ``stream.words_done``), as JSON."""
        raise NotImplementedError

    def _text(self, stream: _AsrStream) -> str:  # pragma: no cover - per engine
        raise NotImplementedError

    def _messages(self, stream: _AsrStream, final: bool) -> JobResult:
        """The final message, or a partial one when the text changed. A partial carries the words
        from ``first_word`` on (the earlier ones were sent before and cannot change), so that its
        size and cost do not grow with the stream; the final one carries them all."""
        if stream.error is not None:
            return JobResult(error=stream.error)
        text = self._text(stream)
        seconds = round(stream.samples / self.sample_rate, 3)
        out: list[dict] = []
        if final:
            out.append({"type": "final", "text": text, "words": self._words(stream), "audio_seconds": seconds})
        elif stream.partial and text != stream.last_text:
            words, first = self._words(stream), stream.words_sent
            out.append({"type": "partial", "text": text, "words": words[first:], "first_word": first,
                        "audio_seconds": seconds})
            stream.words_sent = len(stream.words_done)
        stream.last_text = text
        return JobResult(out)


class AsrEngine(_AsrMessages, Engine):
    """Streaming recognition with a PyTorch :class:`asr.decode.streaming.Recognizer`, batched
    across streams in the encoder (see the module docstring).

    Args:
        recognizer: the recognizer (its model, tokenizer and ``chunk_ms``).
        batch: stack the streams' encoder states (``False``: every stream on its own, for comparison).
    """

    name = "asr"

    def __init__(self, recognizer, batch: bool = True):
        self.recognizer = recognizer
        self.model = recognizer.model
        self.chunk = recognizer.chunk_samples
        self.sample_rate = int(self.model.frontend.features.config.sample_rate)
        self.batch = batch
        self.calls = 0  # encoder calls
        self.batched = 0  # streams that went through them

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, chunk_ms: float | None = None, device: str = "cpu",
                        batch: bool = True) -> "AsrEngine":
        """The engine of a checkpoint; ``chunk_ms`` ``None``: :func:`aligned_chunk_ms` (200 ms, aligned)."""
        from asr.checkpoint import load_model
        from asr.decode.streaming import Recognizer

        model, family, tokenizer, _ = load_model(path, device, purpose="asr serve", recognizer=True)
        chunk_ms = chunk_ms or aligned_chunk_ms(model)
        return cls(Recognizer(model, tokenizer, chunk_ms=chunk_ms, family=family), batch=batch)

    def open(self, options: dict) -> _AsrStream:
        stream = super().open(options)
        stream.state = self.recognizer.init_state()
        return stream

    def stats(self) -> dict:
        return {"encoder_calls": self.calls, "streams_per_encoder_call": round(self.batched / max(self.calls, 1), 2)}

    def _text(self, stream: _AsrStream) -> str:
        return self.recognizer.tokenizer.decode(stream.state["decoder"]["tokens"])

    def _words(self, stream: _AsrStream) -> list[dict]:
        """:meth:`Recognizer.words`, computed incrementally: greedy tokens are never revised, so
        every word but the last is final once the next one has begun (its tokens' frames and
        posteriors no longer change); only the words from ``stream.done_tokens`` on are aligned again
        (the whole list each time cost 10 ms per minute of speech per update)."""
        from asr.decode.ctc import WordSplitter
        from asr.decode.timestamps import TokenAlignment, frame_seconds, words_from_alignment

        if getattr(self, "_splitter", None) is None:
            self._splitter = WordSplitter(self.recognizer.tokenizer)
            self._frame_seconds = frame_seconds(self.model)
        sp, dec = self._splitter, stream.state["decoder"]
        tokens = dec["tokens"]
        last, has_text = stream.done_tokens, False  # where the last word begins, as words_from_alignment groups
        for i in range(stream.done_tokens, len(tokens)):
            if sp.starts_word[tokens[i]] and has_text:
                last, has_text = i, False
            has_text = has_text or bool(sp.text[tokens[i]])
        ali = self.recognizer.decoder.alignment(dec)

        def words(a: int, b: int) -> list[dict]:
            part = TokenAlignment(ali.start[a:b], ali.end[a:b], ali.confidence[a:b])
            return [w.to_json() for w in words_from_alignment(tokens[a:b], part, sp, self.recognizer.tokenizer,
                                                              self._frame_seconds)]

        if last > stream.done_tokens:
            stream.words_done += words(stream.done_tokens, last)
            stream.done_tokens = last
        return stream.words_done + words(last, len(tokens))

    def step(self, jobs: Sequence[Job]) -> list[JobResult]:
        import torch

        with torch.no_grad():
            device = self.recognizer.device
            plans = []  # per job: the pieces (samples, final) the recognizer's chunking gives
            for job in jobs:
                st = job.stream
                buf = torch.cat([st.state["samples"], torch.from_numpy(np.ascontiguousarray(job.samples, np.float32)).to(device)])
                n = buf.shape[0] // self.chunk
                pieces = [(buf[i * self.chunk:(i + 1) * self.chunk], False) for i in range(n)]
                if job.final:
                    pieces.append((buf[n * self.chunk:], True))
                st.state["samples"] = buf[len(pieces) * self.chunk if not job.final else buf.shape[0]:]
                plans.append(pieces)
            for r in range(max((len(p) for p in plans), default=0)):
                self._round([(job.stream, *plan[r]) for job, plan in zip(jobs, plans)
                             if r < len(plan) and job.stream.error is None])
            for job in jobs:
                if job.final:
                    job.stream.state["finished"] = True
            return [self._messages(job.stream, job.final) for job in jobs]

    def _round(self, items: list[tuple[_AsrStream, Any, bool]]) -> None:
        """One chunk of each stream: features and encoder batched over the streams whose states
        stack, the decoder per stream."""
        by_features: dict[Any, list] = defaultdict(list)
        for item in items:
            st, x, _ = item
            by_features[(x.shape[0], state_signature(st.state["features"])) if self.batch else id(item)].append(item)
        ready = []
        for group in by_features.values():
            ready += self._features(group)
        groups: dict[Any, list] = defaultdict(list)
        for item in ready:
            st, _, final, feats, _ = item
            key = (feats.shape[1], final, state_signature(st.state["encoder"])) if self.batch else id(item)
            groups[key].append(item)
        for group in groups.values():
            for (st, x, final, _, fstate), (enc, estate) in zip(group, self._encode(group)):
                if enc is None:
                    continue
                try:
                    dstate = self.recognizer.decoder.step(enc, st.state["decoder"]) if enc.shape[1] > 0 \
                        else st.state["decoder"]
                except Exception as e:  # noqa: BLE001
                    log.exception("decoder failed on a stream")
                    st.error = _error(e)
                    continue
                st.state.update(features=fstate, encoder=estate, decoder=dstate)
                st.samples += x.shape[0]

    def _features(self, group: list) -> list[tuple]:
        """Features + CMVN of the group's chunks (equal lengths, stackable states) in one call;
        on failure each stream alone. -> ``(stream, samples, final, feats (1, t, F), feature state)``."""
        import torch

        frontend = self.model.frontend

        def run(x, state):
            with torch.autocast(x.device.type, enabled=False):  # features in float32, as offline
                feats, state = frontend.features.infer(x, state)
                return frontend.cmvn(feats), state

        if len(group) > 1:
            try:
                feats, state = run(torch.stack([x for _, x, _ in group]), stack_states([st.state["features"]
                                                                                        for st, _, _ in group]))
                return [(st, x, final, f, s) for (st, x, final), f, s in
                        zip(group, feats.split(1), split_state(state, len(group)))]
            except Exception:  # noqa: BLE001 - find the stream that fails, keep the others
                log.exception("batched features failed; retrying %d streams one by one", len(group))
        out = []
        for st, x, final in group:
            try:
                out.append((st, x, final, *run(x.unsqueeze(0), st.state["features"])))
            except Exception as e:  # noqa: BLE001 - one stream's failure must not end the others
                log.exception("features failed on a stream")
                st.error = _error(e)
        return out

    def _encode(self, group: list) -> list[tuple[Any, Any]]:
        """``encoder.infer`` on the group's streams as one batch; on failure each stream alone."""
        import torch

        encoder = self.model.encoder
        final = group[0][2]
        if len(group) > 1:
            try:
                out, states = infer_batch(encoder, torch.cat([g[3] for g in group]),
                                          [g[0].state["encoder"] for g in group], final=final)
                self.calls += 1
                self.batched += len(group)
                return list(zip(out.split(1), states))
            except Exception:  # noqa: BLE001 - find the stream that fails, keep the others
                log.exception("a batched encoder call failed; retrying its %d streams one by one", len(group))
        results = []
        for st, _, final, feats, _ in group:
            try:
                results.append(encoder.infer(feats, st.state["encoder"], final=final))
                self.calls += 1
                self.batched += 1
            except Exception as e:  # noqa: BLE001
                log.exception("the encoder failed on a stream")
                st.error = _error(e)
                results.append((None, None))
        return results


class OnnxAsrEngine(_AsrMessages, Engine):
    """Streaming recognition with an ``asr export`` folder on ONNX Runtime (no torch). The
    exported graphs take one stream, so each stream runs on its own (no batching)."""

    name = "asr"

    def __init__(self, recognizer):
        self.recognizer = recognizer
        self.sample_rate = int(recognizer.sample_rate)
        self.calls = 0

    def open(self, options: dict) -> _AsrStream:
        stream = super().open(options)
        stream.state = self.recognizer.init_state()
        return stream

    def stats(self) -> dict:
        return {"stream_calls": self.calls}

    def _text(self, stream: _AsrStream) -> str:
        return self.recognizer.tokenizer.decode(stream.state["decoder"]["tokens"])

    def _words(self, stream: _AsrStream) -> list[dict]:
        words = getattr(self.recognizer, "words", None)  # (word timings on ONNX: when the runtime has them)
        if words is None:
            return []
        everything = [w.to_json() for w in words(stream.state)]
        stream.words_done = everything[:-1]
        return everything

    def step(self, jobs: Sequence[Job]) -> list[JobResult]:
        results = []
        for job in jobs:
            st = job.stream
            before = st.state["samples"].shape[0]
            try:
                _, st.state = self.recognizer.infer(job.samples, st.state, final=job.final)
                self.calls += 1
                st.samples += before + job.samples.shape[0] - st.state["samples"].shape[0]
            except Exception as e:  # noqa: BLE001
                log.exception("the ONNX recognizer failed on a stream")
                st.error = _error(e)
            results.append(self._messages(st, job.final))
        return results


def aligned_chunk_ms(model, target: float = 200.0) -> float:
    """The recognizer's chunk for serving ``model``: ``target`` ms, for a causal Conformer rounded to
    whole attention chunks (``chunk_size * subsampling * hop``: 160 ms for 4 frames of 40 ms), so
    that every stream past its first chunk leaves the same number of frames waiting and the
    streams' states stack (a chunk of 200 ms against 160 ms attention chunks would split them
    into four phases)."""
    from asr.models.conformer import ConformerEncoder

    encoder = model.encoder
    if not isinstance(encoder, ConformerEncoder):
        return target
    fc = model.frontend.features.config
    unit = max(encoder.config.chunk_size, 1) * encoder.subsampling * fc.hop_length * 1000.0 / fc.sample_rate
    return max(1, round(target / unit)) * unit


def load_asr_engine(model: str | os.PathLike, chunk_ms: float | None = None, device: str = "cpu", threads: int = 1,
                    backend: str = "auto", batch: bool = True) -> Engine:
    """The engine of ``asr serve --model``: a checkpoint on PyTorch (:class:`AsrEngine`), or an
    ``asr export`` folder on ONNX Runtime (:class:`OnnxAsrEngine`; ``backend`` forces one).
    ``chunk_ms`` ``None``: 200 ms, aligned to a causal Conformer's attention chunks (:func:`aligned_chunk_ms`)."""
    from pathlib import Path

    from asr.errors import MissingFileError, UsageError

    path = Path(model)
    if not path.exists():
        raise MissingFileError(f"{path}: model not found")
    if backend == "onnx" or (backend == "auto" and path.is_dir()):
        from asr.runtime.recognizer import OnnxRecognizer

        return OnnxAsrEngine(OnnxRecognizer(path, chunk_ms=chunk_ms or 200.0, threads=threads))
    if path.is_dir():
        raise UsageError(f"{path}: an ONNX export folder needs --backend onnx (or auto)")
    import torch

    torch.set_num_threads(max(1, threads))
    return AsrEngine.from_checkpoint(path, chunk_ms=chunk_ms, device=device, batch=batch)
