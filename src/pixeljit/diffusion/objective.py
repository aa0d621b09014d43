"""The flow-matching objective of JiT: the linear path, t-sampling, the prediction ↔ loss-space
conversions of Tab. 1, the pre-conditioners of Tab. 10, label dropout and the training loss.

Conventions (paper §5a): z_t = t·x + (1−t)·ε with ε ~ N(0, s²I), t = 0 noise, t = 1 data, and
v = x − ε (so dz_t/dt = v along the path). The network is seen only as a callable
`denoiser(z, t, y) -> output` whose output means x, ε or v (`prediction`).

Clamps (why: Tab. 1's conversions divide by 1−t or by t, both of which vanish at an end point):
- every division by (1−t) uses max(1−t, t_eps); the authors use t_eps = 0.05 in training and in
  sampling (Alg. 1). Sampling may use its own, smaller value (upstream issue #59).
- every division by t (only ε-prediction needs one: x = (z − (1−t)ε)/t, v = (z − ε)/t) uses
  max(t, t_min) with t_min = 1e-3 by default. At t = 0 an ε-prediction carries no information
  about x (z_0 = ε), so no choice is exact there; the small clamp keeps the division finite
  while leaving every t ≥ 1e-3 untouched (logit-normal(−0.8, 0.8) draws t < 1e-3 with
  probability ~1e-8).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]

PREDICTIONS = ("x", "eps", "v")
LOSS_SPACES = ("x", "eps", "v")
T_SAMPLERS = ("logit_normal", "uniform")
PRECONDITIONERS = ("none", "edm", "linear")

TRAIN_T_EPS = 0.05  # the authors' clamp of 1−t (training and sampling)
DEFAULT_T_MIN = 1e-3  # our clamp of t (divisions by t, ε-prediction only)
P_MEAN = -0.8  # logit-normal t-sampler (Tab. 3 / §5b)
P_STD = 0.8
LABEL_DROP = 0.1  # class-label dropout for classifier-free guidance
SIGMA_DATA = 0.5  # EDM pre-conditioner (Tab. 10)
BASE_RESOLUTION = 256  # noise scale s = image_size / 256 (§5b)


def default_noise_scale(image_size: int) -> float:
    """The paper's noise scale s = image_size / 256 (1 at 256 px, 2 at 512, 4 at 1024)."""
    if image_size < 1:
        raise ValueError(f"image_size must be ≥ 1, got {image_size}")
    return image_size / BASE_RESOLUTION


def _rows(t: Tensor, like: Tensor) -> Tensor:
    """t (N,) -> (N, 1, …, 1) broadcastable against `like`, in like's dtype and device."""
    return t.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def finite_number(name: str, value) -> float:
    """`value` as a float if it is a finite number: text ('2', as a hand-edited JSON file may
    hold) and booleans are refused by name, not compared later with a TypeError."""
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


# ------------------------------------------------------------------------------------- path


