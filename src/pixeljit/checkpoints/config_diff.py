"""What differs between two nested config dicts (a checkpoint's and the one given now)."""

from __future__ import annotations

ABSENT = "<absent>"  # a field one of two compared configs lacks


def config_changes(
    saved: dict, current: dict, prefix: str = ""
) -> list[tuple[str, object, object]]:
    """(dotted name, saved value, current value) of each field whose value differs between two
    nested config dicts (ABSENT for a field one side lacks), sorted by name within a section."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, ABSENT), current.get(key, ABSENT)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, name + ".")
        elif a != b:
            out.append((name, a, b))
    return out


def diff_configs(saved: dict, current: dict) -> list[str]:
    """'name: checkpoint A vs now B' for each field `config_changes` finds."""
    return [
        f"{name}: checkpoint {a!r} vs now {b!r}" for name, a, b in config_changes(saved, current)
    ]
