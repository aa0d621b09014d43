"""pixeljit: JiT ("Just image Transformers", Li & He 2025) in PyTorch.

The names below are imported when first used (PEP 562), so `import pixeljit.cli` (the
`pixeljit` command, `pixeljit --help`) does not wait for torch."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "JiT": "pixeljit.model",
    "JiTConfig": "pixeljit.model",
    "ObjectiveConfig": "pixeljit.diffusion.objective",
    "SamplerConfig": "pixeljit.diffusion.sampler",
    "TrainedModel": "pixeljit.checkpoints.load",
    "apply_overrides": "pixeljit.training.config_io",
    "count_parameters": "pixeljit.model",
    "create_model": "pixeljit.model",
    "flow_matching_loss": "pixeljit.diffusion.objective",
    "get_preset": "pixeljit.training.presets",
    "load_reference": "pixeljit.checkpoints.authors",
    "load_safetensors": "pixeljit.checkpoints.safetensors_io",
    "load_trained": "pixeljit.checkpoints.load",
    "model_config": "pixeljit.model",
    "sample": "pixeljit.diffusion.sampler",
    "save_safetensors": "pixeljit.checkpoints.safetensors_io",
    "train": "pixeljit.training.loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pixeljit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
