"""One entry point for every checkpoint kind a user may hold, for sampling and evaluation.

`load_trained(source)` accepts a pixeljit training run (folder or `.pt`), a pixeljit
`.safetensors` export, or an authors' `checkpoint-last.pth` (or its folder), and returns the
network in eval mode *with* what sampling must match from training: the prediction target, the
noise scale and the pre-conditioner (and class names when known).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pixeljit.checkpoints.authors import CHECKPOINT_FILENAME, WEIGHT_ENTRIES, load_reference
from pixeljit.checkpoints.run import LATEST, load_checkpoint
from pixeljit.checkpoints.safetensors_io import load_safetensors_with_meta, save_safetensors
from pixeljit.checkpoints.weights import build_loaded
from pixeljit.diffusion.objective import BASE_RESOLUTION, PRECONDITIONERS, PREDICTIONS
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


def _objective(source, prediction, noise_scale, preconditioner) -> tuple[str, float, str]:
    """The objective a checkpoint declares, checked (a file may say anything)."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"{source}: prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(
            f"{source}: preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}"
        )
    try:
        scale = float(noise_scale)
    except (TypeError, ValueError):
        scale = math.nan
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{source}: noise_scale must be a finite number > 0, got {noise_scale!r}")
    return prediction, scale, preconditioner


def _class_names(source, names) -> tuple[str, ...] | None:
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{source}: class_names must be a list of strings")
    return tuple(names) if names else None


def load_trained(
    source: str | os.PathLike,
    weights: str | None = None,
    device: torch.device | str = "cpu",
    in_context_start: int | None = None,
    **overrides,
) -> TrainedModel:
    """Load any checkpoint kind (see the module doc). `weights`: for pixeljit runs 'ema'
    (default: the run's sampling EMA), 'ema:<decay>' or 'model'; for the authors' files
    'model_ema1' (default), 'model_ema2' or 'model'. Overrides go to the JiT config.

    Every kind goes through `checkpoints.weights`: sizes bounded by the file before anything is
    built, dtypes and shapes checked on `meta`, NaN / Inf refused."""
    kind = checkpoint_kind(source)
    if kind == "safetensors":
        net, meta = load_safetensors_with_meta(source, device=device, **overrides)
        obj = meta.get("objective", {})
        if not isinstance(obj, dict):
            raise ValueError(f"{source}: metadata 'objective' must be a JSON object")
        objective = _objective(
            source, obj.get("prediction", "x"), obj.get("noise_scale", 1.0),
            obj.get("preconditioner", "none"),
        )  # fmt: skip
        names = _class_names(source, meta.get("class_names"))
        return TrainedModel(net, *objective, names, str(source))
    if kind == "authors":
        weights = weights or "model_ema1"
        if weights not in WEIGHT_ENTRIES:
            raise ValueError(f"an authors' checkpoint holds {WEIGHT_ENTRIES}, not {weights!r}")
        net = load_reference(source, weights, in_context_start, device, **overrides)
        # their --noise_scale: default 1.0, 2.0 for the 512-px models (s = size/256 from 256 up)
        scale = max(1.0, net.config.image_size / BASE_RESOLUTION)
        return TrainedModel(net, "x", scale, "none", None, f"{source} ({weights})")
    return _load_run(source, weights or "ema", device, overrides)


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
                raise ValueError(
                    f"weights (--weights) {weights!r}: write ema:<decay>, e.g. ema:{decays[0]}"
                ) from None
        if decay not in decays:
            raise ValueError(f"{file}: the run has EMAs {decays}; no EMA with decay {decay}")
        shadows = ckpt["ema"]["shadows"][decays.index(decay)]
        return dict(zip(ckpt["ema"]["names"], shadows, strict=True)), f"ema:{decay}"
    raise ValueError(
        f"weights (--weights) must be 'ema', 'ema:<decay>' or 'model', got {weights!r}"
    )


def run_ema_decays(source: str | os.PathLike) -> list[float]:
    """The EMA decays a pixeljit training run keeps (to compare them all)."""
    ckpt = load_checkpoint(source, flag=None)  # sample / eval / convert have no --resume
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
        fields = {**cfg["model"], **overrides}
        state, weights = _run_state(ckpt, file, weights)
        obj = cfg["objective"]
        objective = _objective(file, obj["prediction"], obj["noise_scale"], obj["preconditioner"])
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
    names = _class_names(file, ckpt.get("class_names"))
    return TrainedModel(
        net, *objective, names, f"{ckpt['path']} step {ckpt.get('step', '?')} ({weights})"
    )


def export_safetensors(model: TrainedModel, path: str | os.PathLike) -> Path:
    """A .safetensors with the weights, the JiT config, the objective and class names."""
    return save_safetensors(
        model.net, path, objective=model.objective_metadata(), class_names=model.class_names
    )
