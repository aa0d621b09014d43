"""The JiT network and its typed config.

A plain ViT on large pixel patches that maps (z_t, t, y) to an image of the same shape; what the
output means (x, ε or v) is the objective's business, not the network's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pixeljit.model.layers import (
    Block,
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    rope_2d_tables,
    sincos_pos_embed_2d,
    swiglu_hidden,
)

INIT_STD = 0.02  # label table, time MLP and in-context embedding
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
            raise ValueError(f"2-D RoPE needs head dim divisible by 4, got {self.head_dim}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4, got {self.hidden_size}")
        if self.num_classes < 0:
            raise ValueError("num_classes must be ≥ 0 (0 = unconditional)")
        if self.in_context_len < 0:
            raise ValueError("in_context_len must be ≥ 0 (0 = no in-context tokens)")
        if self.in_context_len and not 0 <= self.in_context_start < self.depth:
            raise ValueError(
                f"in_context_start {self.in_context_start} must lie in [0, depth={self.depth})"
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
        """Integers where the architecture counts things, numbers where it scales them."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _INT_FIELDS or (f.name in _OPTIONAL_INT_FIELDS and value is not None):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{f.name} must be an integer, got {value!r}")
            elif f.name in _FLOAT_FIELDS:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{f.name} must be a number, got {value!r}")
            elif f.name in ("rope", "qk_norm") and not isinstance(value, bool):
                raise ValueError(f"{f.name} must be true or false, got {value!r}")
        if self.dropout_blocks is not None and (
            not isinstance(self.dropout_blocks, (tuple, list))
            or len(self.dropout_blocks) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in self.dropout_blocks)
        ):
            raise ValueError(f"dropout_blocks must be two integers, got {self.dropout_blocks!r}")

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


