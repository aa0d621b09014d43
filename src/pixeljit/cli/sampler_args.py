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


def sampler_from_args(args: argparse.Namespace) -> SamplerConfig:
    """The validated SamplerConfig of the flags (errors name the flag's field)."""
    return SamplerConfig(
        steps=args.steps, method=args.method, grid=args.grid, shift=args.shift, cfg=args.cfg,
        interval=tuple(args.interval), t_eps=args.t_eps,
    )  # fmt: skip
