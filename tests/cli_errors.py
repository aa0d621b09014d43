"""Helpers for tests of the command line's errors: run a verb that must fail with one line, and
check that every --flag a message names exists on the verb it speaks to."""

from __future__ import annotations

import argparse
import re

from pixeljit.cli import build_parser, main


def cli_error(capsys, argv) -> str:
    """The one-line error (exit 2, no traceback) that `pixeljit ARGV` prints."""
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _parsers() -> dict[str, argparse.ArgumentParser]:
    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return {verb: p for verb, p in sub.choices.items()}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    out = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                out |= _flags(child)
    return out


COMMAND = re.compile(r"`pixeljit (\w+)([^`]*)`")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
PYTHON_NOTE = re.compile(r"\(Python: [^)]*\)")  # a Python alternative, said as such
KWARG = re.compile(r"(?<![\w.-])[a-z_]+=(?:True|False|None)\b")  # a Python argument, no flag


def check_flags(verb: str, message: str) -> set[str]:
    """Assert that every --flag `message` names belongs to `verb` (or to the verb of a
    `pixeljit ...` command it quotes) and that it names no Python keyword; the flags named."""
    parsers = _parsers()
    for other, args in COMMAND.findall(message):  # a quoted command names its own verb's flags
        assert set(FLAG.findall(args)) <= _flags(parsers[other]), (other, message)
    rest = COMMAND.sub("", message)
    unknown = set(FLAG.findall(rest)) - _flags(parsers[verb]) - {"--debug"}
    assert not unknown, f"`pixeljit {verb}` has no {sorted(unknown)}; message: {message}"
    kwargs = KWARG.findall(PYTHON_NOTE.sub("", rest))
    assert not kwargs, f"`pixeljit {verb}` users cannot pass {kwargs}; message: {message}"
    return set(FLAG.findall(message))
