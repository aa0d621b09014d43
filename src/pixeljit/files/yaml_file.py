"""Reading a user's YAML file: safe tags only, no repeated keys, no aliases, bounded size, and
one-line errors naming the file (a folder, unreadable or non-UTF-8 bytes, malformed YAML).

Aliases are refused because nine nested ones turn a 400-byte file into a structure of 9**9
strings ("billion laughs"): cheap to parse, but any walk over it (or its repr in an error
message) costs gigabytes. Config files never need them."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

MAX_YAML_BYTES = 1 << 20  # a config is a few hundred bytes; 1 MiB is far beyond any


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


class ConfigLoader(UniqueKeyLoader):
    """UniqueKeyLoader that also refuses aliases (`*name`), so a value is never shared."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} is not allowed in a config (write the value "
                "out)", event.start_mark,
            )  # fmt: skip
        return super().compose_node(parent, index)


def parse_yaml(text: str, where: str):
    """The parsed YAML `text` (from `where`, named in errors): safe tags, no repeated keys, no
    aliases, nesting bounded by Python's recursion limit."""
    try:
        return yaml.load(text, Loader=ConfigLoader)
    except yaml.YAMLError as err:
        raise ValueError(f"{where} is not valid YAML: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise ValueError(f"{where} is nested too deeply to be a config") from None


def read_yaml(path: str | os.PathLike, flag: str):
    """The parsed content of the YAML file at `path` (given with `flag`)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder: pass a YAML file")
    if not path.exists():
        raise FileNotFoundError(f"{flag}: config file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{flag} {path} is not a regular file: pass a YAML file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)
        text = raw.decode("utf-8")
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None
    except UnicodeDecodeError:
        raise ValueError(f"{flag} {path} is not UTF-8 text: pass a YAML file") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ValueError(f"{flag} {path} is over {MAX_YAML_BYTES:,} bytes: not a config file")
    return parse_yaml(text, f"{flag} {path}")
