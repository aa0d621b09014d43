"""Typed training configs, one dataclass per concern, each validating itself.

`TrainConfig` = model (JiTConfig) + objective + optim + data + sample + run; the named recipes
live in `presets`, and `config_io` reads and writes them (dicts, YAML, `--set` overrides).
"""

from __future__ import annotations

import dataclasses
import math
import os
import reprlib
from dataclasses import dataclass, field

from pixeljit.diffusion.execution import MATMUL_PRECISIONS
from pixeljit.diffusion.objective import ObjectiveConfig
from pixeljit.diffusion.sampler import SamplerConfig
from pixeljit.model import JiTConfig
from pixeljit.model.jit import MAX_FIELDS, MAX_MLP_RATIO
from pixeljit.training.distributed import STRATEGIES
from pixeljit.training.ema import WARMUP_OFFSET
from pixeljit.values import is_integer, is_real

MAX_SEED = 2**63  # seeds are 64-bit (numpy SeedSequence, torch.manual_seed)
BASE_BATCH = 256  # lr = blr × global_batch / 256
PAPER_BLR = 5e-5
PAPER_EMA_DECAYS = (0.9996, 0.9998, 0.9999)
# upper bounds of the sizes (the network's own, model.jit.MAX_FIELDS), checked here with the
# field's config name before anything is allocated
MAX_MODEL = {name: MAX_FIELDS[name] for name in ("image_size", "patch_size", "in_channels",
                                                  "hidden_size", "depth", "num_heads")}  # fmt: skip
MAX_CLASSES = MAX_FIELDS["num_classes"]
MAX_PREVIEW = 1000  # preview grid rows / columns
COMPILE_AUTO = "auto"  # run.compile: torch.compile on CUDA, eager elsewhere
CHOICES = {"run.compile": "true, false or auto"}  # fields of several types: what they accept


_SHOWN = reprlib.Repr()
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlevel = 60, 60, 2
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = 4


def shown(value) -> str:
    """A value's repr for an error message, bounded: a config's values come from files, and a
    nested or shared structure there could have a repr of gigabytes."""
    return _SHOWN.repr(value)


def _number(name: str, value, low=None, high=None, low_open=False, high_open=False) -> None:
    """A finite number in the range (None = not set, allowed where the field is optional)."""
    if value is None:
        return
    if not is_real(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {shown(value)}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '≥'} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '≤'} {high}, got {value}")


