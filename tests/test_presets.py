"""The paper's presets and sizes against independent numbers, never the code that built them.

Every expected value here is a literal copied from ../shared/reference/paper_facts.md (Tab. 9,
§5b–5d, the authors' code) or from the README (its parameter table and the demo's description);
the test reads the README table back to make sure the two stay the same.
"""

from __future__ import annotations

import re

import pytest
import torch

import pixeljit
from conftest import REPO_ROOT
from pixeljit.cli.demo import demo_config
from pixeljit.training.presets import get_preset, presets

# Tab. 9: depth, hidden size, heads, bottleneck, dropout, in-context start block; SwiGLU hidden
# int(4·D·2/3) as listed in paper_facts §5e; dropout on blocks depth/4 ≤ i < 3·depth/4 (H, G)
TABLE_9 = {
    "b": dict(depth=12, hidden=768, heads=12, bottleneck=128, dropout=0.0, start=4, mlp=2048,
              dropped=[]),
    "l": dict(depth=24, hidden=1024, heads=16, bottleneck=128, dropout=0.0, start=8, mlp=2730,
              dropped=[]),
    "h": dict(depth=32, hidden=1280, heads=16, bottleneck=256, dropout=0.2, start=10, mlp=3413,
              dropped=list(range(8, 24))),
    "g": dict(depth=40, hidden=1664, heads=16, bottleneck=256, dropout=0.2, start=10, mlp=4437,
              dropped=list(range(10, 30))),
}  # fmt: skip
IN_CONTEXT_TOKENS = 32
# patch → image size (always 16 × 16 tokens) and noise scale s = image_size / 256 (§5b)
IMAGE_SIZE = {16: 256, 32: 512, 64: 1024}
NOISE_SCALE = {16: 1.0, 32: 2.0, 64: 4.0}
# CFG scales of the authors' README for their checkpoints, G/16 from the paper (§5c)
AUTHORS_CFG = {
    ("b", 16): 3.0, ("b", 32): 3.0, ("l", 16): 2.4, ("l", 32): 2.5,
    ("h", 16): 2.2, ("h", 32): 2.3, ("g", 16): 2.2,
}  # fmt: skip

# the README's parameter table (trainable parameters)
README_PARAMS = {
    "JiT-B/16": 131_123_712, "JiT-B/32": 133_190_400, "JiT-B/64": 141_457_152,
    "JiT-L/16": 458_877_664, "JiT-L/32": 461_534_176, "JiT-L/64": 472_160_224,
    "JiT-H/16": 952_514_368, "JiT-H/32": 956_055_616, "JiT-H/64": 970_220_608,
    "JiT-G/16": 2_007_130_000, "JiT-G/32": 2_011_555_984, "JiT-G/64": 2_029_259_920,
}  # fmt: skip
# the authors' code's exact counts (paper_facts §1a), and the paper's rounded ones (Tab. 5/7/8)
AUTHORS_PARAMS = {
    "JiT-B/16": 131_123_712, "JiT-B/32": 133_190_400, "JiT-L/16": 458_877_664,
    "JiT-L/32": 461_534_176, "JiT-H/16": 952_514_368, "JiT-H/32": 956_055_616,
}  # fmt: skip
PAPER_MILLIONS = {"JiT-B/64": 141, "JiT-G/16": 2000, "JiT-G/32": 2000}

