"""One entry point for every checkpoint kind a user may hold, for sampling and evaluation.

`load_trained(source)` accepts a pixeljit training run (folder or `.pt`), a pixeljit
`.safetensors` export, a Hugging Face layout folder (`checkpoints.hub`) or `hf://org/name[@rev]`,
or an authors' `checkpoint-last.pth` (or its folder), and returns the network in eval mode *with*
what sampling must match from training: the prediction target, the noise scale and the
pre-conditioner with its σ_data (and class names, the exported weights and recommended sampler
when known).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pixeljit.checkpoints.arguments import (
    WEIGHTS_CHOICE,
    check_path,
    check_weights,
    device_or_cpu,
)
from pixeljit.checkpoints.authors import load_reference_named
from pixeljit.checkpoints.kinds import checkpoint_kind
from pixeljit.checkpoints.kinds import folder_kind as folder_kind  # importable here, as before
from pixeljit.checkpoints.metadata import (
    Objective,
    check_class_names,
    check_objective,
    objective_fields,
    objective_from_metadata,
    sampler_config,
    sampler_from_metadata,
    weights_metadata,
)
from pixeljit.checkpoints.run import load_checkpoint
from pixeljit.checkpoints.safetensors_io import load_safetensors_with_meta, save_safetensors
from pixeljit.checkpoints.weights import build_loaded, check_overrides
from pixeljit.devices import as_device
from pixeljit.diffusion.objective import BASE_RESOLUTION, SIGMA_DATA
from pixeljit.diffusion.sampler import NO_GUIDANCE, SamplerConfig
from pixeljit.model import MODEL_SIZES, JiT, JiTConfig, count_parameters

OUR_WEIGHTS = ("ema", "model")  # 'ema' = the configured sampling EMA; or 'ema:<decay>'
# the authors' code: model_ema1 is kept with decay 0.9999 (their evaluation weights), model_ema2
# with 0.9996 (paper_facts.md §5c)
AUTHORS_EMA_DECAYS = {"model_ema1": 0.9999, "model_ema2": 0.9996}
# the CFG scale their README gives per released model (size, patch), all Heun-50 on the CFG
# interval [0.1, 1] (paper_facts.md §5c)
AUTHORS_README_CFG = {("B", 16): 3.0, ("B", 32): 3.0, ("L", 16): 2.4, ("L", 32): 2.5,
                      ("H", 16): 2.2, ("H", 32): 2.3}  # fmt: skip
AUTHORS_INTERVAL = (0.1, 1.0)
AUTHORS_STEPS = 50

MAX_NAMES_SHOWN = 20  # class names an unknown name's error lists (ImageNet has 1000)


@dataclass(frozen=True, repr=False)  # the network's own repr runs to hundreds of lines
class TrainedModel:
    net: JiT
    prediction: str = "x"
    noise_scale: float = 1.0
    preconditioner: str = "none"
    class_names: tuple[str, ...] | None = None
    description: str = ""
    weights: str = ""  # which weights: 'ema:<decay>', 'model', 'model_ema1', … ('' = unknown)
    step: int | None = None  # training step of the weights, when known
    sampler: SamplerConfig | None = None  # recommended sampling settings, when known
    sigma_data: float = SIGMA_DATA  # the 'edm' pre-conditioner's σ_data (last: keyword)

    def __post_init__(self) -> None:
        """A model without classes has nothing to guide or to name: a recommended CFG (a preset's,
        kept by an unconditional run) reads as 1, and class names (its data set's) are dropped.
        The objective is checked as a file's is (and the scale stored as a float)."""
        if not isinstance(getattr(self.net, "config", None), JiTConfig):
            raise ValueError(f"TrainedModel takes a JiT network, got {type(self.net).__name__}")
        where = self.description or "TrainedModel"
        objective = check_objective(
            where, self.prediction, self.noise_scale, self.preconditioner, self.sigma_data
        )
        object.__setattr__(self, "noise_scale", objective[1])
        object.__setattr__(self, "sigma_data", objective[3])
        if self.net.config.num_classes == 0:
            if self.sampler is not None and self.sampler.cfg != NO_GUIDANCE:
                unguided = dataclasses.replace(self.sampler, cfg=NO_GUIDANCE)
                object.__setattr__(self, "sampler", unguided)
            object.__setattr__(self, "class_names", None)

    def __repr__(self) -> str:
        """One line: where the weights come from, which they are, what they generate (the
        network itself is `.net`)."""
        cfg = self.net.config
        return (f"TrainedModel(source={self.description or None!r}, "
                f"weights={self.weights or None!r}, image_size={cfg.image_size}, "
                f"in_channels={cfg.in_channels}, num_classes={cfg.num_classes}, "
                f"parameters={count_parameters(self.net):,}, prediction={self.prediction!r}, "
                f"noise_scale={self.noise_scale:g}, device='{self.device}')")  # fmt: skip

    @property
    def ema_decay(self) -> float | None:
        """The EMA decay of the weights, when they are an EMA of known decay."""
        if self.weights.startswith("ema:"):
            return float(self.weights.split(":", 1)[1])
        return AUTHORS_EMA_DECAYS.get(self.weights)

    def sample(self, labels=None, **kwargs) -> torch.Tensor:
        """Images (N, C, H, W), nominally in [-1, 1] (not clipped), from these weights, with
        their objective (prediction, noise scale, pre-conditioner, σ_data) and their recommended
        sampler settings (else SamplerConfig's defaults); any keyword of `pixeljit.sample` given
        here takes precedence, e.g. `model.sample([0, 3], steps=10, seed=0)`. A label may be a
        class name (`model.sample(["Sneaker", "Bag"])`, any case) where the model records
        names."""
        from pixeljit.diffusion.sampler import sample

        if isinstance(labels, np.ndarray) and labels.dtype.kind in "USO":  # names in an array
            labels = labels.tolist()
        if isinstance(labels, (list, tuple)):
            labels = [self.label_index(v) if isinstance(v, str) else v for v in labels]
        base = self.sampler or SamplerConfig()
        fields = base.kwargs()
        chosen = {k: v for k, v in kwargs.items() if k in fields}  # given over it
        settings = dataclasses.replace(base, **chosen).kwargs()
        objective = {"prediction": self.prediction, "noise_scale": self.noise_scale,
                     "preconditioner": self.preconditioner,
                     "sigma_data": self.sigma_data}  # fmt: skip
        return sample(self.net, labels, **{**settings, **objective, **kwargs})

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return next(self.net.parameters()).device

    def to(self, device) -> TrainedModel:
        """The weights moved to `device` (in place; returns self), e.g. `model.to("cuda")`.
        Only the device changes: sampling keeps fp32 weights (use `amp_dtype` for bf16)."""
        if isinstance(device, torch.dtype):
            raise ValueError(
                f"TrainedModel.to takes a device, not a dtype ({device}): sampling keeps fp32 "
                "weights; pass amp_dtype=torch.bfloat16 to sample() for bf16 compute"
            )
        self.net.to(as_device(device, what="TrainedModel.to:"))
        return self

    def label_index(self, name: str) -> int:
        """The class index of `name` among the model's class names: the exact name, else the one
        name equal to it ignoring case (two such names are refused as ambiguous)."""
        if not isinstance(name, str):
            raise ValueError(f"label_index takes a class name (a str), got {name!r}")
        if self.net.config.num_classes == 0:
            raise ValueError(f"{name!r}: this model is unconditional and takes no labels: "
                             "pass labels=None and num=N")  # fmt: skip
        names = self.class_names
        if not names:
            raise ValueError(
                f"{name!r}: this model records no class names; pass class numbers instead"
            )
        if name in names:
            return names.index(name)
        folded = [k for k, known in enumerate(names) if known.casefold() == name.casefold()]
        if len(folded) == 1:
            return folded[0]
        if folded:
            raise ValueError(f"{name!r} matches {[names[k] for k in folded]} ignoring case: write "
                             "the name's exact case or pass its class number")  # fmt: skip
        shown = ", ".join(repr(n) for n in names[:MAX_NAMES_SHOWN])
        more = f", … ({len(names)} in all)" if len(names) > MAX_NAMES_SHOWN else ""
        last = self.net.config.num_classes - 1  # every class has a number, named or not
        raise ValueError(f"{name!r} is not a class name of this model: pass one of {shown}"
                         f"{more}, or a class number 0 to {last}")  # fmt: skip

    def objective_metadata(self) -> dict:
        """The objective as an export records it (sigma_data where the pre-conditioner uses it);
        also `pixeljit.sample`'s keywords for these weights."""
        return objective_fields(
            self.prediction, self.noise_scale, self.preconditioner, self.sigma_data
        )


def trained_model(net: JiT, objective: Objective, *args, **fields) -> TrainedModel:
    """TrainedModel of `net` with a checked objective (`check_objective`'s tuple); the other
    fields (class names, description, …) as TrainedModel takes them after the objective."""
    prediction, noise_scale, preconditioner, sigma_data = objective
    return TrainedModel(
        net, prediction, noise_scale, preconditioner, *args, sigma_data=sigma_data, **fields
    )


def load_trained(
    source: str | os.PathLike,
    weights: str | None = None,
    device: torch.device | str | None = "cpu",
    in_context_start: int | None = None,
    **overrides,
) -> TrainedModel:
    """Load any checkpoint kind (see the module doc). `weights`: for pixeljit runs 'ema'
    (default: the run's sampling EMA), 'ema:<decay>' or 'model'; for the authors' files
    'model_ema1' (default), 'model_ema2' or 'model'; a hub folder holds one set (None or its
    own name), and so does a bare state dict in a .pth (None only: its weights are unnamed, '').
    `device` None is the CPU. Overrides go to the JiT config: a pixeljit file (run, .safetensors,
    hub folder) records its architecture, so only `weights.OVERRIDABLE_FIELDS` (the attention
    kernel, dropout) may differ from it; an authors' checkpoint records none and takes any
    field.

    Every kind goes through `checkpoints.weights`: sizes bounded by the file before anything is
    built, dtypes and shapes checked on `meta`, NaN / Inf refused."""
    check_path(source, "source", "a run folder, a checkpoint file or hf://org/name")
    weights = check_weights(weights, "'ema', 'ema:<decay>' or 'model' ('model_ema1' … for an "
                                     "authors' checkpoint)")  # fmt: skip
    device = device_or_cpu(device)
    kind = checkpoint_kind(source)
    if in_context_start is not None and kind in ("run", "safetensors"):
        raise ValueError(
            f"in_context_start has no effect on {source}: pixeljit files record the "
            "architecture (on the command line drop --in-context-start)"
        )
    if kind == "hub":
        from pixeljit.checkpoints.hub import load_hub

        return load_hub(source, weights, device, in_context_start, **overrides)
    if kind == "safetensors":
        net, meta = load_safetensors_with_meta(source, device=device, **overrides)
        objective = objective_from_metadata(
            source, meta.get("objective", {}), net.config.image_size
        )
        names = check_class_names(source, meta.get("class_names"), net.config.num_classes)
        sampler = sampler_from_metadata(source, meta.get("sampler"))
        name, step = weights_metadata(source, meta.get("weights"))
        check_one_set(source, name, weights)
        description = f"{source} ({name})" if name else str(source)
        return trained_model(net, objective, names, description, name, step, sampler=sampler)
    if kind == "authors":
        # None: 'model_ema1' of an authors' dict; a bare state dict loads unnamed ('')
        net, name = load_reference_named(source, weights, in_context_start, device, **overrides)
        # their --noise_scale: default 1.0, 2.0 for the 512-px models (s = size/256 from 256 up)
        scale = max(1.0, net.config.image_size / BASE_RESOLUTION)
        description = f"{source} ({name})" if name else str(source)
        return TrainedModel(net, "x", scale, "none", None, description, name,
                            sampler=authors_sampler(net.config))  # fmt: skip
    return _load_run(source, "ema" if weights is None else weights, device, overrides)


def check_one_set(label, held: str | None, weights: str | None) -> None:
    """A .safetensors export or a hub folder holds one set of weights (`held`, e.g. 'ema:0.995'):
    `weights` may be None, that name, or 'ema' for a run's EMA; anything else is refused."""
    named_ema = weights == "ema" and (held or "").startswith("ema:")
    if weights is not None and weights != held and not named_ema:
        raise ValueError(f"{label} holds one set of weights ({held or 'unnamed'}), not "
                         f"{weights!r}: drop the weights choice ({WEIGHTS_CHOICE})")  # fmt: skip


def _run_state(ckpt: dict, file, weights: str) -> tuple[dict, str]:
    """The state dict of `weights` in a run checkpoint, and its resolved name."""
    if weights == "model":
        return ckpt["model"], weights
    if weights == "ema" or weights.startswith("ema:"):
        decays = [float(d) for d in ckpt["ema"]["decays"]]
        if weights == "ema":
            chosen = ckpt["config"]["sample"].get("ema_decay")
            decay = float(chosen) if chosen is not None else decays[0]
        else:
            try:
                decay = float(weights.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"weights {weights!r} ({WEIGHTS_CHOICE}): write ema:<decay>, "
                                 f"e.g. ema:{decays[0]}") from None  # fmt: skip
        if decay not in decays:
            raise ValueError(f"{file}: the run has EMAs {decays}; no EMA with decay {decay}")
        shadows = ckpt["ema"]["shadows"][decays.index(decay)]
        return dict(zip(ckpt["ema"]["names"], shadows, strict=True)), f"ema:{decay}"
    raise ValueError(f"weights ({WEIGHTS_CHOICE}) must be 'ema', 'ema:<decay>' or 'model' for "
                     f"a pixeljit run, got {weights!r}")  # fmt: skip


def run_ema_decays(source: str | os.PathLike) -> list[float]:
    """The EMA decays a pixeljit training run keeps (to compare them all)."""
    ckpt = load_checkpoint(source, flag=None, tensors=False)  # no --resume in these verbs
    file = ckpt["path"]
    try:
        return [float(d) for d in ckpt["ema"]["decays"]]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{file}: malformed pixeljit checkpoint (EMA decays: {err})") from None


def _load_run(source, weights: str, device, overrides) -> TrainedModel:
    ckpt = load_checkpoint(source, flag=None)  # its zip layout is bounded before torch.load
    file = Path(ckpt["path"])
    file_bytes = file.stat().st_size  # bounds the tensors the file may declare
    try:
        cfg = ckpt["config"]
        check_overrides(file, cfg["model"], overrides)  # before the recorded fields are replaced
        fields = {**cfg["model"], **overrides}
        state, weights = _run_state(ckpt, file, weights)
        obj = cfg["objective"]
        objective = check_objective(  # a run's config records sigma_data (0.5 if not)
            file, obj["prediction"], obj["noise_scale"], obj["preconditioner"],
            obj.get("sigma_data", SIGMA_DATA),
        )  # fmt: skip
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        raise ValueError(
            f"{file}: malformed pixeljit checkpoint ({type(err).__name__}: {err}); "
            "the file may be damaged or from an incompatible version"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{file}: weights {weights!r} are not a state dict")
    try:
        config = JiTConfig.from_dict(fields)
    except (ValueError, TypeError, ZeroDivisionError) as err:
        raise ValueError(f"{file}: invalid model config: {err}") from None
    net = build_loaded(config, state, device, f"{file} ({weights})", file_bytes)
    names = check_class_names(file, ckpt.get("class_names"))
    step = ckpt.get("step")
    step = step if isinstance(step, int) and not isinstance(step, bool) else None
    return trained_model(
        net, objective, names, f"{ckpt['path']} step {ckpt.get('step', '?')} ({weights})",
        weights, step, _run_sampler(file, cfg),
    )  # fmt: skip


def _run_sampler(file, cfg: dict) -> SamplerConfig | None:
    """The sampler settings of a run's config (its `sample` section, as its previews used)."""
    section = cfg.get("sample")
    if not isinstance(section, dict):
        return None
    known = {f for f in SamplerConfig().kwargs() if f in section}
    where = f"{file}: invalid sample settings in its config"
    return sampler_config({k: section[k] for k in known}, where)


def model_size_name(config: JiTConfig) -> str | None:
    """'B', 'L', 'H' or 'G' when `config` has a registry size's depth, width and heads."""
    for name, size in MODEL_SIZES.items():
        if (config.depth, config.hidden_size, config.num_heads) == (
            size["depth"], size["hidden_size"], size["num_heads"],
        ):  # fmt: skip
            return name
    return None


def authors_sampler(config: JiTConfig) -> SamplerConfig | None:
    """The settings the authors' README gives for a released model (Heun-50, their CFG on the
    interval [0.1, 1]); None for a shape they did not release."""
    cfg = AUTHORS_README_CFG.get((model_size_name(config), config.patch_size))
    if cfg is None:
        return None
    return SamplerConfig(steps=AUTHORS_STEPS, method="heun", cfg=cfg, interval=AUTHORS_INTERVAL)


def export_safetensors(
    model: TrainedModel, path: str | os.PathLike, overwrite: bool = False
) -> Path:
    """A .safetensors with the weights, the JiT config, the objective, class names and the
    recommended sampler settings (read back as `.sampler`, used by `pixeljit sample`); an
    existing file is replaced only with `overwrite`."""
    sampler = model.sampler.as_json() if model.sampler is not None else None
    weights = {"name": model.weights or None, "step": model.step}
    return save_safetensors(model.net, path, objective=model.objective_metadata(),
                            class_names=model.class_names, sampler=sampler,
                            weights=weights, overwrite=overwrite)  # fmt: skip
