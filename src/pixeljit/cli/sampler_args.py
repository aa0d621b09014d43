"""The sampler's command-line flags (and --fast, --amp), shared by `pixeljit sample` and `eval`.

A flag left out takes the model's recommended setting (`TrainedModel.sampler`: a run's `sample`
section, as its previews used; a hub folder's `config.json`; the authors' README values for their
released checkpoints), else `SamplerConfig`'s default (the paper's Heun-50, no guidance). So
`pixeljit sample runs/demo` draws as the demo's own grid and score did, and an authors'
checkpoint samples with their guidance. Validation comes from `SamplerConfig` (the one place
the rules live), so the two verbs cannot drift apart from each other or from the Python API.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

import torch

from pixeljit.diffusion.execution import MATMUL_PRECISIONS
from pixeljit.diffusion.sampler import FAST_SAMPLER, NO_GUIDANCE, SamplerConfig
from pixeljit.diffusion.solvers import GRIDS, METHODS, VELOCITY_SOLVERS

DEFAULTS = SamplerConfig()
UNSET = "the model's recommended setting, else"  # how each flag's help names its default
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTO_AMP = "auto"  # bf16 autocast on CUDA, none (float32) on a CPU
ATTENTION_KERNELS = ("sdpa", "fp32")  # JiTConfig.attention
AUTO_MATMUL = "auto"  # sample: high (TF32) on CUDA under autocast; else the process's (highest)


def add_sampler_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument("--steps", type=int, default=None,
                   help=f"solver steps (default: {UNSET} {d.steps})")  # fmt: skip
    p.add_argument("--method", default=None, choices=METHODS,
                   help=f"ODE solver (default: {UNSET} {d.method})")  # fmt: skip
    p.add_argument("--grid", default=None, choices=GRIDS,
                   help=f"time grid (default: {UNSET} {d.grid})")  # fmt: skip
    p.add_argument("--shift", type=float, default=None,
                   help=f"shift of --grid shifted (default: {UNSET} {d.shift})")  # fmt: skip
    p.add_argument("--cfg", type=float, default=None,
                   help=f"guidance scale, 1 = none (default: {UNSET} {d.cfg})")  # fmt: skip
    low, high = d.interval
    p.add_argument("--interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help=f"CFG interval in t (default: {UNSET} {low} {high})")  # fmt: skip
    p.add_argument("--t-eps", type=float, default=None,
                   help=f"clamp of 1 − t (default: {UNSET} {d.t_eps})")  # fmt: skip
    p.add_argument("--fast", action="store_true",
                   help="few-step sampling: DPM-Solver++(3M), 10 steps (10 network "
                   "evaluations), uniform grid; guidance as the model recommends: "
                   "docs/sampling.md")  # fmt: skip
    p.add_argument("--attention", default=None, choices=ATTENTION_KERNELS,
                   help="the network's attention (default: the model's own, sdpa unless it was "
                   "trained otherwise): sdpa = PyTorch's fused kernel; fp32 = QKᵀ and softmax "
                   "in float32, the authors' numerics (differs from sdpa only under "
                   "--amp)")  # fmt: skip
    p.add_argument("--amp", default=AUTO_AMP, choices=(AUTO_AMP, *AMP_DTYPES),
                   help="the network's autocast precision; the sampling state stays float32 "
                   "(default auto: bf16 on CUDA, as the authors sample; none on a CPU; none = "
                   "float32 throughout; the float32 products: --matmul-precision)")  # fmt: skip
    p.add_argument("--matmul-precision", default=AUTO_MATMUL,
                   choices=(AUTO_MATMUL, *MATMUL_PRECISIONS),
                   help="the precision of float32 matrix products while generating (torch's "
                   "set_float32_matmul_precision, restored after): highest = full float32; "
                   "high = TF32 on CUDA; medium = bf16 inputs with float32 sums, on CUDA and on "
                   "CPUs with AMX-BF16 (a JiT-B/16 sampler step ≈ 1.4× faster on such a CPU; "
                   "other numerics). Default auto: `sample` high on CUDA under autocast (--amp "
                   "bf16 / fp16), highest otherwise")  # fmt: skip


def model_overrides(args: argparse.Namespace) -> dict:
    """The JiT config fields the command line sets on the loaded model (`load_trained`'s
    overrides): --attention, when given."""
    return {} if args.attention is None else {"attention": args.attention}


def amp_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """--amp's dtype on `device` (auto: bf16 on CUDA, none on a CPU)."""
    from pixeljit.diffusion.execution import default_amp_dtype

    return default_amp_dtype(device) if name == AUTO_AMP else AMP_DTYPES[name]


