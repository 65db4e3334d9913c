"""Deployment without PyTorch at run time: a numpy front-end equal to :mod:`asr.features`
(:mod:`asr.runtime.features`) and ONNX Runtime sessions with the metadata an exported model
carries (:func:`onnx_session`, :mod:`asr.runtime.recognizer`). Nothing in this package imports torch; the export side
(which does) lives beside the models (:mod:`kws.onnx_export`, :mod:`asr.export`)."""

from __future__ import annotations

import os
from pathlib import Path


def onnx_session(path: str | os.PathLike, threads: int, error: type[Exception]):
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads; a file that
    cannot be loaded raises ``error`` (a :class:`asr.errors.ToolkitError`) naming it."""
    from asr.errors import MissingFileError, UsageError

    try:
        import onnxruntime as ort
    except ImportError:
        raise UsageError("the ONNX backend needs onnxruntime: pip install onnxruntime") from None
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: model file not found")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise error(f"{path}: not an ONNX model ONNX Runtime can load ({type(e).__name__}: {e})") from None


def ctc_greedy_merge(best: list[int], last: int, tokens: list[int], blank: int = 0) -> tuple[list[int], int]:
    """Greedy CTC over frame-best tokens ``best``, continuing a stream: repeats of ``last`` (the best
    token of the previous frame) and blanks are dropped. Returns ``(tokens, new last)``."""
    tokens = list(tokens)
    for b in best:
        if b != blank and b != last:
            tokens.append(b)
        last = b
    return tokens, last
