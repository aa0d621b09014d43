"""pixeljit: JiT ("Just image Transformers", Li & He 2025) in PyTorch."""

from pixeljit.checkpoints.authors import load_reference
from pixeljit.checkpoints.load import TrainedModel, load_trained
from pixeljit.checkpoints.safetensors_io import load_safetensors, save_safetensors
from pixeljit.diffusion.sampler import sample
from pixeljit.model import JiT, JiTConfig, count_parameters, create_model, model_config

__version__ = "0.1.0"

__all__ = [
    "JiT",
    "JiTConfig",
    "TrainedModel",
    "count_parameters",
    "create_model",
    "load_reference",
    "load_safetensors",
    "load_trained",
    "model_config",
    "sample",
    "save_safetensors",
]
