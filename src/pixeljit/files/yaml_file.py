"""Reading a user's YAML file: safe tags only, no repeated keys, no aliases, bounded size, and
one-line errors naming the file (a folder, unreadable or non-UTF-8 bytes, malformed YAML).

Aliases are refused because nine nested ones turn a 400-byte file into a structure of 9**9
strings ("billion laughs"): cheap to parse, but any walk over it (or its repr in an error
message) costs gigabytes. Config files never need them.

Numbers are read as YAML 1.2 writes them, in decimal: `0042` is 42 and `1e-3` is 0.001, and
YAML 1.1's other forms, which PyYAML reads without a word (`010` as octal 8, `1:30` as base-60
90, `0b101`, `0x1f`), are text, so a numeric field refuses them by name; dates are text too, and
merge keys (`<<:`) are refused as aliases are."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

MAX_YAML_BYTES = 1 << 20  # a config is a few hundred bytes; 1 MiB is far beyond any
_TAG = "tag:yaml.org,2002:"
DECIMAL_INT = re.compile(r"^[-+]?[0-9]+$")
DECIMAL_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
SPECIAL_FLOAT = re.compile(r"^(?:[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_DROPPED = {_TAG + name for name in ("int", "float", "merge", "value", "timestamp")}


def _decimal_resolvers() -> dict:
    """SafeLoader's implicit resolvers with YAML 1.2's decimal numbers in place of YAML 1.1's
    ints and floats (and no merge key, `=` value or timestamp)."""
    table = {
        first: [(tag, regexp) for tag, regexp in entries if tag not in _DROPPED]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for first in "-+0123456789":
        table.setdefault(first, []).append((_TAG + "int", DECIMAL_INT))
    for first in "-+0123456789.":
        table.setdefault(first, []).append((_TAG + "float", DECIMAL_FLOAT))
    for first in "-+.":
        table.setdefault(first, []).append((_TAG + "float", SPECIAL_FLOAT))
    return table


def _construct_int(loader, node) -> int:
    text = loader.construct_scalar(node)
    try:
        if DECIMAL_INT.match(text):
            return int(text, 10)  # leading zeros are decimal, never octal
    except ValueError:  # more digits than Python converts
        pass
    raise yaml.constructor.ConstructorError(
        None, None, f"{text[:40]!r} is not a decimal integer", node.start_mark
    )


def _construct_float(loader, node) -> float:
    text = loader.construct_scalar(node)
    if SPECIAL_FLOAT.match(text):
        return float(text.replace(".", "").lower())  # '-.inf' → -inf, '.nan' → nan
    if DECIMAL_FLOAT.match(text) or DECIMAL_INT.match(text):
        return float(text)
    raise yaml.constructor.ConstructorError(
        None, None, f"{text[:40]!r} is not a decimal number", node.start_mark
    )


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last silently)
    and a merge key `<<` (which only an alias makes useful)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key == "<<" and key_node.style is None:
                raise yaml.constructor.ConstructorError(
                    None, None, "merge keys (<<:) are not allowed in a config (write the fields "
                    "out)", key_node.start_mark,
                )  # fmt: skip
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


class ConfigLoader(UniqueKeyLoader):
    """UniqueKeyLoader that also refuses aliases (`*name`), so a value is never shared, and
    reads numbers in decimal (YAML 1.2)."""

    yaml_implicit_resolvers = _decimal_resolvers()

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} is not allowed in a config (write the value "
                "out)", event.start_mark,
            )  # fmt: skip
        return super().compose_node(parent, index)


ConfigLoader.add_constructor(_TAG + "int", _construct_int)
ConfigLoader.add_constructor(_TAG + "float", _construct_float)


class ConfigDumper(yaml.SafeDumper):
    """SafeDumper that quotes a string any YAML reader would take for something else: one that
    ConfigLoader reads as a number (`1e3`) as well as one YAML 1.1 does (`010`)."""

    yaml_implicit_resolvers = {
        first: [*yaml.SafeDumper.yaml_implicit_resolvers.get(first, []), *entries]
        for first, entries in _decimal_resolvers().items()
    }


def dump_yaml(data) -> str:
    """`data` as YAML text that ConfigLoader (and YAML 1.1 readers) read back unchanged."""
    return yaml.dump(data, Dumper=ConfigDumper, sort_keys=False)


def _problem(err: yaml.YAMLError, text: str) -> str:
    """A YAML error in one line, without PyYAML's `in "<unicode string>"` and code excerpt."""
    problem = getattr(err, "problem", None)
    if not problem:
        return " ".join(str(err).replace('in "<unicode string>", ', "").split())
    parts = [problem]
    context = getattr(err, "context", None)
    if context:
        parts.append(f"({context})")
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is not None:
        lines = f"line {mark.line + 1}, " if "\n" in text.strip() else ""
        parts.append(f"at {lines}column {mark.column + 1}")
    return " ".join(" ".join(parts).split())


def _check_whole(text: str, node, where: str) -> None:
    """A one-line value (`--set key=value`) read whole: YAML drops a comment (' #…') and reads
    a value that is one, or starts one, as nothing."""
    if node is None:
        kept, rest = "", text.strip()
    else:
        start, end = node.start_mark.index, node.end_mark.index
        kept, rest = text[start:end], (text[:start] + " " + text[end:]).strip()
    if not rest:
        return
    what = "a comment" if rest.startswith("#") else "outside the value"
    raise ValueError(
        f"{where}: YAML reads only {kept!r} of the value ({rest[:40]!r} is {what}): quote the "
        "whole value to keep it (key='…'), or drop the rest"
    )


def parse_yaml(text: str, where: str, whole: bool = False):
    """The parsed YAML `text` (from `where`, named in errors): safe tags, no repeated keys, no
    aliases, decimal numbers, nesting bounded by Python's recursion limit. `whole`: `text` is
    one value, refused where YAML would read only part of it (a ' #' comment)."""
    loader = ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if whole:
            _check_whole(text, node, where)
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ValueError(f"{where} is not valid YAML: {_problem(err, text)}") from None
    except RecursionError:
        raise ValueError(f"{where} is nested too deeply to be a config") from None
    finally:
        loader.dispose()


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
