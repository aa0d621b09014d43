"""Building blocks of the JiT network: norms, embeddings, 2-D RoPE, attention, MLPs.

Numerics follow the authors' reference code exactly (see ../shared/reference/README.md), so a
model loaded from their checkpoints reproduces their outputs. Module and parameter names match
their state-dict layout (`x_embedder.proj1`, `attn.qkv`, `mlp.w12`, ...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-6  # RMSNorm / LayerNorm epsilon, blocks and qk-norm alike
ROPE_THETA = 10000.0
POS_EMBED_THETA = 10000.0
TIME_FREQ_DIM = 256  # sinusoidal features of t (128 cosines then 128 sines)
TIME_MAX_PERIOD = 10000.0


class RMSNorm(nn.Module):
    """u · rsqrt(mean(u²) + eps) · weight, computed in float32 and cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        u32 = u.float()
        out = u32 * torch.rsqrt(u32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight.float()).to(u.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with a weight only (same state-dict shape as RMSNorm), for the norm ablation."""

    def __init__(self, dim: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(u.float(), (u.shape[-1],), eps=self.eps)
        return (out * self.weight.float()).to(u.dtype)


class NoDropout(nn.Identity):
    """Dropout at rate 0 (`p` = 0 like nn.Dropout's) that never reads `training`, so a compiled
    model needs no second graph for eval mode (dynamo guards on what forward reads)."""

    p = 0.0


def maybe_dropout(p: float) -> nn.Module:
    """nn.Dropout(p) for p > 0, else `NoDropout`."""
    return nn.Dropout(p) if p > 0 else NoDropout()


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "rms":
        return RMSNorm(dim)
    if kind == "layer":
        return LayerNorm(dim)
    raise ValueError(f"unknown norm {kind!r}: use 'rms' or 'layer'")


def modulate(u: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: u (N, L, D), shift/scale (N, D)."""
    return u * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# ---------------------------------------------------------------------------------- embeddings


class PatchEmbed(nn.Module):
    """Pixels → tokens. With a bottleneck: p×p conv C → b (no bias), then 1×1 conv b → D (bias),
    i.e. a rank-b linear map of the flattened channel-major patch. Without: one p×p conv C → D."""

    def __init__(self, patch: int, in_channels: int, dim: int, bottleneck: int | None):
        super().__init__()
        self.bottleneck = bottleneck
        if bottleneck is None:
            self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch, bias=True)
        else:
            self.proj1 = nn.Conv2d(in_channels, bottleneck, patch, stride=patch, bias=False)
            self.proj2 = nn.Conv2d(bottleneck, dim, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (N, C, H, W) -> (N, S*S, D), tokens row-major
        if self.bottleneck is None:
            h = self.proj(x)
        else:
            h = self.proj2(self.proj1(x))
        return h.flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """t ∈ [0, 1] as given → [cos(t·f), sin(t·f)] (256) → Linear → SiLU → Linear (D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    @staticmethod
    def features(t: torch.Tensor) -> torch.Tensor:
        half = TIME_FREQ_DIM // 2
        k = torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(-math.log(TIME_MAX_PERIOD) * k / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = self.features(t).to(self.mlp[0].weight.dtype)
        return self.mlp(feats)


class LabelEmbedder(nn.Module):
    """A (K + 1) × D table; row K is the null (unconditional) label used for guidance."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


def sincos_pos_embed_2d(dim: int, side: int) -> torch.Tensor:
    """The MAE fixed 2-D table, (side², dim): first dim/2 channels encode the column, the rest
    the row; each half is [sin(pos·ω), cos(pos·ω)] with ω_k = 10000^(−k/(dim/4))."""
    if dim % 4:
        raise ValueError(f"hidden size {dim} must be divisible by 4 for the 2-D sin-cos table")
    quarter = dim // 4
    omega = 1.0 / POS_EMBED_THETA ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(side, dtype=torch.float64)
    rows = pos.repeat_interleave(side)  # token index = row·side + col
    cols = pos.repeat(side)

    def encode(p: torch.Tensor) -> torch.Tensor:
        a = p[:, None] * omega[None]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


# ----------------------------------------------------------------------------------------- RoPE


def rope_2d_tables(head_dim: int, side: int, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (prefix + side², head_dim) for 2-D RoPE with interleaved channel pairs.

    First half of the channels rotate with the row index, second half with the column index;
    frequencies ν_m = θ^(−2m/f), f = head_dim/2, each repeated for an adjacent pair. The first
    `prefix` tokens (in-context class tokens) get angle 0, i.e. the identity.
    """
    if head_dim % 4:
        raise ValueError(f"head dim {head_dim} must be divisible by 4 for 2-D RoPE")
    f = head_dim // 2
    nu = ROPE_THETA ** (-torch.arange(0, f, 2, dtype=torch.float64) / f)  # (f/2,)
    pos = torch.arange(side, dtype=torch.float64)
    rows = pos.repeat_interleave(side)
    cols = pos.repeat(side)
    ang_r = (rows[:, None] * nu[None]).repeat_interleave(2, dim=1)  # (S², f)
    ang_c = (cols[:, None] * nu[None]).repeat_interleave(2, dim=1)
    angles = torch.cat([ang_r, ang_c], dim=1)  # (S², head_dim)
    angles = torch.cat([angles.new_zeros(prefix, head_dim), angles], dim=0)
    return angles.cos().float(), angles.sin().float()


def apply_rope(u: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """u (N, H, L, d); pairs (2m, 2m+1) rotate: (a, b) → (a·cos − b·sin, b·cos + a·sin).

    The tables (L, d) hold one angle per pair, repeated on both channels (`rope_2d_tables`).
    In float32 the rotation is one complex multiply, (a + ib)·(cos + i·sin): the same products
    and sums, bit for bit forward and backward, in two passes over u where the pair formula takes
    about six forward and ten backward (3–10× faster on a CPU). Other dtypes (bf16 under
    autocast, which has no complex type) and compiled graphs (where inductor fuses the pair
    formula) take the pair formula.
    """
    if u.dtype == torch.float32 and not torch.compiler.is_compiling():
        rotation = torch.complex(cos[..., 0::2], sin[..., 0::2])  # (L, d/2)
        pairs = torch.view_as_complex(u.unflatten(-1, (-1, 2)))  # (N, H, L, d/2)
        return torch.view_as_real(pairs * rotation).flatten(-2)
    return rope_pair_formula(u, cos, sin)


def rope_pair_formula(u: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rope` written out on the channel pairs, in u's dtype (the tables cast to it)."""
    a, b = u[..., 0::2], u[..., 1::2]
    rotated = torch.stack([-b, a], dim=-1).flatten(-2)
    return u * cos.to(u.dtype) + rotated * sin.to(u.dtype)


# ------------------------------------------------------------------------------------ attention


def attention_fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0):
    """The authors' numerics: QKᵀ (times 1/√d, as they scale) and the softmax in float32
    whatever the autocast dtype; the product with V under the ambient autocast, as theirs
    (bf16 in a bf16 run, float32 without autocast)."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        scores = q.float() @ k.float().transpose(-2, -1) * (1.0 / math.sqrt(q.shape[-1]))
        probs = scores.softmax(dim=-1)
        if dropout > 0:
            probs = F.dropout(probs, p=dropout)
    return probs.to(v.dtype) @ v


class Attention(nn.Module):
    """Multi-head self-attention with qk-norm (per-head RMSNorm) then 2-D RoPE."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_norm: bool,
        attn_dropout: float,
        proj_dropout: float,
        fp32: bool,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.fp32 = fp32
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=True)
        self.proj_drop = maybe_dropout(proj_dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None):
        n, length, dim = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (N, H, L, d)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        drop = self.attn_dropout if self.attn_dropout > 0 and self.training else 0.0
        if self.fp32:
            out = attention_fp32(q, k, v, drop)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        out = out.transpose(1, 2).reshape(n, length, dim)
        return self.proj_drop(self.proj(out))


class SwiGLU(nn.Module):
    """w12: D → 2h split [gate | value]; SiLU(gate)·value; dropout; w3: h → D."""

    def __init__(self, dim: int, hidden: int, p_drop: float):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, bias=True)
        self.drop = maybe_dropout(p_drop)
        self.w3 = nn.Linear(hidden, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(self.drop(F.silu(gate) * value))


class GeluMLP(nn.Module):
    """The ViT/DiT MLP (the SwiGLU ablation): fc1 D → h, GELU (tanh), dropout, fc2 h → D."""

    def __init__(self, dim: int, hidden: int, p_drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=True)
        self.drop = maybe_dropout(p_drop)
        self.fc2 = nn.Linear(hidden, dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x), approximate="tanh")))


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """The authors' SwiGLU width: ⌊⌊ratio·D⌋·2/3⌋ (2048 for B, 2730 L, 3413 H, 4437 G)."""
    return int(int(dim * mlp_ratio) * 2 / 3)


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-Zero conditioning on c (N, D)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        mlp: str,
        norm: str,
        qk_norm: bool,
        dropout: float,
        attn_dropout: float,
        attn_fp32: bool,
    ):
        super().__init__()
        self.norm1 = make_norm(norm, dim)
        self.attn = Attention(dim, num_heads, qk_norm, attn_dropout, dropout, attn_fp32)
        self.norm2 = make_norm(norm, dim)
        if mlp == "swiglu":
            self.mlp = SwiGLU(dim, swiglu_hidden(dim, mlp_ratio), dropout)
        elif mlp == "gelu":
            self.mlp = GeluMLP(dim, int(dim * mlp_ratio), dropout)
        else:
            raise ValueError(f"unknown mlp {mlp!r}: use 'swiglu' or 'gelu'")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1), rope)
        x = x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class FinalLayer(nn.Module):
    """Norm → adaLN (shift, scale) → Linear D → p·p·C (token layout (p_row, p_col, channel))."""

    def __init__(self, dim: int, patch: int, out_channels: int, norm: str):
        super().__init__()
        self.norm_final = make_norm(norm, dim)
        self.linear = nn.Linear(dim, patch * patch * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))
