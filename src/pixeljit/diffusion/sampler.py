"""`sample()`: a network end to end — noise (per-sample seeds), labels, the CFG interval
(`guidance`), a time grid and a solver (`solvers`). `SamplerConfig` is the one place the sampling
defaults live: the API, training previews, evaluation, and `pixeljit sample` / `eval` for a model
that recommends no settings of its own all read it.

On a GPU: the noise is drawn on the device (one generator per sample, so still independent of
the batch split), the network sees two batch shapes at most (N, and 2N inside the CFG interval),
so `compile_mode` (e.g. "reduce-overhead": CUDA graphs) builds at most two graphs, and the
sampling state z stays float32 whatever `amp_dtype` the network runs in.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pixeljit.devices import as_device
from pixeljit.diffusion.execution import (
    NetDenoiser,
    check_amp_dtype,
    check_compile_mode,
    compiled_network,
)
from pixeljit.diffusion.guidance import GuidedField, check_interval, guidance_mask
from pixeljit.diffusion.noise import noise_from_seeds, sample_seeds
from pixeljit.diffusion.objective import (
    DEFAULT_T_MIN,
    PRECONDITIONERS,
    PREDICTIONS,
    SIGMA_DATA,
    default_noise_scale,
    finite_number,
)
from pixeljit.diffusion.sample_inputs import (
    check_network_on,
    check_not_meta,
    check_seed,
    check_sources,
    labels_tensor,
    network_config,
    same_device,
    weights_device,
)
from pixeljit.diffusion.solvers import (
    DEFAULT_SHIFT,
    GRIDS,
    METHODS,
    evaluation_times,
    evaluations,
    solve,
    time_grid,
)
from pixeljit.values import is_integer

Tensor = torch.Tensor

DEFAULT_STEPS = 50  # the paper's Heun-50
SAMPLE_T_EPS = 0.05  # the authors' clamp of 1−t at sampling (issue #59 suggests 1e-3)
PAPER_INTERVAL = (0.1, 1.0)  # the CFG interval of the paper's main results
MAX_STEPS = 10_000  # solver steps (the paper uses 50; 10k Heun steps is already 20k evaluations)
SHIFT_RANGE = (1e-3, 1e3)  # a shifted grid outside this collapses to repeated times in float32
MAX_CFG = 100.0  # guidance scales beyond this overflow the velocity (the paper uses 1-3)
NO_GUIDANCE = 1.0  # cfg = 1 gives the conditional velocity (and skips the unconditional pass)
# `pixeljit sample --fast`: DPM-Solver++(3M), 10 steps = 10 NFE on the uniform grid (measured in
# docs/sampling.md: a lower FD than Heun-50's 99 NFE on two demo models; robust on Gaussian data)
FAST_SAMPLER = {"method": "dpm++3m", "steps": 10, "grid": "uniform"}


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample: solver, time grid, guidance and clamps.

    The one place the sampling defaults live: `sample()`'s keyword defaults, training previews
    (`pixeljit.training.config.SampleConfig` extends it), evaluation, and `pixeljit sample` /
    `eval` where the model recommends nothing (`cli.sampler_args`) all read them from here.
    Every field is validated on construction.
    """

    steps: int = DEFAULT_STEPS
    method: str = "heun"
    grid: str = "uniform"
    shift: float = DEFAULT_SHIFT  # only for grid='shifted'
    cfg: float = NO_GUIDANCE
    interval: tuple[float, float] = PAPER_INTERVAL
    t_eps: float = SAMPLE_T_EPS
    t_min: float = DEFAULT_T_MIN

    def __post_init__(self) -> None:
        if not is_integer(self.steps):
            raise ValueError(f"steps must be an integer ≥ 1, got {self.steps!r}")
        object.__setattr__(self, "steps", int(self.steps))  # a NumPy integer stored as an int
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must lie in [1, {MAX_STEPS}], got {self.steps}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS}, got {self.grid!r}")
        for name in ("shift", "cfg", "t_eps", "t_min"):  # stored as floats once checked
            object.__setattr__(self, name, finite_number(name, getattr(self, name)))
        low, high = SHIFT_RANGE
        if not low <= self.shift <= high:
            raise ValueError(f"shift must lie in [{low}, {high}], got {self.shift}")
        if not 0 <= self.cfg <= MAX_CFG:
            raise ValueError(f"cfg must lie in [0, {MAX_CFG}] (1 = no guidance), got {self.cfg}")
        if not 0.0 < self.t_eps <= 1.0:
            raise ValueError(f"t_eps must lie in (0, 1], got {self.t_eps}")
        if not 0.0 < self.t_min <= 1.0:
            raise ValueError(f"t_min must lie in (0, 1], got {self.t_min}")
        object.__setattr__(self, "interval", check_interval(self.interval))

    def kwargs(self) -> dict:
        """The fields as keyword arguments of `sample()`; off the shifted grid the shift, which
        has no effect there, is the default (a recommended shifted grid overridden by a
        uniform one leaves no shift for `sample()` to refuse)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(SamplerConfig)}
        return fields | ({} if self.grid == "shifted" else {"shift": DEFAULT_SHIFT})

    def as_json(self) -> dict:
        """The fields as JSON holds them (the interval a list); `SamplerConfig(**that)` reads
        them back (the interval check turns the list into a tuple)."""
        return {**self.kwargs(), "interval": list(self.interval)}

    def nfe(self) -> int:
        """Network evaluations per image and guidance branch."""
        return evaluations(self.method, self.steps)

    def evaluation_times(self) -> Tensor:
        """The times (float32, as the solver's grid) at which the network is evaluated."""
        grid = time_grid(self.steps, self.grid, self.shift)
        return torch.tensor(evaluation_times(self.method, grid), dtype=torch.float32)

    def times_text(self, ends: int = 3) -> str:
        """The evaluation times as a message shows them: '0, 0.1, 0.2, …, 0.8, 0.9'."""
        times = [f"{t:.4g}" for t in self.evaluation_times().tolist()]
        if len(times) > 2 * ends:
            times = [*times[:ends], "…", *times[-ends:]]
        return ", ".join(times)

    def guided_evaluations(self) -> int:
        """How many evaluations fall inside the CFG interval, where a scale ≠ 1 guides (0: the
        scale does nothing with these steps)."""
        return int(guidance_mask(self.evaluation_times(), self.interval).sum())


class NonFiniteSamples(ValueError):
    """Samples holding NaN / inf (`check_finite`)."""


def check_finite(images: Tensor, start: int = 0) -> None:
    """Refuse NaN / inf samples (written out they would be black images, silently)."""
    bad = (~torch.isfinite(images.flatten(1))).any(dim=1)
    if bad.any():
        first = start + int(bad.nonzero()[0])
        raise NonFiniteSamples(
            f"{int(bad.sum())} of the {len(images)} images from sample {start} on are not finite "
            f"(NaN/inf, first: sample {first}): the checkpoint diverged or cfg / noise_scale "
            "(--cfg / --noise-scale) is too large; "
            "nothing of this batch was written"
        )


# ----------------------------------------------------------------------------------- sample


def _device_of(net, labels, noise, device) -> torch.device:
    """The sampling device: the noise's, else `device`, else the network's weights', else the
    labels' or the CPU; one that is not where the network's weights are is refused by name."""
    asked = None if device is None else as_device(device)
    weights = weights_device(net)
    if noise is not None:  # the noise's device decides; a `device` naming another is refused
        got = noise.device
        if asked is not None and not same_device(asked, got):
            raise ValueError(f"device={str(asked)!r} but noise is on {str(got)!r}: move the noise "
                             f"(noise.to({str(asked)!r})) or drop device")  # fmt: skip
        check_network_on(weights, got, f"noise is on {str(got)!r}",
                         f"noise.to({str(weights)!r})")  # fmt: skip
        return got
    if asked is not None:
        check_network_on(weights, asked, f"device={str(asked)!r}",
                         f"device={str(weights)!r} (or drop device)")  # fmt: skip
        return asked
    if weights is not None:
        return weights
    if isinstance(labels, Tensor):
        return labels.device
    return torch.device("cpu")


def check_sampling_args(
    steps: int,
    method: str,
    cfg: float,
    interval: tuple[float, float],
    t_eps: float,
    noise_scale: float | None,
    prediction: str = "x",
    grid: str = "uniform",
    shift: float = DEFAULT_SHIFT,
    preconditioner: str = "none",
    t_min: float = DEFAULT_T_MIN,
    sigma_data: float = SIGMA_DATA,
) -> tuple[float, float]:
    """Validate sampling settings (before any model is loaded); returns the interval as floats."""
    config = SamplerConfig(steps, method, grid, shift, cfg, interval, t_eps, t_min)
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(f"preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}")
    if preconditioner != "none" and prediction != "x":
        raise ValueError("a preconditioner builds an x-prediction: use prediction='x'")
    if noise_scale is not None and not finite_number("noise_scale", noise_scale) > 0:
        raise ValueError(f"noise_scale must be > 0 (or None for image_size/256), got {noise_scale}")
    if not finite_number("sigma_data", sigma_data) > 0:
        raise ValueError(f"sigma_data must be > 0 (the value the model was trained with), got "
                         f"{sigma_data}")  # fmt: skip
    return config.interval


@torch.no_grad()
def sample(
    net,
    labels: Sequence[int] | Tensor | None = None,
    noise: Tensor | None = None,
    steps: int = SamplerConfig.steps,
    method: str = SamplerConfig.method,
    cfg: float = SamplerConfig.cfg,
    interval: tuple[float, float] = SamplerConfig.interval,
    t_eps: float = SamplerConfig.t_eps,
    noise_scale: float | None = None,
    generator: torch.Generator | None = None,
    prediction: str = "x",
    grid: str = SamplerConfig.grid,
    *,
    shift: float = SamplerConfig.shift,
    num: int | None = None,
    seed: int | None = None,
    first_index: int = 0,
    t_min: float = SamplerConfig.t_min,
    preconditioner: str = "none",
    sigma_data: float = SIGMA_DATA,
    amp_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    compile_mode: str | None = None,
) -> Tensor:
    """Generate images (N, C, H, W) (float, nominally [−1, 1], not clipped) with a JiT network.

    net(z, t, y) with `net.config` (num_classes, in_channels, image_size); labels (N,) in
    [0, num_classes), or None with `num=N` for unconditional models. `noise` is the state at
    t = 0 (already multiplied by noise_scale); otherwise it is drawn as noise_scale·N(0, I):
    with `seed`, sample k of the call uses per-sample seed (seed, first_index + k), so the same
    seed gives the same images whatever the batch split; else from `generator` (or the global
    RNG) in one draw, which depends on the batch size: give one of noise, seed and generator.
    `noise_scale` must match training (default None: the paper's image_size/256, as
    ObjectiveConfig's default; a loaded model's `model.sample` passes its own), and so must
    `preconditioner` and its `sigma_data` (used by 'edm'; default ObjectiveConfig's 0.5).
    Guidance: `cfg` w on rows with t in the open `interval` (default (0.1, 1.0), the paper's).
    `method` ∈ {euler, heun, dpm++2m, dpm++3m}; `grid` ∈ {uniform, shifted, edm, logsnr};
    defaults come from `SamplerConfig`.
    Every module of the network runs in eval mode (each one's own mode restored afterwards);
    `amp_dtype` (e.g. torch.bfloat16) runs it under autocast (the state z stays float32).
    `compile_mode` (one of COMPILE_MODES; None = eager) runs it through
    `torch.compile(dynamic=False)`, kept for later calls with the same net; "reduce-overhead"
    replays CUDA graphs (two at most: N and 2N rows). Seeded noise is drawn on the sampling
    device (see `noise_from_seeds`): the noise's, else `device`, else the network's; one the
    network's weights are not on is refused. NumPy integers count as integers. A NaN / inf image
    raises ValueError (`check_finite`) rather than coming back.
    """
    config = network_config(net)
    interval = check_sampling_args(
        steps, method, cfg, interval, t_eps, noise_scale, prediction, grid, shift, preconditioner,
        t_min, sigma_data,
    )  # fmt: skip
    seed, first_index = check_seed(seed, first_index)
    check_compile_mode(compile_mode)
    check_amp_dtype(amp_dtype)
    check_not_meta(net, labels, noise)
    check_sources(net, noise, seed, generator, num, grid, shift)
    steps, num = int(steps), (None if num is None else int(num))  # NumPy integers as ints
    if noise_scale is None:
        noise_scale = default_noise_scale(config.image_size)
    classes = int(config.num_classes)
    if cfg != 1.0 and classes == 0:
        raise ValueError("an unconditional model cannot be guided: use cfg=1.0")
    dev = _device_of(net, labels, noise, device)
    y = labels_tensor(labels, classes, dev)
    z = _start_state(config, y, noise, num, seed, first_index, generator, noise_scale, dev)

    runner = net if compile_mode is None else compiled_network(net, compile_mode)
    compiled = compile_mode is not None
    denoiser = NetDenoiser(runner, preconditioner, noise_scale, amp_dtype, compiled,
                           sigma_data=float(sigma_data))  # fmt: skip
    field = GuidedField(denoiser, y, prediction=prediction, cfg=cfg, interval=interval,
                        null_label=classes if classes > 0 else None, t_eps=t_eps,
                        t_min=t_min)  # fmt: skip
    with _eval_mode(net):
        images = solve(field, z, time_grid(steps, grid, shift), method)
    check_finite(images, first_index)  # once per call, after the solver: one host sync
    return images


@contextlib.contextmanager
def _eval_mode(net):
    """Every module of `net` in eval mode inside the block (no dropout anywhere); each module's
    own training flag put back after (`net.train()` would put all of them in training mode)."""
    modules = list(net.modules()) if isinstance(net, nn.Module) else []
    flags = [module.training for module in modules]
    if modules:
        net.eval()
    try:
        yield
    finally:
        for module, flag in zip(modules, flags, strict=True):
            module.training = flag


def _start_state(config, y, noise, num, seed, first_index, generator, noise_scale, dev) -> Tensor:
    """The state at t = 0, (N, C, H, W) on `dev`: `noise` as given, or noise_scale·N(0, I) from
    per-sample seeds or from `generator`; N from the labels `y`, `num` or `noise`."""
    if y is not None and num is not None and num != y.numel():
        raise ValueError(f"num={num} disagrees with {y.numel()} labels; pass one of them")
    n = y.numel() if y is not None else num
    if noise is not None and n is None:
        n = noise.shape[0]
    if n is None or n < 1:
        raise ValueError("pass labels, or num=N (≥ 1) for an unconditional model")
    shape = (config.in_channels, config.image_size, config.image_size)
    if noise is not None:
        if tuple(noise.shape) != (n, *shape):
            raise ValueError(f"noise must have shape {(n, *shape)}, got {tuple(noise.shape)}")
        return noise
    if seed is not None:
        return noise_scale * noise_from_seeds(sample_seeds(seed, n, first_index), shape, dev)
    gen_device = generator.device if generator is not None else dev
    z = noise_scale * torch.randn(
        (n, *shape), generator=generator, device=gen_device, dtype=torch.float32
    )  # float32 whatever torch's default dtype
    return z.to(dev)
