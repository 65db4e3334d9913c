"""Deployment without PyTorch at run time: a numpy front-end equal to :mod:`asr.features`
(:mod:`asr.runtime.features`) and ONNX Runtime sessions with the metadata an exported model
carries (:mod:`asr.runtime.onnx`). Nothing in this package imports torch; the export side
(which does) lives beside the models (:mod:`kws.onnx_export`, :mod:`asr.export`)."""