# SamplerConfig field → its flag
FLAGS = {"steps": "--steps", "method": "--method", "grid": "--grid", "shift": "--shift",
         "cfg": "--cfg", "interval": "--interval", "t_eps": "--t-eps"}  # fmt: skip


def given_sampler_flags(args: argparse.Namespace) -> dict:
    """The sampler fields the command line sets (--fast's included), each checked alone with
    SamplerConfig's own rules so that an error names the flag the user typed. --fast given with
    a different --method / --steps / --grid is refused (which one wins would be a guess)."""
    given = {field: getattr(args, field) for field in FLAGS if getattr(args, field) is not None}
    if "interval" in given:
        given["interval"] = tuple(given["interval"])
    if getattr(args, "fast", False):
        for field, value in FAST_SAMPLER.items():
            if given.get(field, value) != value:
                raise ValueError(f"--fast sets {FLAGS[field]} {value}, but {FLAGS[field]} "
                                 f"{given[field]} was given: drop one of them")  # fmt: skip
            given[field] = value
    for field, value in given.items():
        try:
            SamplerConfig(**{field: value})
        except ValueError as err:
            raise ValueError(f"{FLAGS[field]}: {err}") from None
    return given


def sampler_from_args(
    args: argparse.Namespace, recommended: SamplerConfig | None = None
) -> SamplerConfig:
    """The flags given over the model's `recommended` settings (else SamplerConfig's defaults)."""
    given = given_sampler_flags(args)
    base = recommended if recommended is not None else DEFAULTS
    try:
        sampler = dataclasses.replace(base, **given)
    except ValueError as err:
        raise ValueError(f"the sampler flags with the model's settings: {err}") from None
    if "shift" in given and sampler.grid != "shifted":
        raise ValueError(f"--shift has no effect on the {sampler.grid} grid (it shapes --grid "
                         "shifted only): add --grid shifted or drop --shift")  # fmt: skip
    return sampler


def check_flags_take_effect(
    args: argparse.Namespace,
    source: str,
    *,
    conditional: bool,
    prediction: str,
    cfgs: Sequence[float],
    methods: Sequence[str],
    sampler: SamplerConfig | None = None,
) -> None:
    """Refuse, by name, a guidance or clamp flag that would do nothing for this model: --cfg
    (or a --sweep-cfg scale) above 1 on an unconditional model, --interval when every scale in
    `cfgs` is 1 (no guidance), a --cfg / --interval / --sweep-cfg when no evaluation of
    `sampler` (the resolved settings) falls inside its interval (a scale the model recommends
    is only said not to apply: `describe_sampler`), and --t-eps unless an x-prediction is
    turned into a velocity by one of `methods` (Euler or Heun). `source` names the model in the
    message."""
    cfg, interval, t_eps = (getattr(args, name, None) for name in ("cfg", "interval", "t_eps"))
    if not conditional and cfg is not None and cfg != NO_GUIDANCE:
        raise ValueError(f"--cfg {cfg:g}: {source} is an unconditional model, which cannot be "
                         "guided: drop --cfg")  # fmt: skip
    if not conditional and getattr(args, "sweep_cfg", None) and set(cfgs) - {NO_GUIDANCE}:
        raise ValueError(f"--sweep-cfg: {source} is an unconditional model, which cannot be "
                         "guided: drop --sweep-cfg")  # fmt: skip
    if interval is not None and all(w == NO_GUIDANCE for w in cfgs):
        fix = "add --cfg W above 1, or drop --interval" if conditional else "drop --interval"
        why = "" if conditional else f" ({source} is an unconditional model)"
        raise ValueError(f"--interval has no effect without guidance (cfg 1){why}: it sets where "
                         f"guidance applies: {fix}")  # fmt: skip
    guidance_given = cfg is not None or interval is not None or getattr(args, "sweep_cfg", None)
    if sampler is not None and conditional and guidance_given and set(cfgs) - {NO_GUIDANCE}:
        sweep = bool(getattr(args, "sweep_cfg", None))
        check_guidance_applies(sampler, [w for w in cfgs if w != NO_GUIDANCE], sweep)
    if t_eps is None:
        return
    if prediction != "x":
        raise ValueError(f"--t-eps has no effect on {source}, a {prediction}-prediction "
                         "model: it clamps 1 − t where an x-prediction becomes a velocity; "
                         "drop --t-eps")  # fmt: skip
    if not set(methods) & set(VELOCITY_SOLVERS):
        shown = " / ".join(dict.fromkeys(methods))
        raise ValueError(f"--t-eps has no effect with {shown}: DPM-Solver++ steps on x̂, where the "
                         "clamp of 1 − t cancels; it acts with euler / heun only: drop --t-eps "
                         "or choose one of those")  # fmt: skip


