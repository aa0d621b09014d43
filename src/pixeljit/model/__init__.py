"""The JiT network: layers (`layers`), its typed config (`config`), the network (`jit`), the
sizes (`registry`).

Knows nothing of noise, t-sampling, losses, solvers or files.
"""

from pixeljit.model.jit import ATTENTION_MODES, JiT, JiTConfig
from pixeljit.model.registry import (
    MODEL_SIZES,
    PATCH_SIZES,
    TOKENS_PER_SIDE,
    count_parameters,
    create_model,
    forward_flops,
    model_config,
    model_names,
)

__all__ = [
    "ATTENTION_MODES",
    "MODEL_SIZES",
    "PATCH_SIZES",
    "TOKENS_PER_SIDE",
    "JiT",
    "JiTConfig",
    "count_parameters",
    "create_model",
    "forward_flops",
    "model_config",
    "model_names",
]
