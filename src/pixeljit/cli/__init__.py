"""The `pixeljit` command line: one sub-module per verb.

Each verb module exposes `add_parser(subparsers)` and `run(args) -> int`; `run` turns the
argparse Namespace into typed library calls, so nothing below the CLI sees a Namespace.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> module under pixeljit.cli (imported lazily so `pixeljit --help` stays fast)
VERBS = {
    "train": "train",
    "sample": "sample",
    "eval": "evaluate",
    "prepare": "prepare",
    "demo": "demo",
    "reproduce": "reproduce",
    "convert": "convert",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixeljit", description="JiT: pixel-space diffusion with x-prediction."
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for module in VERBS.values():
        try:
            mod = importlib.import_module(f"pixeljit.cli.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"pixeljit.cli.{module}":
                raise
            continue
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        if getattr(args, "debug", False):
            raise
        print(f"pixeljit {args.verb}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