def interpolate(x: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """z_t = t·x + (1−t)·ε. x, noise (N, C, H, W), t (N,); noise already carries its scale s."""
    tt = _rows(t, x)
    return tt * x + (1 - tt) * noise


# ----------------------------------------------------------------------------- t and labels


def sample_t(
    n: int,
    kind: str = "logit_normal",
    p_mean: float = P_MEAN,
    p_std: float = P_STD,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Training times (n,): logit-normal t = sigmoid(N(p_mean, p_std²)), or uniform on [0, 1).

    Draws on the generator's device (CPU by default) and moves the result to `device`.
    """
    _check_choice("t_sampler", kind, T_SAMPLERS)
    if p_std < 0:
        raise ValueError(f"p_std must be ≥ 0, got {p_std}")
    draw_device = generator.device if generator is not None else device
    if kind == "uniform":
        t = torch.rand(n, generator=generator, device=draw_device, dtype=dtype)
    else:
        s = torch.randn(n, generator=generator, device=draw_device, dtype=dtype)
        t = torch.sigmoid(s * p_std + p_mean)
    return t.to(device) if device is not None else t


def drop_labels(
    y: Tensor | None,
    num_classes: int,
    p: float = LABEL_DROP,
    generator: torch.Generator | None = None,
) -> Tensor | None:
    """Replace each label by the null label `num_classes` with probability p (CFG training).

    A no-op for unconditional models (num_classes == 0 or y None) and for p == 0.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label drop probability must lie in [0, 1], got {p}")
    if y is None or num_classes == 0 or p == 0.0:
        return y
    draw_device = generator.device if generator is not None else y.device
    drop = torch.rand(y.shape[0], generator=generator, device=draw_device).to(y.device) < p
    return torch.where(drop, torch.full_like(y, num_classes), y)


# ------------------------------------------------------------------- Tab. 1 conversions


def convert(value: Tensor, src: str, dst: str, z: Tensor, t: Tensor,
            t_eps: float = TRAIN_T_EPS, t_min: float = DEFAULT_T_MIN) -> Tensor:  # fmt: skip
    """Convert a quantity of kind `src` ∈ {x, eps, v} at (z, t) into kind `dst` (Tab. 1).

    value, z (N, C, H, W); t (N,). Divisions by 1−t use max(1−t, t_eps), divisions by t use
    max(t, t_min) (see the module docstring). Without clamping, each map is exact on the path.
    """
    _check_choice("source kind", src, PREDICTIONS)
    _check_choice("target kind", dst, PREDICTIONS)
    if src == dst:
        return value
    tt = _rows(t, z)  # (N, 1, 1, 1)
    if src == "x":
        one_minus = (1 - tt).clamp_min(t_eps)
        if dst == "eps":
            return (z - tt * value) / one_minus
        return (value - z) / one_minus  # v
    if src == "eps":
        t_safe = tt.clamp_min(t_min)
        if dst == "x":
            return (z - (1 - tt) * value) / t_safe
        return (z - value) / t_safe  # v
    # src == "v"
    if dst == "x":
        return (1 - tt) * value + z
    return z - tt * value  # eps


def to_velocity(value: Tensor, kind: str, z: Tensor, t: Tensor,
                t_eps: float = TRAIN_T_EPS, t_min: float = DEFAULT_T_MIN) -> Tensor:  # fmt: skip
    """The velocity v̂ of a network output of kind `kind` (the sampler's ODE right-hand side).

    For x-prediction this is the authors' v = (x̂ − z) / max(1−t, t_eps).
    """
    return convert(value, kind, "v", z, t, t_eps, t_min)


# -------------------------------------------------------------- Tab. 10 pre-conditioners


def preconditioner_coefficients(
    kind: str, t: Tensor, noise_scale: float = 1.0, sigma_data: float = SIGMA_DATA
) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) of x̂ = c_skip·z_t + c_out·net(z_t, t, y), each shaped like t.

    - 'none'  : c_skip = 0, c_out = 1 (plain x-prediction, JiT).
    - 'linear': c_skip = t, c_out = 1−t.
    - 'edm'   : EDM (Karras et al. 2022) written for our path. Dividing z_t by t gives EDM's
      variance-exploding variable x_σ = z_t/t = x + σ_t·ε/s with σ_t = s·(1−t)/t, so
      c_skip = (1/t)·σd²/(σd² + σ_t²) (the 1/t turns z_t into x_σ) and
      c_out = σd·σ_t/√(σd² + σ_t²), as in Tab. 10 (which has s = 1). We evaluate the
      algebraically equal forms c_skip = σd²·t/(σd²t² + s²(1−t)²) and
      c_out = σd·s(1−t)/√(σd²t² + s²(1−t)²), finite at t = 0 and t = 1.
      The paper's c_in = t acts on x_σ: c_in·x_σ = z_t, i.e. the network simply sees z_t (its
      variance σd²t² + s²(1−t)² stays O(1), which is what EDM's c_in is for). So in z-space
      c_in = 1 and no input scaling is applied. The time input stays t (not EDM's ¼·ln σ).
      With these, the network's regression target (x − c_skip·z)/c_out has unit variance for
      data of standard deviation σd (tested).
    """
    _check_choice("preconditioner", kind, PRECONDITIONERS)
    if kind == "none":
        return torch.zeros_like(t), torch.ones_like(t)
    if kind == "linear":
        return t, 1 - t
    sd2 = sigma_data**2
    denom = sd2 * t * t + noise_scale**2 * (1 - t) ** 2  # σd²t² + s²(1−t)² > 0 on [0, 1]
    return sd2 * t / denom, sigma_data * noise_scale * (1 - t) / denom.sqrt()


def precondition(raw: Tensor, z: Tensor, t: Tensor, kind: str,
                 noise_scale: float = 1.0, sigma_data: float = SIGMA_DATA) -> Tensor:  # fmt: skip
    """x̂ = c_skip·z + c_out·raw for a raw network output (N, C, H, W) at times t (N,)."""
    if kind == "none":
        return raw
    c_skip, c_out = preconditioner_coefficients(kind, t, noise_scale, sigma_data)
    return _rows(c_skip, z) * z + _rows(c_out, z) * raw


# ----------------------------------------------------------------------------- objective


@dataclass(frozen=True)
class ObjectiveConfig:
    """The training objective. Defaults are JiT's: x-prediction, v-loss, logit-normal(−0.8, 0.8).

    `noise_scale` None means the paper's image_size/256, taken from the batch's width.
    `preconditioner` other than 'none' wraps an x-prediction network (Tab. 10).
    """

    prediction: str = "x"
    loss: str = "v"
    t_sampler: str = "logit_normal"
    p_mean: float = P_MEAN
    p_std: float = P_STD
    t_eps: float = TRAIN_T_EPS
    t_min: float = DEFAULT_T_MIN
    noise_scale: float | None = None
    label_drop: float = LABEL_DROP
    preconditioner: str = "none"
    sigma_data: float = SIGMA_DATA

    def __post_init__(self) -> None:
        _check_choice("prediction", self.prediction, PREDICTIONS)
        _check_choice("loss", self.loss, LOSS_SPACES)
        _check_choice("t_sampler", self.t_sampler, T_SAMPLERS)
        _check_choice("preconditioner", self.preconditioner, PRECONDITIONERS)
        if self.preconditioner != "none" and self.prediction != "x":
            raise ValueError(
                f"preconditioner {self.preconditioner!r} builds an x-prediction; "
                f"set prediction='x' (got {self.prediction!r})"
            )
        for name in ("p_mean", "p_std", "t_eps", "t_min", "label_drop", "sigma_data"):
            object.__setattr__(self, name, finite_number(name, getattr(self, name)))
        if self.noise_scale is not None:
            object.__setattr__(self, "noise_scale", finite_number("noise_scale", self.noise_scale))
        # one check per field, its true range (training refuses nothing more): t_eps = 1 clamps
        # every 1 − t, p_std = 0 trains at one t, label_drop = 1 never shows a label
        if not 0.0 < self.t_eps < 1.0:
            raise ValueError(f"t_eps must lie in (0, 1), got {self.t_eps}")
        if not 0.0 < self.t_min <= 1.0:
            raise ValueError(f"t_min must lie in (0, 1], got {self.t_min}")
        if self.p_std <= 0:
            raise ValueError(f"p_std must be > 0, got {self.p_std}")
        if self.noise_scale is not None and self.noise_scale <= 0:
            raise ValueError(f"noise_scale must be > 0, got {self.noise_scale}")
        if not 0.0 <= self.label_drop < 1.0:
            raise ValueError(f"label_drop must lie in [0, 1), got {self.label_drop}")
        if self.sigma_data <= 0:
            raise ValueError(f"sigma_data must be > 0, got {self.sigma_data}")

    def resolved_noise_scale(self, image_size: int) -> float:
        return self.noise_scale if self.noise_scale is not None else default_noise_scale(image_size)


def network_prediction(
    denoiser: Denoiser, z: Tensor, t: Tensor, y: Tensor | None, config: ObjectiveConfig
) -> Tensor:
    """The denoiser's output at (z, t, y) as a quantity of kind `config.prediction`
    (the pre-conditioner applied, if any)."""
    out = denoiser(z, t, y)  # (N, C, H, W)
    scale = config.resolved_noise_scale(z.shape[-1])
    return precondition(out, z, t, config.preconditioner, scale, config.sigma_data)


def flow_matching_loss_at(
    denoiser: Denoiser,
    x: Tensor,
    noise: Tensor,
    t: Tensor,
    y: Tensor | None,
    config: ObjectiveConfig = ObjectiveConfig(),  # noqa: B008 (frozen dataclass)
) -> Tensor:
    """Per-sample losses (N,) at explicit noise ε (with its scale) and times t (N,); no dropout.

    With output u of kind K = prediction and loss space L, the loss is
    mean over (C, H, W) of (C_{K→L}(u) − C_{K→L}(u*))², where u* is the true K-quantity (x, ε
    or v = x − ε) and C the Tab. 1 conversion (`convert`). Away from the clamps this is
    ‖L̂ − L‖²; for x-prediction with v-loss it is exactly the authors'
    ((x − z) − (x̂ − z))² / max(1−t, t_eps)². The authors' scalar loss is the batch mean.
    t outside [0, 1] is refused (one host sync, skipped under torch.compile; the training step's
    `flow_matching_loss` draws t in [0, 1) and skips it).
    """
    _check_batch(x, config, t, y)
    return _loss_at(denoiser, x, noise, t, y, config)


def _loss_at(denoiser, x: Tensor, noise: Tensor, t: Tensor, y, config) -> Tensor:
    """`flow_matching_loss_at` without its checks of t's values (no host sync)."""
    if x.shape != noise.shape or t.shape != (x.shape[0],):
        raise ValueError(
            f"x {tuple(x.shape)}, noise {tuple(noise.shape)} and t {tuple(t.shape)} must be "
            "(N, C, H, W), (N, C, H, W) and (N,)"
        )
    t = t.to(dtype=x.dtype)
    z = interpolate(x, noise, t)  # (N, C, H, W)
    u = network_prediction(denoiser, z, t, y, config)
    truth = {"x": x, "eps": noise, "v": x - noise}[config.prediction]
    kind, space = config.prediction, config.loss
    pred = convert(u, kind, space, z, t, config.t_eps, config.t_min)
    target = convert(truth, kind, space, z, t, config.t_eps, config.t_min)
    return (pred - target).pow(2).mean(dim=tuple(range(1, x.ndim)))  # (N,)


def flow_matching_loss(
    denoiser: Denoiser,
    x: Tensor,
    y: Tensor | None,
    config: ObjectiveConfig = ObjectiveConfig(),  # noqa: B008 (frozen dataclass)
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """One training draw: (per-sample losses (N,), the t (N,) used). `loss.mean()` is the
    authors' loss; the t lets training log the loss by noise level (`runlog.bucket_losses`).

    `num_classes` (the null label of the label drop) defaults to the denoiser's
    `config.num_classes`; a denoiser without one (a wrapped or plain function) needs it given
    when labels are. Randomness in the authors' order: label drop, then t, then ε ~ N(0, s²I).
    """
    _check_batch(x, config, y=y)
    num_classes = _label_count(denoiser, y, num_classes)
    y = drop_labels(y, num_classes, config.label_drop, generator)
    t = sample_t(x.shape[0], config.t_sampler, config.p_mean, config.p_std,
                 generator=generator, device=x.device, dtype=x.dtype)  # fmt: skip
    scale = config.resolved_noise_scale(x.shape[-1])
    draw_device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=draw_device, dtype=x.dtype)
    noise = noise.to(x.device) * scale
    return _loss_at(denoiser, x, noise, t, y, config), t


def _check_batch(x, config, t=None, y=None) -> None:
    """Float images, labels (None or integer indices, one per image) and an ObjectiveConfig
    (types, dtypes and shapes: no sync, no graph break); then t's values in [0, 1] when t is
    given (one host sync), except under torch.compile."""
    if not isinstance(config, ObjectiveConfig):
        raise ValueError(f"config must be an ObjectiveConfig, got {type(config).__name__}: pass "
                         "ObjectiveConfig(**fields), e.g. ObjectiveConfig(loss='x')")  # fmt: skip
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be float images in [-1, 1], got {got}: scale uint8 images "
                         "with x.float() / 127.5 - 1")  # fmt: skip
    integer = isinstance(y, Tensor) and not (y.is_floating_point() or y.is_complex())
    if y is not None and not (integer and y.dtype != torch.bool and y.shape == x.shape[:1]):
        got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must be None or integer class indices of shape "
                         f"{tuple(x.shape[:1])}, one per image, got {got}: pass torch.as_tensor("
                         "labels, dtype=torch.long, device=x.device).reshape(-1)")  # fmt: skip
    if not isinstance(t, Tensor) or torch.compiler.is_compiling() or not t.numel():
        return
    if not bool(((t >= 0) & (t <= 1)).all()):  # NaN fails too
        raise ValueError(f"t must lie in [0, 1] (0 = noise, 1 = data), got values from "
                         f"{float(t.min()):g} to {float(t.max()):g}: pass times in [0, 1], "
                         "e.g. sample_t(n)")  # fmt: skip


def _label_count(denoiser, y: Tensor | None, num_classes: int | None) -> int:
    """The class count the label drop uses: given, else the denoiser's own, never two that
    disagree (with 0 the null label would never be trained, and guidance would fail)."""
    own = getattr(getattr(denoiser, "config", None), "num_classes", None)
    if num_classes is None and own is None and y is not None:
        raise ValueError("labels were given to a denoiser without a config: pass num_classes= "
                         "(labels equal to it are the null label guidance uses)")  # fmt: skip
    if num_classes is not None and own is not None and num_classes != own:
        raise ValueError(f"num_classes={num_classes}, but the network has {own} classes: "
                         "drop num_classes (the network's is used)")  # fmt: skip
    return int(num_classes if num_classes is not None else (own or 0))


def loss_weight_in_x(loss: str, t: Tensor) -> Tensor:
    """Footnote 4: the weight on ‖x̂ − x‖² that an x-prediction gets under each loss space
    (unclamped): 1, t²/(1−t)², 1/(1−t)² for the x-, ε- and v-loss."""
    _check_choice("loss", loss, LOSS_SPACES)
    if loss == "x":
        return torch.ones_like(t)
    if loss == "eps":
        return (t / (1 - t)) ** 2
    return 1 / (1 - t) ** 2
