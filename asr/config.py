"""YAML configs mapped onto dataclasses, with ``key=value`` overrides.

Every field has a default, so a config file only names what it changes. Unknown keys
and values of the wrong type are errors that name the file and the key. Values are read
with ``yaml.safe_load``: nothing in a config is ever executed.

Example:
    >>> from asr.features import FeatureConfig
    >>> cfg = from_dict(FeatureConfig, {"n_mels": 40}, overrides=["kind=pcen", "hop_ms=12.5"])
    >>> cfg.n_mels, cfg.kind, cfg.hop_ms
    (40, 'pcen', 12.5)
    >>> try:
    ...     from_dict(FeatureConfig, {"n_mel": 40})
    ... except ConfigError as e:
    ...     print(e)
    config: unknown key 'n_mel' (known: f_max, f_min, hop_ms, kind, log_floor, mel_scale, n_fft, n_mels, n_mfcc, pcen_alpha, pcen_delta, pcen_eps, pcen_r, pcen_scale, pcen_time_constant, pcen_trainable, power, sample_rate, win_ms)
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from asr.errors import ToolkitError

T = TypeVar("T")


class ConfigError(ToolkitError, ValueError):
    """A config value or key is wrong; the message names the source and the key."""


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp, where: str):
    """Check/convert ``value`` to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _build(cls: type[T], data: dict, where: str) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """``["optim.lr=1e-3", "epochs=2"]`` -> ``[("optim.lr", 0.001), ("epochs", 2)]``."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=0.001)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        if isinstance(value, str) and _looks_numeric(value):  # YAML 1.1 reads 1e-3 as a string
            value = float(value)
        out.append((key.strip(), value))
    return out


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _fix_numbers(node):
    """YAML 1.1 (PyYAML) reads ``1e-3`` as a string; turn such strings into floats."""
    if isinstance(node, dict):
        return {k: _fix_numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_numbers(v) for v in node]
    if isinstance(node, str) and _looks_numeric(node) and not node.strip().isalpha():
        return float(node)
    return node


def from_dict(cls: type[T], data: dict | None, overrides: Sequence[str] = (), source: str = "config") -> T:
    """Build ``cls`` from a nested mapping, then apply ``key=value`` overrides."""
    data = _fix_numbers(dict(data or {}))
    for key, value in parse_overrides(overrides):
        _set_path(data, key, value)
    try:
        return _build(cls, data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {str(e).lstrip('.: ')}") from None


def load_config(cls: type[T], path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> T:
    """Read a YAML file (or nothing) into ``cls``, applying overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder, not a YAML config file")
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8)") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    return from_dict(cls, data, overrides, source=str(path) if path else "config")


def to_dict(cfg) -> dict:
    """A dataclass config as plain nested dicts/lists (for YAML and checkpoints)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def dump_config(cfg, path: str | os.PathLike) -> None:
    from asr.utils import atomic_open

    with atomic_open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
