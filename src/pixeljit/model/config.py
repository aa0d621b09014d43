"""The JiT network's typed config: every architectural choice, checked before anything is built.

A config is made, compared and written (JSON, YAML) without building a network.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from pixeljit.model.layers import swiglu_hidden
from pixeljit.values import is_integer, is_real

ATTENTION_MODES = ("sdpa", "fp32")
MLP_KINDS = ("swiglu", "gelu")
NORM_KINDS = ("rms", "layer")
_INT_FIELDS = ("image_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads",
               "num_classes", "in_context_len", "in_context_start")  # fmt: skip
_POSITIVE_FIELDS = ("image_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads")
_OPTIONAL_INT_FIELDS = ("bottleneck_dim",)
# Upper bounds, checked before anything is allocated (JiT-G is 1664 wide and 40 deep; a
# hostile or mistyped config must not make the process allocate terabytes).
MAX_FIELDS = {"image_size": 4096, "patch_size": 512, "in_channels": 64, "hidden_size": 8192,
              "depth": 256, "num_heads": 256, "num_classes": 100_000, "in_context_len": 4096,
              "bottleneck_dim": 8192}  # fmt: skip
MAX_MLP_RATIO = 64.0  # the paper's is 4
# ⌊ratio·D⌋ giving one hidden unit: 1 for GELU, 2 for SwiGLU (its width is ⌊⌊ratio·D⌋·2/3⌋)
MIN_MLP_UNITS = {"gelu": 1, "swiglu": 2}
_FLOAT_FIELDS = ("mlp_ratio", "dropout", "attn_dropout")


@dataclass(frozen=True)
class JiTConfig:
    """Every architectural choice of JiT; defaults are JiT-B/16 at 256 px with 1000 classes.

    Ablation switches: `bottleneck_dim=None` (single linear patch embedding), `in_context_len=0`
    (no in-context tokens), `rope`, `qk_norm`, `mlp` ('swiglu' | 'gelu'), `norm` ('rms' |
    'layer'), `dropout` (after attention and the MLP) and `attn_dropout` (on the attention
    weights), both only in the blocks `dropout_range`, `num_classes=0` (unconditional: no label
    embedding), `in_channels=1` (grey). `attention='fp32'` computes QKᵀ and the softmax in
    float32, the product with V under the ambient autocast (the authors' numerics), instead of
    `scaled_dot_product_attention`.
    """

    image_size: int = 256
    patch_size: int = 16
    in_channels: int = 3
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    bottleneck_dim: int | None = 128
    in_context_len: int = 32
    in_context_start: int = 4
    rope: bool = True
    qk_norm: bool = True
    mlp: str = "swiglu"
    norm: str = "rms"
    dropout: float = 0.0
    dropout_blocks: tuple[int, int] | None = None
    attn_dropout: float = 0.0
    attention: str = "sdpa"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # a list kept in a tuple field would make it unhashable
            if "tuple" in str(f.type) and isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        self._check_types()
        for name in _POSITIVE_FIELDS:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name, high in MAX_FIELDS.items():
            value = getattr(self, name)
            if value is not None and value > high:
                raise ValueError(f"{name} must be ≤ {high}, got {value}")
        if not (math.isfinite(self.mlp_ratio) and 0 < self.mlp_ratio <= MAX_MLP_RATIO):
            raise ValueError(f"mlp_ratio must lie in (0, {MAX_MLP_RATIO:g}], got {self.mlp_ratio}")
        if self.mlp not in MLP_KINDS:
            raise ValueError(f"mlp must be one of {MLP_KINDS}, got {self.mlp!r}")
        if self.norm not in NORM_KINDS:
            raise ValueError(f"norm must be one of {NORM_KINDS}, got {self.norm!r}")
        if self.mlp_width < 1:  # nn.Linear builds a zero-width layer without a word
            units, dim = MIN_MLP_UNITS[self.mlp], self.hidden_size
            raise ValueError(
                f"mlp_ratio {self.mlp_ratio:g} gives the {self.mlp} MLP no hidden unit at "
                f"hidden_size {dim}: mlp_ratio × hidden_size must be ≥ {units}, i.e. "
                f"mlp_ratio ≥ {units}/{dim} (the paper's is 4)"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if self.rope and self.head_dim % 4:
            raise ValueError(
                f"hidden_size {self.hidden_size} / num_heads {self.num_heads} gives a head dim of "
                f"{self.head_dim}, but 2-D RoPE needs one divisible by 4: change hidden_size or "
                "num_heads (or set rope=False)"
            )
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4, got {self.hidden_size}")
        if self.num_classes < 0:
            raise ValueError("num_classes must be ≥ 0 (0 = unconditional)")
        if self.in_context_len < 0:
            raise ValueError("in_context_len must be ≥ 0 (0 = no in-context tokens)")
        if self.in_context_len and not 0 <= self.in_context_start < self.depth:
            raise ValueError(
                f"in_context_start {self.in_context_start} must lie in [0, depth={self.depth}): "
                f"pass in_context_start=N with N < {self.depth}, or in_context_len=0 (no "
                "in-context tokens)"
            )
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:  # NaN fails too
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.dropout_blocks is not None:
            start, stop = self.dropout_blocks
            if not 0 <= start <= stop <= self.depth:
                raise ValueError(
                    f"dropout_blocks ({start}, {stop}) must satisfy 0 ≤ start ≤ stop ≤ depth "
                    f"({self.depth})"
                )
        if self.bottleneck_dim is not None and self.bottleneck_dim < 1:
            raise ValueError("bottleneck_dim must be ≥ 1 or None")

    def _check_types(self) -> None:
        """Integers where the architecture counts things, numbers where it scales them; NumPy
        scalars are taken and stored as Python ones (so the config stays JSON-writable)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _INT_FIELDS or (f.name in _OPTIONAL_INT_FIELDS and value is not None):
                if not is_integer(value):
                    raise ValueError(f"{f.name} must be an integer, got {value!r}")
                object.__setattr__(self, f.name, int(value))
            elif f.name in _FLOAT_FIELDS:
                if not is_real(value):
                    raise ValueError(f"{f.name} must be a number, got {value!r}")
                if not isinstance(value, (int, float)):  # a NumPy number; Python's kept as given
                    object.__setattr__(self, f.name, float(value))
            elif f.name in ("rope", "qk_norm"):
                if not isinstance(value, (bool, np.bool_)):
                    raise ValueError(f"{f.name} must be true or false, got {value!r}")
                object.__setattr__(self, f.name, bool(value))
        if self.dropout_blocks is not None and (
            not isinstance(self.dropout_blocks, (tuple, list))
            or len(self.dropout_blocks) != 2
            or not all(is_integer(v) for v in self.dropout_blocks)
        ):
            raise ValueError(f"dropout_blocks must be two integers, got {self.dropout_blocks!r}")
        if self.dropout_blocks is not None:
            object.__setattr__(self, "dropout_blocks", tuple(map(int, self.dropout_blocks)))

    @property
    def mlp_width(self) -> int:
        """The hidden width of each block's MLP (as `layers.Block` builds it)."""
        if self.mlp == "swiglu":
            return swiglu_hidden(self.hidden_size, self.mlp_ratio)
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def null_label(self) -> int:
        return self.num_classes

    @property
    def dropout_range(self) -> tuple[int, int]:
        """Blocks [start, stop) with dropout: `dropout_blocks`, else the authors' middle half
        depth//4 ≤ i < depth//4·3 (3·depth//4 at the paper's depths; empty below depth 4)."""
        if self.dropout_blocks is not None:
            return tuple(self.dropout_blocks)
        return self.depth // 4, self.depth // 4 * 3

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> JiTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown JiT config fields {sorted(unknown)}")
        data = dict(data)
        if data.get("dropout_blocks") is not None:
            data["dropout_blocks"] = tuple(data["dropout_blocks"])
        return cls(**data)