class JiT(nn.Module):
    """net(z, t, y): z (N, C, H, W), t (N,) in [0, 1], y (N,) int64 with `num_classes` = null.

    Returns (N, C, H, W). For unconditional models (`num_classes == 0`) y must be None. z has the
    weights' dtype (any float dtype under autocast).

    `checkpoint_blocks` (off; training's `run.activation_checkpointing` turns it on) keeps only
    each block's input while a forward pass records gradients and recomputes the block's
    activations during backward: activation memory falls from every block's intermediates to one
    (N, L + S², D) tensor per block, for about one more forward pass of compute. The values are
    the same bit for bit (dropout masks are replayed from the saved RNG state).

    `bf16_residual` (off; `run.bf16_residual`): under bf16 autocast the fp32 position embedding
    makes the residual stream fp32 (the authors' numerics); on, it is cast to the patch
    embedding's dtype, so the stream between blocks is bf16 (half the bytes every residual add
    and norm reads and writes). No effect without autocast.
    """

    def __init__(self, config: JiTConfig):
        super().__init__()
        if not isinstance(config, JiTConfig):
            raise ValueError(f"JiT takes a JiTConfig (JiTConfig.from_dict for a dict, or "
                             f"create_model('JiT-B/16')), got {type(config).__name__}")  # fmt: skip
        self.config = cfg = config
        self.checkpoint_blocks = False  # an execution choice, not architecture: not in config
        self.bf16_residual = False  # a numerics choice, not architecture: not in config
        dim, side = cfg.hidden_size, cfg.grid_size
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels, dim, cfg.bottleneck_dim)
        self.t_embedder = TimestepEmbedder(dim)
        self.y_embedder = LabelEmbedder(cfg.num_classes, dim) if cfg.num_classes > 0 else None
        # fixed, saved in the authors' checkpoints (requires_grad=False), hence a Parameter
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side, dim), requires_grad=False)
        if cfg.in_context_len:
            self.in_context_posemb = nn.Parameter(torch.zeros(1, cfg.in_context_len, dim))
        lo, hi = cfg.dropout_range
        self.blocks = nn.ModuleList(
            Block(
                dim,
                cfg.num_heads,
                cfg.mlp_ratio,
                cfg.mlp,
                cfg.norm,
                cfg.qk_norm,
                cfg.dropout if lo <= i < hi else 0.0,
                cfg.attn_dropout if lo <= i < hi else 0.0,
                cfg.attention == "fp32",
            )
            for i in range(cfg.depth)
        )
        self.final_layer = FinalLayer(dim, cfg.patch_size, cfg.in_channels, cfg.norm)
        if cfg.rope:  # constants built here, not in forward: nothing for a compiler to guard on
            cos, sin = self._rope_tables()
            self.register_buffer("rope_cos", cos, persistent=False)  # (L + S², head_dim)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.initialize_weights()

    # ------------------------------------------------------------------------------ init
    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Fresh-model init: Xavier-uniform linear maps (patch convs as linear), zero biases,
        N(0, 0.02) label table / time MLP / in-context embedding, zero adaLN and output layer."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                w = module.weight
                fan_out, fan_in = w.shape[0], math.prod(w.shape[1:])
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                nn.init.uniform_(w, -bound, bound)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.pos_embed.copy_(
            sincos_pos_embed_2d(self.config.hidden_size, self.config.grid_size)[None]
        )
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=INIT_STD)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=INIT_STD)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=INIT_STD)
        if self.config.in_context_len:
            nn.init.normal_(self.in_context_posemb, std=INIT_STD)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # ------------------------------------------------------------------- RoPE tables
    def _rope_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for the in-context tokens (identity rows) then the patch grid, computed on the
        CPU in float64 (the same values on every device) and placed on the default device."""
        cfg = self.config
        device = torch.get_default_device()
        if device.type == "meta":  # shapes only (`to_empty` fills them): no work, no memory
            shape = (cfg.in_context_len + cfg.grid_size**2, cfg.head_dim)
            return torch.empty(shape, device=device), torch.empty(shape, device=device)
        with torch.device("cpu"):
            cos, sin = rope_2d_tables(cfg.head_dim, cfg.grid_size, cfg.in_context_len)
        return cos.to(device), sin.to(device)

    def to_empty(self, *, device, recurse: bool = True):
        """`nn.Module.to_empty`, then the RoPE tables (not in the state dict) filled again."""
        super().to_empty(device=device, recurse=recurse)
        if self.config.rope:
            cos, sin = self._rope_tables()
            with torch.no_grad():
                self.rope_cos.copy_(cos)
                self.rope_sin.copy_(sin)
        return self

    def _rope(self, prefix: int):
        """(cos, sin) for `prefix` in-context tokens (0 or in_context_len) then the patch grid:
        views of the buffers, whose first in_context_len rows are the identity."""
        if not self.config.rope:
            return None
        skip = self.config.in_context_len - prefix
        return self.rope_cos[skip:], self.rope_sin[skip:]

    def _check_inputs(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> None:
        for name, value in (("z", z), ("t", t), ("y", y)):
            if not (value is None and name == "y") and not isinstance(value, torch.Tensor):
                raise ValueError(f"{name} must be a tensor, got {type(value).__name__}")
        cfg = self.config
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if z.ndim != 4 or tuple(z.shape[1:]) != expected:
            raise ValueError(
                f"z must have shape (N, {', '.join(map(str, expected))}), got {tuple(z.shape)}"
            )
        if t.shape != (z.shape[0],):
            raise ValueError(f"t must have shape ({z.shape[0]},), got {tuple(t.shape)}")
        if cfg.num_classes > 0 and (y is None or y.shape != (z.shape[0],)):
            got = None if y is None else tuple(y.shape)
            raise ValueError(
                f"y must have shape ({z.shape[0]},) for a conditional model, got {got}"
            )
        if cfg.num_classes == 0 and y is not None:  # it would be ignored
            raise ValueError("y must be None for an unconditional model (num_classes=0), got a "
                             f"tensor of shape {tuple(y.shape)}: pass y=None")  # fmt: skip
        if y is not None and y.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"y must hold integer class indices (int64), got {y.dtype}: pass "
                             "y.long()")  # fmt: skip
        # dtypes are known while tracing: no sync, no graph break
        weights = self.pos_embed.dtype
        if z.dtype != weights and not torch.is_autocast_enabled(z.device.type):
            raise ValueError(f"z is {z.dtype} but the weights are {weights}: pass z.to({weights})"
                             f" (e.g. z.float()), or run under torch.autocast")  # fmt: skip

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens (N, S*S, p*p*C) with per-token layout (p_row, p_col, C) -> (N, C, S*p, S*p)
        n, p, c, s = (
            tokens.shape[0],
            self.config.patch_size,
            self.config.in_channels,
            self.config.grid_size,
        )
        x = tokens.reshape(n, s, s, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(n, c, s * p, s * p)

    def _embed_labels(self, y: torch.Tensor) -> torch.Tensor:
        """y (N,) → (N, D). A label outside the table is named (the embedding's own IndexError
        says only "index out of range in self"); caught, not checked in advance: reading the
        labels' range would cost a device sync each step (on a GPU the embedding's device-side
        assert stops it)."""
        if torch.compiler.is_compiling():
            return self.y_embedder(y)
        try:
            return self.y_embedder(y)
        except IndexError:
            classes = self.config.num_classes
            raise ValueError(
                f"y holds a label outside [0, {classes}] (labels from {int(y.min())} to "
                f"{int(y.max())}): class indices are 0…{classes - 1} and {classes} is the null "
                "label (no class)"
            ) from None

    # --------------------------------------------------------------------------- forward
    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None):
        self._check_inputs(z, t, y)
        cfg = self.config
        x = self.x_embedder(z)  # (N, S², D), bf16 under autocast
        x = x + (self.pos_embed.to(x.dtype) if self.bf16_residual else self.pos_embed)
        c = self.t_embedder(t)  # (N, D)
        y_emb = None
        if self.y_embedder is not None:
            y_emb = self._embed_labels(y)
            c = c + y_emb
        rope = self._rope(0)
        for i, block in enumerate(self.blocks):
            if cfg.in_context_len and i == cfg.in_context_start:
                ctx = self.in_context_posemb.expand(x.shape[0], -1, -1)
                if y_emb is not None:
                    ctx = ctx + y_emb.unsqueeze(1)
                x = torch.cat([ctx.to(x.dtype), x], dim=1)  # (N, L + S², D)
                rope = self._rope(cfg.in_context_len)
            if self.checkpoint_blocks and torch.is_grad_enabled():
                x = checkpoint(block, x, c, rope, use_reentrant=False)
            else:
                x = block(x, c, rope)
        if cfg.in_context_len:
            x = x[:, cfg.in_context_len :]
        return self.unpatchify(self.final_layer(x, c))