PAPER_PRESETS = [f"jit-{s}-{p}" for s in TABLE_9 for p in IMAGE_SIZE]
# README, "Presets": "CPU-sized ones `fmnist-cpu`, `fmnist-small`, `fmnist-tiny`, `emoji-cpu`"
CPU_PRESETS = ["fmnist-cpu", "fmnist-small", "fmnist-tiny", "emoji-cpu"]
CPU_SIZED_MAX_PARAMS = 5_000_000  # a few minutes per thousand steps on a laptop CPU


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_preset_follows_table_9_and_the_recipe(name):
    size, patch = name.split("-")[1], int(name.split("-")[2])
    want = TABLE_9[size]
    cfg = get_preset(name)
    with torch.device("meta"):  # JiT-G/64 needs no memory
        net = pixeljit.JiT(cfg.model)
    # the network as built, read off its modules
    assert len(net.blocks) == want["depth"]
    assert net.pos_embed.shape == (1, 256, want["hidden"])  # 16 × 16 tokens
    assert net.blocks[0].attn.qkv.weight.shape == (3 * want["hidden"], want["hidden"])
    assert net.blocks[0].attn.q_norm.weight.shape == (want["hidden"] // want["heads"],)
    assert net.blocks[0].mlp.w12.weight.shape == (2 * want["mlp"], want["hidden"])
    assert net.x_embedder.proj1.weight.shape == (want["bottleneck"], 3, patch, patch)
    assert net.in_context_posemb.shape == (1, IN_CONTEXT_TOKENS, want["hidden"])
    assert net.y_embedder.embedding_table.weight.shape == (1001, want["hidden"])  # + null class
    assert net.final_layer.linear.weight.shape == (patch * patch * 3, want["hidden"])
    assert cfg.model.in_context_start == want["start"]
    assert cfg.model.image_size == IMAGE_SIZE[patch]
    dropped = [i for i, b in enumerate(net.blocks) if b.mlp.drop.p > 0]
    assert dropped == want["dropped"]
    assert all(net.blocks[i].attn.proj_drop.p == want["dropout"] for i in dropped)
    # objective (§5a, 5b): x-prediction, v-loss, logit-normal(−0.8, 0.8), clamp 0.05, drop 0.1
    obj = cfg.objective
    assert (obj.prediction, obj.loss, obj.t_sampler) == ("x", "v", "logit_normal")
    assert (obj.p_mean, obj.p_std, obj.t_eps, obj.label_drop) == (-0.8, 0.8, 0.05, 0.1)
    assert obj.noise_scale == NOISE_SCALE[patch]
    # optimisation (§5d): AdamW (0.9, 0.95), no decay, lr 2e-4 at batch 1024, 5 warm-up epochs
    opt = cfg.optim
    assert (opt.global_batch, opt.betas, opt.weight_decay) == (1024, (0.9, 0.95), 0.0)
    assert opt.learning_rate == pytest.approx(2e-4, rel=1e-12)
    # length (§1b, 1c): 600 epochs; G early-stopped at about 320; /64 (B only) 200 (Tab. 5)
    epochs = 200.0 if patch == 64 else 320.0 if size == "g" else 600.0
    assert (opt.warmup_epochs, opt.epochs, opt.steps, opt.grad_clip) == (5.0, epochs, None, None)
    assert sorted(opt.ema_decays) == [0.9996, 0.9998, 0.9999]
    assert cfg.sampling_decay == 0.9999  # the EMA the authors' code evaluates (ema_decay1)
    # sampling (§5c): Heun, 50 steps, CFG on (0.1, 1)
    assert (cfg.sample.method, cfg.sample.steps, cfg.sample.interval) == ("heun", 50, (0.1, 1.0))
    if (size, patch) in AUTHORS_CFG:
        assert cfg.sample.cfg == AUTHORS_CFG[(size, patch)]


def test_readme_parameter_table_is_the_one_tested():
    """The literals above are the README's table (a change to either must change both)."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| JiT-([BLHG]) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \|", text, re.M)
    table = {
        f"JiT-{size}/{patch}": int(count.replace(",", ""))
        for size, *counts in rows
        for patch, count in zip((16, 32, 64), counts, strict=True)
    }
    assert table == README_PARAMS
    for name, count in AUTHORS_PARAMS.items():
        assert README_PARAMS[name] == count, name
    for name, millions in PAPER_MILLIONS.items():  # the paper rounds: 141M, "2B"
        assert README_PARAMS[name] / 1e6 == pytest.approx(millions, rel=0.02), name


@pytest.mark.parametrize("name", sorted(README_PARAMS))
def test_exact_parameter_count(name):
    net = pixeljit.create_model(name, device="meta")
    assert pixeljit.count_parameters(net) == README_PARAMS[name]
    frozen = pixeljit.count_parameters(net, trainable_only=False) - README_PARAMS[name]
    assert frozen == 256 * net.config.hidden_size  # only the fixed sin-cos position table


def test_demo_settings_are_the_readme_ones():
    """README, "The demo": fmnist-small (depth 4, width 128, patch 4, 28 px Fashion-MNIST, 10
    classes, x-prediction, v-loss, batch 64, lr 3e-3, EMA warm-up, no mirroring, 2200 steps),
    DPM-Solver++(3M) 10 steps (uniform grid), CFG 2.5 on (0.2, 1), EMA 0.995; with a GPU depth 8,
    width 384, batch 256, 4000 steps."""
    cpu = demo_config("runs/demo", None, "cpu")
    m = cpu.model
    assert (m.depth, m.hidden_size, m.patch_size, m.image_size) == (4, 128, 4, 28)
    assert (m.in_channels, m.num_classes, cpu.data.source) == (1, 10, "fashion-mnist")
    assert (cpu.objective.prediction, cpu.objective.loss) == ("x", "v")
    assert (cpu.optim.global_batch, cpu.optim.steps, cpu.optim.lr) == (64, 2200, 3e-3)
    assert cpu.optim.ema_warmup and cpu.optim.cooldown == 0.0 and not cpu.data.flip
    s = cpu.sample
    assert (s.method, s.steps, s.grid, s.cfg, s.interval) == ("dpm++3m", 10, "uniform", 2.5,
                                                               (0.2, 1.0))  # fmt: skip
    assert cpu.optim.ema_decays[0] == 0.995 and s.ema_decay in (None, 0.995)
    gpu = demo_config("runs/demo", None, "cuda")
    assert (gpu.model.depth, gpu.model.hidden_size) == (8, 384)
    assert (gpu.optim.global_batch, gpu.optim.steps) == (256, 4000)


def test_the_presets_are_the_papers_and_the_readmes_cpu_ones():
    assert sorted(presets()) == sorted(PAPER_PRESETS + CPU_PRESETS)


@pytest.mark.parametrize("name", CPU_PRESETS)
def test_cpu_presets_build_and_are_cpu_sized(name):
    cfg = get_preset(name)
    net = pixeljit.JiT(cfg.model)  # really built: a CPU preset must fit in memory
    assert 0 < pixeljit.count_parameters(net) < CPU_SIZED_MAX_PARAMS
