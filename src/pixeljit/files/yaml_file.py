"""Reading a user's YAML file: safe tags only, no repeated keys, and one-line errors naming the
file (a folder, unreadable or non-UTF-8 bytes, malformed YAML)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml


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


def read_yaml(path: str | os.PathLike, flag: str):
    """The parsed content of the YAML file at `path` (given with `flag`)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder: pass a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"{flag}: config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None
    except UnicodeDecodeError:
        raise ValueError(f"{flag} {path} is not UTF-8 text: pass a YAML file") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise ValueError(f"{flag} {path} is not valid YAML: {' '.join(str(err).split())}") from None
