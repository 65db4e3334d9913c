"""Manifests, corpus preparation, datasets and samplers."""

from asr.data.manifest import ManifestError, read_manifest, write_manifest

__all__ = ["ManifestError", "read_manifest", "write_manifest"]
