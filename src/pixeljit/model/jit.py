"""The JiT network (its typed config: `model.config`).

A plain ViT on large pixel patches that maps (z_t, t, y) to an image of the same shape; what the
output means (x, ε or v) is the objective's business, not the network's.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pixeljit.model.config import (  # noqa: F401  (importable from here, as before)
    ATTENTION_MODES,
    MAX_FIELDS,
    MAX_MLP_RATIO,
    JiTConfig,
)
from pixeljit.model.layers import (
    Block,
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    rope_2d_tables,
    sincos_pos_embed_2d,
)

INIT_STD = 0.02  # label table, time MLP and in-context embedding


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
        # The label embedding's own dtypes only, so uint8 is refused though sample() takes it:
        # sample() converts once per call, forward would every step (a hidden copy), and
        # guidance's null label (num_classes, e.g. 1000) does not fit in a narrower dtype.
        if y is not None and y.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"y must hold integer class indices as int64 or int32, got {y.dtype}: "
                             "pass y.long() (sample() converts its labels once; the network "
                             "takes the label embedding's dtypes)")  # fmt: skip
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
        """(N, C, H, W) from z, t, y (see the class). Types, shapes and dtypes are checked, but
        not t's values: reading them would cost a device sync every step. The callers check
        them: `flow_matching_loss_at` refuses t outside [0, 1], `sample()` takes t from a
        checked time grid; a direct caller must pass t in [0, 1] itself."""
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
