"""One entry point for every checkpoint kind a user may hold, for sampling and evaluation.

`load_trained(source)` accepts a pixeljit training run (folder or `.pt`), a pixeljit
`.safetensors` export, or an authors' `checkpoint-last.pth` (or its folder), and returns the
network in eval mode *with* what sampling must match from training: the prediction target, the
noise scale and the pre-conditioner (and class names when known).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pixeljit.checkpoints.authors import CHECKPOINT_FILENAME, WEIGHT_ENTRIES, load_reference
from pixeljit.checkpoints.run import LATEST, load_checkpoint
from pixeljit.checkpoints.safetensors_io import load_safetensors_with_meta, save_safetensors
from pixeljit.diffusion.objective import BASE_RESOLUTION
from pixeljit.model import JiT, JiTConfig

OUR_WEIGHTS = ("ema", "model")  # 'ema' = the configured sampling EMA; or 'ema:<decay>'


@dataclass(frozen=True)
class TrainedModel:
    net: JiT
    prediction: str = "x"
    noise_scale: float = 1.0
    preconditioner: str = "none"
    class_names: tuple[str, ...] | None = None
    description: str = ""

    def objective_metadata(self) -> dict:
        return {"prediction": self.prediction, "noise_scale": self.noise_scale,
                "preconditioner": self.preconditioner}  # fmt: skip


def checkpoint_kind(source: str | os.PathLike) -> str:
    """'run' (pixeljit training), 'safetensors', or 'authors'."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return "safetensors"
    if path.is_dir():
        if (path / CHECKPOINT_FILENAME).is_file():
            return "authors"
        if (path / LATEST).is_file() or any(path.glob("step-*.pt")):
            return "run"
        raise FileNotFoundError(
            f"{path} holds neither a pixeljit run ({LATEST}) nor an authors' {CHECKPOINT_FILENAME}"
        )
    if path.suffix == ".pth":
        return "authors"
    if path.suffix == ".pt":
        return "run"
    raise ValueError(
        f"cannot load {path}: expected a pixeljit run folder or .pt checkpoint, a .safetensors "
        f"export, or an authors' {CHECKPOINT_FILENAME} (or its folder)"
    )


def load_trained(
    source: str | os.PathLike,
    weights: str | None = None,
    device: torch.device | str = "cpu",
    in_context_start: int | None = None,
    **overrides,
) -> TrainedModel:
    """Load any checkpoint kind (see the module doc). `weights`: for pixeljit runs 'ema'
    (default: the run's sampling EMA), 'ema:<decay>' or 'model'; for the authors' files
    'model_ema1' (default), 'model_ema2' or 'model'. Overrides go to the JiT config."""
    kind = checkpoint_kind(source)
    if kind == "safetensors":
        net, meta = load_safetensors_with_meta(source, device=device, **overrides)
        obj = meta.get("objective", {})
        names = meta.get("class_names")
        return TrainedModel(
            net, obj.get("prediction", "x"), float(obj.get("noise_scale", 1.0)),
            obj.get("preconditioner", "none"), tuple(names) if names else None, str(source),
        )  # fmt: skip
    if kind == "authors":
        weights = weights or "model_ema1"
        if weights not in WEIGHT_ENTRIES:
            raise ValueError(f"an authors' checkpoint holds {WEIGHT_ENTRIES}, not {weights!r}")
        net = load_reference(source, weights, in_context_start, device, **overrides)
        # their --noise_scale: default 1.0, 2.0 for the 512-px models (s = size/256 from 256 up)
        scale = max(1.0, net.config.image_size / BASE_RESOLUTION)
        return TrainedModel(net, "x", scale, "none", None, f"{source} ({weights})")
    return _load_run(source, weights or "ema", device, overrides)


def _load_run(source, weights: str, device, overrides) -> TrainedModel:
    ckpt = load_checkpoint(source)
    cfg = ckpt["config"]
    config = JiTConfig.from_dict({**cfg["model"], **overrides})
    if weights == "model":
        state = ckpt["model"]
    elif weights == "ema" or weights.startswith("ema:"):
        decays = [float(d) for d in ckpt["ema"]["decays"]]
        if weights == "ema":
            chosen = cfg["sample"].get("ema_decay")
            decay = float(chosen) if chosen is not None else decays[0]
        else:
            decay = float(weights.split(":", 1)[1])
        if decay not in decays:
            raise ValueError(f"the run has EMAs {decays}; no EMA with decay {decay}")
        shadows = ckpt["ema"]["shadows"][decays.index(decay)]
        state = dict(zip(ckpt["ema"]["names"], shadows, strict=True))
        weights = f"ema:{decay}"
    else:
        raise ValueError(f"weights must be 'ema', 'ema:<decay>' or 'model', got {weights!r}")
    with torch.device("meta"):
        net = JiT(config)
    net = net.to_empty(device=device)
    net.load_state_dict(state, strict=True)
    objective = cfg["objective"]
    names = ckpt.get("class_names")
    return TrainedModel(
        net.eval(), objective["prediction"], float(objective["noise_scale"]),
        objective["preconditioner"], tuple(names) if names else None,
        f"{ckpt['path']} step {ckpt['step']} ({weights})",
    )  # fmt: skip


def export_safetensors(model: TrainedModel, path: str | os.PathLike) -> Path:
    """A .safetensors with the weights, the JiT config, the objective and class names."""
    return save_safetensors(
        model.net, path, objective=model.objective_metadata(), class_names=model.class_names
    )
