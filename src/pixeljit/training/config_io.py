"""A `TrainConfig` to and from plain dicts, YAML files and `--set section.field=value` overrides.

Every value is checked against its field's annotated type before the section re-validates itself
(the rules live with the dataclasses in `config`; those of a user's layer of settings, the same
for a file, `--set` and `apply_overrides`, in `config_rules`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pixeljit.files.yaml_file import dump_yaml, parse_yaml, read_yaml
from pixeljit.training.config import CHOICES, SECTIONS, TrainConfig, check_model_fields, shown
from pixeljit.training.config_rules import changed, check_effects, flatten, layer_rules
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


# what a list field holds, as its errors say
LISTS = {"model.dropout_blocks": "a list [start, stop] of block indices, each an integer",
         "optim.betas": "a list of two numbers [beta1, beta2]",
         "sample.interval": "a list of two numbers [low, high] of t"}  # fmt: skip


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
        kind = "integer" if args[0] is int else "number"
        if len(args) == 2 and args[1] is Ellipsis:
            what = LISTS.get(name, f"a list of {kind}s")
        else:
            what = LISTS.get(name, f"a list of {len(args)} {kind}s")
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be {what}, got {shown(value)}")
        if not (len(args) == 2 and args[1] is Ellipsis) and len(value) != len(args):
            raise ValueError(f"{name} must be {what}, got {len(value)} entries: {shown(value)}")
        kinds = [args[0]] * len(value) if args[-1] is Ellipsis else args
        try:
            return tuple(_coerce(name, v, a) for v, a in zip(value, kinds, strict=True))
        except ValueError:
            raise ValueError(f"{name} must be {what}, got {shown(value)}") from None
    if hint is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be true or false, got {shown(value)}")
        return bool(value)
    if hint is int:
        if not is_integer(value):
            raise ValueError(f"{name} must be an integer, got {shown(value)}")
        return int(value)  # a NumPy integer (a count from an array) as the int YAML writes
    if hint is float:
        if not is_real(value):  # (text is no number: YAML reads 1e-4 as one, '1e-4' as text)
            raise ValueError(f"{name} must be a number, got {shown(value)}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {shown(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {shown(value)}")
        return value
    raise ValueError(f"{name}: unsupported field type {hint}")


def apply_overrides(cfg: TrainConfig, overrides: Mapping) -> TrainConfig:
    """Apply {section: {field: value}} or {'section.field': value} to a config, as `pixeljit
    train --config` / `--set` do (`config_rules`): each field once; optim.steps / optim.epochs
    alone clears the other, optim.blr alone clears optim.lr; model.num_classes asks the data for
    that many classes; a changed field that has no effect in the result is refused."""
    new, asked = apply_layer(cfg, overrides, "apply_overrides")
    check_effects(dict.fromkeys(asked), new)
    return new


def apply_layer(
    cfg: TrainConfig, overrides, where: str, label: str | None = None
) -> tuple[TrainConfig, list[str]]:
    """`overrides` (a mapping) given in `where` applied over `cfg` with
    the rules of `config_rules`, and the fields it changed (for `check_effects` once every layer
    is applied). `label`: put in front of the messages that do not name `where`."""
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"{where} takes a TrainConfig (e.g. pixeljit.get_preset(name)), got "
                        f"{type(cfg).__name__}")  # fmt: skip
    if not isinstance(overrides, Mapping):
        got = type(overrides).__name__
        raise TypeError(f"{where} takes a mapping of overrides ({{'section.field': value}} or "
                        f"{{section: {{field: value}}}}), got {got}")  # fmt: skip
    said = f"{label}: " if label else ""
    try:
        flat = flatten(overrides)
    except ValueError as err:
        raise ValueError(f"{said}{err}") from None
    extra = layer_rules(flat, where, cfg)
    try:
        new = set_fields(cfg, {**flat, **extra})
    except ValueError as err:
        raise ValueError(f"{said}{err}") from None
    return new, changed(flat, cfg, new)


def set_fields(cfg: TrainConfig, flat: dict) -> TrainConfig:
    """{'section.field': value} set as given (no rule of a user's layer: a saved config, or
    fields a command's flags set), each value checked against its field's type and each section
    re-validated."""
    nested: dict[str, dict] = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    sections = {}
    for section in sorted(nested, key=lambda s: SECTIONS.index(s) if s in SECTIONS else -1):
        values = nested[section]
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
    """['optim.lr=1e-4', 'model.depth=6'] → {'optim.lr': 1e-4, 'model.depth': 6} (YAML values,
    each read whole; a section's mapping, 'optim={lr: 1e-4}', as its dotted fields); a field
    given twice is refused."""
    entries = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {shown(item)} must look like section.field=value")
        value = parse_yaml(raw, f"--set {shown(item)}", whole=True) if raw.strip() else ""
        entries.append((key.strip(), value, shown(item)))
    try:
        return flatten(entries)
    except ValueError as err:
        raise ValueError(f"--set: {err}") from None


def load_yaml(path: str | Path, flag: str = "--config") -> dict:
    """A config file's mapping of sections (one-line errors for a folder, bad text or YAML)."""
    data = read_yaml(path, flag)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{flag} {path} must hold a mapping of sections ({{section: {{field: "
                         f"value}}}}), got a {type(data).__name__}")  # fmt: skip
    return data


def from_dict(data: Mapping) -> TrainConfig:
    """Rebuild a TrainConfig from `to_dict` output (e.g. a checkpoint's saved config): its fields
    as they are, over the defaults (no rule of a user's layer: it is a whole config)."""
    if not isinstance(data, Mapping):
        raise TypeError(f"a saved config must be a mapping of sections, got {type(data).__name__}")
    return set_fields(TrainConfig(), flatten(data))


def missing_fields(data: Mapping) -> list[str]:
    """The 'section.field' names a whole config (a run's config.yaml) has and `data` (a file's
    mapping) lacks: empty when `data` can stand alone, without a preset under it."""
    given = set(flatten(data))
    return [key for key in flatten(to_dict(TrainConfig())) if key not in given]


def yaml_text(config: dict) -> str:
    """What `save_yaml` writes for a config (`to_dict`): a string YAML would read as something
    else quoted."""
    return dump_yaml(config)


def save_yaml(cfg: TrainConfig, path: str | Path) -> Path:
    from pixeljit.files.atomic import atomic_write_text

    return atomic_write_text(path, yaml_text(to_dict(cfg)))
