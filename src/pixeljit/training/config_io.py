"""A `TrainConfig` to and from plain dicts, YAML files and `--set section.field=value` overrides.

Every value is checked against its field's annotated type before the section re-validates itself
(the rules live with the dataclasses in `config`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import numpy as np
import yaml

from pixeljit.files.yaml_file import parse_yaml, read_yaml
from pixeljit.training.config import CHOICES, SECTIONS, TrainConfig, check_model_fields, shown
from pixeljit.values import is_integer, is_real


def plain_json(value):
    """Tuples → lists, so a value equals what its JSON (or YAML) reads back as."""
    if isinstance(value, (tuple, list)):
        return [plain_json(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    return value


def to_dict(cfg: TrainConfig) -> dict:
    """Nested plain dict (tuples → lists), as saved with runs and checkpoints."""
    return plain_json(dataclasses.asdict(cfg))


def _coerce(name: str, value, hint):
    """Check / convert `value` to the annotated type `hint` of field `name`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, arg)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {shown(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(name, v, args[0]) for v in value)
        if len(value) != len(args):
            raise ValueError(f"{name} must have {len(args)} entries, got {shown(value)}")
        return tuple(_coerce(name, v, a) for v, a in zip(value, args, strict=True))
    if hint is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be true or false, got {shown(value)}")
        return bool(value)
    if hint is int:
        if not is_integer(value):
            raise ValueError(f"{name} must be an integer, got {shown(value)}")
        return int(value)  # a NumPy integer (a count from an array) as the int YAML writes
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if not is_real(value):
            raise ValueError(f"{name} must be a number, got {shown(value)}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {shown(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {shown(value)}")
        return value
    raise ValueError(f"{name}: unsupported field type {hint}")


def apply_overrides(cfg: TrainConfig, overrides: dict) -> TrainConfig:
    """Apply {section: {field: value}} or {'section.field': value} to a config."""
    nested: dict[str, dict] = {}
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ValueError(f"config key {shown(key)} must be a section name (e.g. optim), not a "
                             f"{type(key).__name__}")  # fmt: skip
        if key in SECTIONS and not isinstance(value, dict):
            raise ValueError(f"config section {shown(key)} must be a mapping of fields (e.g. "
                             f"{key}: {{field: value}}), got {shown(value)}")  # fmt: skip
        if isinstance(value, dict) and "." not in key:
            for sub, v in value.items():
                if not isinstance(sub, str):
                    raise ValueError(
                        f"config field {shown(sub)} of section {shown(key)} must be a name"
                    )
                nested.setdefault(key, {})[sub] = v
        else:
            section, _, name = key.partition(".")
            if not name:  # a bare key: a section name given a value, or a typo of one
                raise ValueError(f"unknown config section {shown(key)}; sections are {SECTIONS} "
                                 "(each a mapping of fields; on the command line --set "
                                 "section.field=value)")  # fmt: skip
            nested.setdefault(section, {})[name] = value
    sections = {}
    for section, values in nested.items():
        if section not in SECTIONS:
            raise ValueError(f"unknown config section {shown(section)}; sections are {SECTIONS}")
        current = getattr(cfg, section)
        hints = typing.get_type_hints(type(current))
        changes = {}
        for name, value in values.items():
            if name not in hints:
                raise ValueError(f"unknown field {section}.{name}; {section} has {sorted(hints)}")
            try:
                changes[name] = _coerce(f"{section}.{name}", value, hints[name])
            except ValueError:
                if f"{section}.{name}" not in CHOICES:
                    raise
                choices = CHOICES[f"{section}.{name}"]  # one message, not one per type tried
                got = shown(value)
                raise ValueError(f"{section}.{name} must be {choices}, got {got}") from None
        if section == "model":  # before JiTConfig divides by them
            check_model_fields({**dataclasses.asdict(current), **changes})
        try:
            sections[section] = dataclasses.replace(current, **changes)
        except ValueError as err:  # the section's own check: name the field as the user does
            raise ValueError(_qualified(section, str(err), hints)) from None
    return dataclasses.replace(cfg, **sections)


def _qualified(section: str, message: str, fields) -> str:
    """'p_std must be ≥ 0' → 'objective.p_std must be ≥ 0' (a message that starts with one of
    the section's fields; any other gets 'objective: ' in front)."""
    if message.startswith(f"{section}."):
        return message
    first = message.split(" ", 1)[0]
    return f"{section}.{message}" if first in fields else f"{section}: {message}"


def parse_set(items: list[str]) -> dict:
    """['optim.lr=1e-4', 'model.depth=6'] → {'optim.lr': 1e-4, 'model.depth': 6} (YAML values)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {shown(item)} must look like section.field=value")
        out[key.strip()] = parse_yaml(raw, f"--set {shown(item)}") if raw.strip() else ""
    return out


def load_yaml(path: str | Path) -> dict:
    """A config file's mapping of sections (one-line errors for a folder, bad text or YAML)."""
    data = read_yaml(path, "--config") or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections")
    return data


def from_dict(data: dict) -> TrainConfig:
    """Rebuild a TrainConfig from `to_dict` output (e.g. a checkpoint's saved config)."""
    return apply_overrides(TrainConfig(), data)


def yaml_text(config: dict) -> str:
    """What `save_yaml` writes for a config (`to_dict`)."""
    return yaml.safe_dump(config, sort_keys=False)


def save_yaml(cfg: TrainConfig, path: str | Path) -> Path:
    from pixeljit.files.atomic import atomic_write_text

    return atomic_write_text(path, yaml_text(to_dict(cfg)))
