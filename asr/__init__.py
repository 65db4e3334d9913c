"""End-to-end speech recognition toolkit: audio front-end, data, models, decoders, active learning."""

__version__ = "0.1.0"
