"""pixeljit's portable weights: one `.safetensors` file with the config, objective and class names
in its metadata, written atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from pixeljit.checkpoints.weights import build_loaded
from pixeljit.files.atomic import atomic_write
from pixeljit.model import JiT, JiTConfig

SAFETENSORS_CONFIG_KEY = "pixeljit_config"
SAFETENSORS_FORMAT = "pixeljit.jit/1"


def save_safetensors(
    net: JiT,
    path: str | os.PathLike,
    objective: dict | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Weights + JSON config (+ the objective sampling must match, and class names) in one
    .safetensors file, written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    meta = {SAFETENSORS_CONFIG_KEY: json.dumps(net.config.to_dict()), "format": SAFETENSORS_FORMAT}
    if objective is not None:
        meta["objective"] = json.dumps(objective)
    if class_names is not None:
        meta["class_names"] = json.dumps(list(class_names))
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_safetensors_with_meta(path: str | os.PathLike, device=None, **overrides):
    """(JiT in eval mode, {'objective': {...}, 'class_names': [...]} where present)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file {path} does not exist")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        if SAFETENSORS_CONFIG_KEY not in meta:
            raise ValueError(
                f"{path} has no '{SAFETENSORS_CONFIG_KEY}' metadata: not exported by pixeljit "
                "(export with pixeljit.save_safetensors or `pixeljit convert`)"
            )
        state = {k: f.get_tensor(k) for k in f.keys()}
    config = JiTConfig.from_dict({**json.loads(meta[SAFETENSORS_CONFIG_KEY]), **overrides})
    net = build_loaded(config, state, device)
    extra = {k: json.loads(meta[k]) for k in ("objective", "class_names") if k in meta}
    return net, extra


def load_safetensors(path: str | os.PathLike, device=None, **overrides) -> JiT:
    """Load a file written by `save_safetensors` back into a JiT in eval mode."""
    return load_safetensors_with_meta(path, device, **overrides)[0]