def check_model_fields(fields: dict) -> None:
    """The JiT fields that JiTConfig itself leaves unchecked or reports without the field's name
    (it lives in model/): sizes ≥ 1, a positive MLP ratio, dropout rates in [0, 1)."""
    for name, high in MAX_MODEL.items():
        _count(f"model.{name}", fields.get(name), high=high)
    _count("model.num_classes", fields.get("num_classes"), low=0, high=MAX_CLASSES)
    _number("model.mlp_ratio", fields.get("mlp_ratio"), low=0.0, high=MAX_MLP_RATIO, low_open=True)
    for name in ("dropout", "attn_dropout"):
        _number(f"model.{name}", fields.get(name), 0.0, 1.0, high_open=True)
    width, heads = fields.get("hidden_size"), fields.get("num_heads")
    if not (is_integer(width) and is_integer(heads)):
        return
    if width % heads:
        raise ValueError(f"model.hidden_size {width} is not divisible by model.num_heads {heads}: "
                         "change one of them")  # fmt: skip
    if fields.get("rope") is True and (width // heads) % 4:
        raise ValueError(
            f"model.hidden_size {width} / model.num_heads {heads} gives a head dim of "
            f"{width // heads}, but 2-D RoPE needs one divisible by 4: change model.hidden_size "
            "or model.num_heads (or set model.rope=false)"
        )


# optimiser steps of one run: far beyond any (the paper's longest, 600 ImageNet epochs at batch
# 1024, is ≈ 750k), so a larger number is a typo, not a plan. The one ceiling of a run's length,
# however given: optim.steps here, optim.epochs × the steps of an epoch once the data is known
# (each epoch is at least one step, so optim.epochs has the same ceiling here)
MAX_OPTIM_STEPS = 10**9


def _count(name: str, value, low: int = 1, high: int | None = None) -> None:
    """An integer in [low, high] (None = not set)."""
    if value is None:
        return
    if not is_integer(value):
        raise ValueError(f"{name} must be an integer, got {shown(value)}")
    if value < low:
        raise ValueError(f"{name} must be ≥ {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be ≤ {high}, got {value}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then a constant rate (the authors' schedule), optionally falling
    linearly to zero over the last `cooldown` fraction of the steps; duration in epochs or steps.

    `ema_warmup` caps each EMA decay at (1 + n)/(c + n) after n updates, c = `ema_warmup_offset`
    (10: the `num_updates` rule of TensorFlow's ExponentialMovingAverage), so a slow average
    forgets the initial weights within a short run; off (the authors' plain EMA) by default. While
    the cap binds the average weighs update k about as k^(c − 2): a smaller c averages a longer
    tail of the run.
    """

    lr: float | None = None  # absolute rate; None → blr × global_batch / 256
    blr: float = PAPER_BLR
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    decay_1d: bool = False  # weight decay on 1-D parameters (biases, norm scales) too
    warmup_epochs: float = 5.0
    global_batch: int = 1024
    micro_batch: int | None = None  # per device and forward; None → global_batch / world_size
    epochs: float | None = 600.0
    steps: int | None = None  # when set, overrides epochs
    grad_clip: float | None = None
    ema_decays: tuple[float, ...] = PAPER_EMA_DECAYS
    ema_warmup: bool = False
    ema_warmup_offset: float = WARMUP_OFFSET  # c in the warm-up cap (1 + n)/(c + n)
    cooldown: float = 0.0  # fraction of the steps, at the end, over which the rate falls to 0

    def __post_init__(self) -> None:
        _number("optim.lr", self.lr, low=0.0, low_open=True)
        _number("optim.blr", self.blr, low=0.0, low_open=True)
        if not isinstance(self.betas, tuple) or len(self.betas) != 2:
            raise ValueError(f"optim.betas must be two numbers, got {shown(self.betas)}")
        for beta in self.betas:
            _number("optim.betas", beta, low=0.0, high=1.0, high_open=True)
        _number("optim.weight_decay", self.weight_decay, low=0.0)
        if not isinstance(self.decay_1d, bool):
            raise ValueError(f"optim.decay_1d must be true or false, got {shown(self.decay_1d)}")
        _number("optim.warmup_epochs", self.warmup_epochs, low=0.0, high=MAX_OPTIM_STEPS)
        _count("optim.global_batch", self.global_batch)
        _count("optim.micro_batch", self.micro_batch)
        if self.steps is None and self.epochs is None:
            raise ValueError("set optim.steps or optim.epochs (--steps / --epochs)")
        _count("optim.steps", self.steps, 1, MAX_OPTIM_STEPS)
        _number("optim.epochs", self.epochs, low=0.0, low_open=True)
        if self.epochs is not None and self.epochs > MAX_OPTIM_STEPS:  # an epoch is ≥ 1 step
            raise ValueError(f"optim.epochs {self.epochs:g} makes more than {MAX_OPTIM_STEPS} "
                             "steps (each epoch is at least one): pass a smaller --epochs / "
                             "optim.epochs")  # fmt: skip
        _number("optim.grad_clip", self.grad_clip, low=0.0, low_open=True)
        if not isinstance(self.ema_decays, tuple) or not self.ema_decays:
            got = shown(self.ema_decays)
            raise ValueError(f"optim.ema_decays must be a non-empty list, got {got}")
        for decay in self.ema_decays:
            _number("optim.ema_decays", decay, low=0.0, high=1.0, low_open=True, high_open=True)
        if len(set(self.ema_decays)) != len(self.ema_decays):
            raise ValueError(f"optim.ema_decays must not repeat, got {self.ema_decays}")
        if not isinstance(self.ema_warmup, bool):
            got = shown(self.ema_warmup)
            raise ValueError(f"optim.ema_warmup must be true or false, got {got}")
        _number("optim.ema_warmup_offset", self.ema_warmup_offset, low=1.0, low_open=True)
        if not self.ema_warmup and self.ema_warmup_offset != WARMUP_OFFSET:
            raise ValueError(f"optim.ema_warmup_offset {self.ema_warmup_offset} has no effect "
                             "without the warm-up: add optim.ema_warmup=true, or leave the offset "
                             f"at {WARMUP_OFFSET:g}")  # fmt: skip
        _number("optim.cooldown", self.cooldown, low=0.0, high=1.0, high_open=True)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.blr * self.global_batch / BASE_BATCH


@dataclass(frozen=True)
class DataConfig:
    """Where images come from: a packed folder (`pixeljit prepare`), `fashion-mnist`, `emoji`,
    or an image folder (packed on first use under the run's folder)."""

    source: str = ""
    split: str | None = None  # fashion-mnist: train (default) | test; folders: a sub-folder
    flip: bool = True  # random horizontal mirroring (the authors', for ImageNet); false for data
    # that is not mirror-symmetric (text, digits, Fashion-MNIST's left-facing shoes)
    conditional: bool = True  # False trains unconditionally whatever the labels
    num_classes: int | None = None  # None → from the data set

    def __post_init__(self) -> None:
        _count("data.num_classes", self.num_classes, low=0, high=MAX_CLASSES)
        if isinstance(self.source, str):  # a path: `~` is the home folder, as in a shell
            object.__setattr__(self, "source", os.path.expanduser(self.source))
        if isinstance(self.split, str) and not self.split.strip():
            raise ValueError("data.split must name a split (e.g. test), got an empty one: use "
                             "null, or leave it out, for the default split")  # fmt: skip


@dataclass(frozen=True)
class SampleConfig(SamplerConfig):
    """Periodic sample grids during training: the sampler's fields (`SamplerConfig`, the one place
    their defaults live) plus when and what to draw."""

    every: int = 0  # steps between grids; 0 = only at the end
    per_class: int = 8  # grid columns
    max_classes: int = 10  # grid rows for conditional models
    ema_decay: float | None = None  # None → the first configured decay

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ValueError as err:
            raise ValueError(f"sample.{err}") from None
        _count("sample.every", self.every, low=0)
        _count("sample.per_class", self.per_class, high=MAX_PREVIEW)
        _count("sample.max_classes", self.max_classes, high=MAX_PREVIEW)
        _number("sample.ema_decay", self.ema_decay, 0.0, 1.0, low_open=True, high_open=True)


BF16_ONLY = ("fsdp_bf16_params", "bf16_residual")  # run fields that need bf16 autocast


@dataclass(frozen=True)
class RunConfig:
    out: str = "runs/default"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool | str = COMPILE_AUTO  # true | false | auto (on for CUDA, off for CPU)
    distributed: str = "ddp"  # ddp | fsdp (under torchrun): distributed.STRATEGIES
    # recompute each block's activations in backward: activation memory of one tensor per block
    # for about one more forward pass (bit-exact in eager; for models that do not fit otherwise)
    activation_checkpointing: bool = False
    # FSDP2 gathers parameters in bf16 and reduces gradients in fp32 (MixedPrecisionPolicy):
    # half the all-gather traffic, but a bf16 residual stream (the authors' numerics keep it fp32)
    fsdp_bf16_params: bool = False
    # under bf16: a bf16 residual stream (the fp32 position embedding makes it fp32 otherwise, as
    # in the authors' code); half the bytes of every residual add and norm, other numerics
    bf16_residual: bool = False
    # float32 matrix products: highest (full fp32, the authors' numerics) | high (TF32 on CUDA) |
    # medium (bf16 inputs, fp32 sums: CUDA, and CPUs with AMX-BF16, ≈ 2× there; other numerics)
    matmul_precision: str = "highest"
    log_every: int = 50
    ckpt_every: int = 1000
    milestone_every: int = 0  # keep step-N.pt every this many steps; 0 = none
    tensorboard: bool = True

    def keeps_milestone(self, step: int) -> bool:
        """Whether `step` keeps a step-N.pt (a checkpoint is then written even between
        ckpt_every steps)."""
        return bool(self.milestone_every) and step % self.milestone_every == 0

    def __post_init__(self) -> None:
        if not isinstance(self.out, str) or not self.out.strip():
            raise ValueError(f"run.out must name a run folder, got {shown(self.out)} (an empty "
                             "value never means the current folder)")  # fmt: skip
        object.__setattr__(self, "out", os.path.expanduser(self.out))  # `~`: home, as in a shell
        if self.distributed not in STRATEGIES:
            got = shown(self.distributed)
            raise ValueError(f"run.distributed must be {' or '.join(STRATEGIES)}, got {got}")
        if self.precision not in ("auto", "bf16", "fp32"):
            got = shown(self.precision)
            raise ValueError(f"run.precision must be auto, bf16 or fp32, got {got}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            got = shown(self.matmul_precision)
            names = f"{', '.join(MATMUL_PRECISIONS[:-1])} or {MATMUL_PRECISIONS[-1]}"
            raise ValueError(f"run.matmul_precision must be {names}, got {got}")
        if isinstance(self.compile, str) and self.compile != COMPILE_AUTO:
            got = shown(self.compile)
            raise ValueError(f"run.compile must be {CHOICES['run.compile']}, got {got}")
        if self.fsdp_bf16_params is True and self.distributed != "fsdp":
            raise ValueError(
                "run.fsdp_bf16_params applies to FSDP2 only: add run.distributed=fsdp, or drop it"
            )
        for name in BF16_ONLY:  # (an auto precision that resolves to fp32: refused in setup)
            if getattr(self, name) is True and self.precision == "fp32":
                raise ValueError(
                    f"run.{name} needs bf16 autocast: set run.precision=bf16 (or auto on CUDA), "
                    "or drop it"
                )
        _count("run.seed", self.seed, low=0)
        if self.seed >= MAX_SEED:
            raise ValueError(f"run.seed must be < 2**63, got {self.seed}")
        _count("run.log_every", self.log_every)
        _count("run.ckpt_every", self.ckpt_every)
        _count("run.milestone_every", self.milestone_every, low=0)


def resolve_compile(setting: bool | str, device_type: str) -> bool:
    """Whether `run.compile` = `setting` compiles the model on a `device_type` device."""
    return device_type == "cuda" if setting == COMPILE_AUTO else bool(setting)


@dataclass(frozen=True)
class TrainConfig:
    model: JiTConfig = field(default_factory=JiTConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        """What the model section's own class leaves unchecked or reports without its field's
        name (it lives in model/), and the rules that span sections."""
        optim = self.optim  # (ObjectiveConfig checks its own fields' ranges, once)
        check_model_fields(dataclasses.asdict(self.model))
        chosen = self.sample.ema_decay
        if chosen is not None and float(chosen) not in map(float, optim.ema_decays):
            raise ValueError(
                f"sample.ema_decay {chosen} is none of the run's EMAs (optim.ema_decays "
                f"{list(optim.ema_decays)}; the paper presets sample with 0.9999, the authors' "
                "evaluation EMA): choose one of them (sample.ema_decay=null: the first), or add "
                "it to optim.ema_decays"
            )
        if optim.micro_batch is not None and optim.global_batch % optim.micro_batch:
            raise ValueError(
                f"optim.micro_batch {optim.micro_batch} must divide optim.global_batch "
                f"{optim.global_batch}"
            )

    @property
    def sampling_decay(self) -> float:
        """The EMA decay the run samples with (its previews; `--weights ema` when loaded):
        sample.ema_decay, else the first of optim.ema_decays."""
        chosen = self.sample.ema_decay
        return float(chosen if chosen is not None else self.optim.ema_decays[0])


SECTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig))
