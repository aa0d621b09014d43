"""`pixeljit demo`: placeholder until the data + demo issue lands."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train a small JiT on Fashion-MNIST on this machine")
    p.set_defaults(run=run)


def run(args) -> int:
    print("pixeljit demo: not available yet (lands with the data + demo issue).")
    return 1
