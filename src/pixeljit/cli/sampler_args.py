"""The sampler's command-line flags, shared by `pixeljit sample` and `pixeljit eval`.

Defaults and validation come from `SamplerConfig` (the one place they live), so the two verbs
cannot drift apart from each other or from the Python API.
"""

from __future__ import annotations

import argparse

from pixeljit.diffusion.sampler import SamplerConfig
from pixeljit.diffusion.solvers import GRIDS, METHODS

DEFAULTS = SamplerConfig()


def add_sampler_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=DEFAULTS.steps, help="solver steps")
    p.add_argument("--method", default=DEFAULTS.method, choices=METHODS, help="ODE solver")
    p.add_argument("--grid", default=DEFAULTS.grid, choices=GRIDS, help="time grid")
    p.add_argument("--shift", type=float, default=DEFAULTS.shift, help="shift of --grid shifted")
    p.add_argument("--cfg", type=float, default=DEFAULTS.cfg, help="guidance scale (1 = none)")
    low, high = DEFAULTS.interval
    p.add_argument("--interval", type=float, nargs=2, default=DEFAULTS.interval,
                   metavar=("LO", "HI"),
                   help=f"CFG interval in t (default {low} {high}, the paper's)")  # fmt: skip
    p.add_argument("--t-eps", type=float, default=DEFAULTS.t_eps, help="clamp of 1 − t")


# SamplerConfig field → its flag
FLAGS = {"steps": "--steps", "method": "--method", "grid": "--grid", "shift": "--shift",
         "cfg": "--cfg", "interval": "--interval", "t_eps": "--t-eps"}  # fmt: skip


def sampler_from_args(args: argparse.Namespace) -> SamplerConfig:
    """The validated SamplerConfig of the flags. Each flag is checked alone first (with
    SamplerConfig's own rules), so an error names the flag the user typed."""
    values = {field: getattr(args, field) for field in FLAGS}
    values["interval"] = tuple(values["interval"])
    for field, flag in FLAGS.items():
        try:
            SamplerConfig(**{field: values[field]})
        except ValueError as err:
            raise ValueError(f"{flag}: {err}") from None
    return SamplerConfig(**values)