def check_guidance_applies(
    sampler: SamplerConfig, scales: Sequence[float], sweep: bool = False
) -> None:
    """Refuse guidance `scales` (≠ 1) that `sampler` would never apply: none of its evaluation
    times lies inside the CFG interval (open at both ends), so the images are unguided while the
    summary would say otherwise."""
    if sampler.guided_evaluations():
        return
    low, high = sampler.interval
    scale = " / ".join(f"{w:g}" for w in scales)
    grid = sampler.grid if sampler.grid != "shifted" else f"shifted {sampler.shift:g}"
    steps = f"{sampler.steps} step" + ("s" if sampler.steps != 1 else "")
    fix = "take more --steps or widen --interval"  # (a sweep takes no --cfg)
    if not sweep:
        fix = "take more --steps, widen --interval, or pass --cfg 1 to sample without guidance"
    raise ValueError(
        f"guidance (cfg {scale}) would never apply: {sampler.method} with {steps} on the "
        f"{grid} grid evaluates the network at t = {sampler.times_text()}, none inside "
        f"the guidance interval ({low:g}, {high:g}) (open at both ends): {fix}"
    )


def matmul_setting(name: str, tf32: bool = False) -> str | None:
    """--matmul-precision's setting while generating: the value given; auto: 'high' where
    `tf32` (`sample` on CUDA under autocast: TF32 for the float32 products autocast leaves, as
    before the flag), else None (the process's own, torch's default 'highest')."""
    if name != AUTO_MATMUL:
        return name
    return "high" if tf32 else None


def describe_generation(
    seed: int, amp: torch.dtype | None, noise_scale: float | None = None, trained: float = 1.0,
    matmul: str = "highest",
) -> str:  # fmt: skip
    """What else decides the images, for the summary line: the seed, the network's precision
    (an autocast dtype, or float32, and float32 products below `matmul` 'highest') and a
    --noise-scale given over the model's `trained` one."""
    parts = [f"seed {seed}", f"{str(amp).removeprefix('torch.')} autocast" if amp else "float32"]
    if matmul != "highest":
        parts.append(f"{'float32 ' if amp else ''}matmuls at {matmul} precision")
    if noise_scale is not None:
        parts.append(f"noise scale {noise_scale:g} as given (trained with {trained:g})")
    return ", ".join(parts)


def describe_sampler(
    sampler: SamplerConfig, args: argparse.Namespace, recommended: SamplerConfig | None
) -> str:
    """One line: the settings used, and where the ones not given on the command line came from."""
    low, high = sampler.interval
    grid = sampler.grid if sampler.grid != "shifted" else f"shifted {sampler.shift:g}"
    steps = f"{sampler.steps} step" + ("s" if sampler.steps != 1 else "")
    text = f"{sampler.method}, {steps}, {grid} grid, cfg {sampler.cfg:g}"
    if sampler.cfg != 1 and not sampler.guided_evaluations():
        text += f" never applied (no evaluation inside ({low:g}, {high:g}))"
    elif sampler.cfg != 1:
        text += f" on ({low:g}, {high:g})"
    if sampler.t_eps != DEFAULTS.t_eps:
        text += f", t_eps {sampler.t_eps:g}"
    fields = given_sampler_flags(args)
    if len(fields) == len(FLAGS):
        return f"{text}: as given"
    fast = getattr(args, "fast", False)
    given = [FLAGS[f] for f in fields if not (fast and f in FAST_SAMPLER)]
    given += ["--fast"] if fast else []
    if recommended is not None:
        source = "the model's recommended settings"
    else:
        source = "SamplerConfig's defaults (the model recommends none)"
    return f"{text}: {source}" + (f", with {' '.join(given)} as given" if given else "")
