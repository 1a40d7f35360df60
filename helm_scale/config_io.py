"""Typed dataclass configuration from YAML, with dotted command-line overrides.

    cfg = load_config(TrainConfig, "configs/tiny.yaml", ["model.num_layers=4", "optim.lr=3e-4"])

Unknown keys and wrongly typed values are refused with the full dotted name, so a typo
in a YAML file or an override fails before any process group starts. Override values
are parsed as YAML (``4`` is an int, ``3e-4`` a float, ``true`` a bool, ``null`` None).
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return data


def _coerce(value, hint, name: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, a, name)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a section (a mapping), got {value!r}")
        return from_dict(hint, value, name + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        item = args[0] if args else typing.Any
        return tuple(_coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and not (type(value) is hint):
        raise ConfigError(f"{name} must be {hint.__name__}, got {value!r}")
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a nested mapping, refusing unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - set(fields)
    if unknown:
        key = sorted(unknown)[0]
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        raise ConfigError(f"unknown setting {prefix}{key}{hint}; known: {', '.join(sorted(fields))}")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None
    except ValueError as e:  # the dataclass's own validation
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def load_config(cls, path: str | None = None, overrides: list[str] = ()):
    data = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return from_dict(cls, apply_overrides(data, list(overrides)))


def save_config(obj, path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
