"""NumPy integers are taken as the integers they are (bool and float still refused); `sample()`
runs every module in eval mode and gives each its own mode back; 'meta' tensors and a sampling
device away from the network are refused by name; the messages for a float64 network, a depth
below in_context_start and uint8 labels in the network name the fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pixeljit
from pixeljit.data import prepare
from pixeljit.data.transforms import check_channels, check_size
from pixeljit.diffusion import sampler
from pixeljit.diffusion.noise import noise_from_seeds
from pixeljit.diffusion.sampler import SamplerConfig
from pixeljit.files.idx import write_idx
from pixeljit.model import JiTConfig

TINY = JiTConfig(image_size=8, patch_size=4, hidden_size=16, depth=2, num_heads=2,
                 num_classes=3, bottleneck_dim=4, in_context_len=2, in_context_start=1)  # fmt: skip
SHAPE = (TINY.in_channels, TINY.image_size, TINY.image_size)
DROP = 0.5  # dropout and attention dropout of the test network, in both of its blocks
WEIGHT_STD = 0.3  # past adaLN-Zero's zero output, so that dropout changes the images
FMNIST_SIDE = 28  # Fashion-MNIST's native size
PACK_SIZE = 8  # the size the NumPy-integer prepare packs at


def _net(**fields) -> pixeljit.JiT:
    """A TINY network with weights drawn at WEIGHT_STD (seed 0)."""
    torch.manual_seed(0)
    net = pixeljit.JiT(JiTConfig(**{**TINY.to_dict(), **fields}))
    for param in net.parameters():
        torch.nn.init.normal_(param, std=WEIGHT_STD)
    return net


# ------------------------------------------------------------------------ NumPy integers


def test_sample_takes_numpy_integers_as_their_values():
    """Each was refused: "seed must be an integer in [0, 2**63), got np.int64(0)"."""
    net = _net()
    plain = pixeljit.sample(net, [1, 2], steps=2, seed=0, first_index=3)
    numpy = pixeljit.sample(net, [1, 2], steps=np.int64(2), seed=np.int64(0),
                            first_index=np.int32(3))  # fmt: skip
    assert torch.equal(numpy, plain)
    free = _net(num_classes=0)
    assert torch.equal(pixeljit.sample(free, num=np.int64(3), steps=1, seed=0),
                       pixeljit.sample(free, num=3, steps=1, seed=0))  # fmt: skip
    for kwargs in ({"seed": True}, {"seed": 0.0}, {"seed": 0, "first_index": 1.0}):
        with pytest.raises(ValueError, match="must be an integer in"):
            pixeljit.sample(net, [1], steps=1, **kwargs)
    for num in (True, 3.0):
        with pytest.raises(ValueError, match="num must be an integer"):
            pixeljit.sample(free, num=num, steps=1)


def test_configs_store_numpy_integers_as_ints_and_still_refuse_bools_and_floats():
    steps = SamplerConfig.steps
    sampling = SamplerConfig(steps=np.int64(steps))
    assert sampling == SamplerConfig(steps=steps) and type(sampling.steps) is int
    plain = {"image_size": TINY.image_size, "depth": TINY.depth, "dropout_blocks": (0, 1)}
    numpy = {"image_size": np.int64(TINY.image_size), "depth": np.int32(TINY.depth),
             "dropout_blocks": (np.int64(0), np.uint8(1))}  # fmt: skip
    config = JiTConfig(**{**TINY.to_dict(), **numpy, "dropout": np.float32(DROP), "rope": np.True_})
    assert config == JiTConfig(**{**TINY.to_dict(), **plain, "dropout": float(np.float32(DROP))})
    assert type(config.image_size) is int and type(config.dropout_blocks[0]) is int
    assert type(config.rope) is bool
    assert JiTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for bad in (True, 10.0):
        with pytest.raises(ValueError, match="steps must be an integer"):
            SamplerConfig(steps=bad)
        with pytest.raises(ValueError, match="depth must be an integer"):
            JiTConfig(**{**TINY.to_dict(), "depth": bad})


def test_image_sizes_and_channels_take_numpy_integers_and_refuse_bools_and_floats():
    assert check_size(np.int64(PACK_SIZE)) == PACK_SIZE
    assert type(check_size(np.int64(PACK_SIZE))) is int
    assert check_channels(np.uint8(3)) == 3 and type(check_channels(np.uint8(3))) is int
    for bad in (True, 1.0):  # both equal 1, a valid count
        with pytest.raises(ValueError, match="channels must be 1"):
            check_channels(bad)
        with pytest.raises(ValueError, match="size must be an integer"):
            check_size(bad)


def test_prepare_packs_at_a_numpy_integer_size(tmp_path):
    """pixeljit.data.prepare("fashion-mnist", np.int64(32), out) was refused."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, FMNIST_SIDE, FMNIST_SIDE), dtype=np.uint8)
    write_idx(tmp_path / "idx" / "t10k-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "idx" / "t10k-labels-idx1-ubyte.gz", np.array([0, 1], np.uint8),
              compress=True)  # fmt: skip
    size, one = np.int64(PACK_SIZE), np.int32(1)
    done = prepare(
        "fashion-mnist",
        size,
        tmp_path / "out",
        split="test",
        data_dir=tmp_path / "idx",
        channels=np.int8(1),
        limit=one,
        images_per_shard=one,
        num_workers=np.uint8(0),
    )
    assert done.image_shape == (1, PACK_SIZE, PACK_SIZE)
    manifest = json.loads((done.out_dir / "manifest.json").read_text())  # written as JSON ints
    assert manifest["size"] == PACK_SIZE and manifest["count"] == 1


# ---------------------------------------------------------------------------- eval mode


def _modes(net) -> dict[str, bool]:
    return {name: module.training for name, module in net.named_modules()}


def test_sampling_runs_every_module_in_eval_mode_and_restores_each_ones_mode():
    """A submodule left in training mode kept its dropout on (two calls, two images), and
    `net.train()` afterwards put every module in training mode."""
    net = _net(dropout=DROP, attn_dropout=DROP, dropout_blocks=(0, TINY.depth))
    want = pixeljit.sample(net.eval(), [0, 1], steps=2, seed=0)
    net.blocks[0].train()
    before = _modes(net)
    seen: list[bool] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(m.training))
             for m in net.modules()]  # fmt: skip
    for _ in range(2):
        assert torch.equal(pixeljit.sample(net, [0, 1], steps=2, seed=0), want)
    for hook in hooks:
        hook.remove()
    assert seen and not any(seen)  # every module's every call in eval mode
    assert _modes(net) == before
    net.train()
    net.blocks[1].eval()
    before = _modes(net)
    pixeljit.sample(net, [0], steps=1, seed=0)
    assert _modes(net) == before and not net.blocks[1].training and net.blocks[0].training


# ------------------------------------------------------------------------ meta / devices


def test_meta_network_labels_and_noise_are_refused_by_name():
    """They failed inside torch: "META device type not an accelerator." and "Tensor.item()
    cannot be called on meta tensors"."""
    net = _net()
    with pytest.raises(ValueError, match="network is on 'meta'.*device='cpu'"):
        pixeljit.sample(_net().to("meta"), [1], steps=1, seed=0)
    with pytest.raises(ValueError, match="labels is on 'meta'"):
        pixeljit.sample(net, torch.tensor([1], device="meta"), steps=1, seed=0)
    with pytest.raises(ValueError, match="noise is on 'meta'"):
        pixeljit.sample(net, [1], steps=1, noise=torch.zeros(1, *SHAPE, device="meta"))
    with pytest.raises(ValueError, match="noise cannot be drawn on 'meta'"):
        noise_from_seeds([0], SHAPE, "meta")


def test_a_sampling_device_away_from_the_network_names_both_and_the_fix(monkeypatch):
    """It was torch's "Tensor on device cpu is not on the expected device meta!"."""
    monkeypatch.setattr(sampler, "as_device", torch.device)  # let 'meta' through as_device
    net = _net()
    message = r"device='meta' but the network is on 'cpu'.*device='cpu'.*net.to\('meta'\)"
    with pytest.raises(ValueError, match=message):
        pixeljit.sample(net, [1], steps=1, seed=0, device="meta")
    assert pixeljit.sample(net, [1], steps=1, seed=0, device="cpu").shape == (1, *SHAPE)


# ------------------------------------------------------------------------------ messages


@pytest.fixture
def float64_default():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def test_a_float64_network_is_told_to_go_back_to_float32(float64_default):
    """It was told to pass amp_dtype=torch.bfloat16, which does not make float64 weights
    float32; and with net.float() the generator's noise came out float64 and failed."""
    net = pixeljit.JiT(TINY)
    with pytest.raises(ValueError, match=r"weights are torch.float64: .*net.float\(\)") as err:
        pixeljit.sample(net, [0], steps=1, seed=0)
    assert "amp_dtype" not in str(err.value)
    for source in ({"seed": 0}, {"generator": torch.Generator().manual_seed(0)}):
        assert pixeljit.sample(net.float(), [0], steps=1, **source).dtype == torch.float32


def test_a_depth_below_in_context_start_names_both_fixes():
    with pytest.raises(ValueError, match=r"in_context_start 4 .*depth=2.*in_context_start=N "
                                         r"with N < 2, or in_context_len=0"):  # fmt: skip
        pixeljit.create_model("JiT-B/16", depth=2)
    assert pixeljit.create_model("JiT-B/16", depth=2, in_context_start=1).config.depth == 2


def test_uint8_labels_in_the_network_say_why_sample_takes_them():
    """sample() takes uint8 labels (it converts them once); the network refused them with no
    word of why."""
    net = _net()
    y = torch.tensor([1, 2])
    assert torch.equal(pixeljit.sample(net, y.to(torch.uint8), steps=1, seed=0),
                       pixeljit.sample(net, y, steps=1, seed=0))  # fmt: skip
    with pytest.raises(ValueError, match=r"int64 or int32, got torch.uint8: pass y.long\(\) "
                                         r"\(sample\(\) converts its labels once"):  # fmt: skip
        net(torch.zeros(2, *SHAPE), torch.rand(2), y.to(torch.uint8))


# ----------------------------------------------------- the same class of argument, elsewhere


def test_every_count_a_user_passes_takes_numpy_integers_and_stores_ints():
    """A count read from an array (np.int64) in a generation spec, a time grid, a training
    config (with NumPy floats and bools), and the NFE study's budgets."""
    import dataclasses

    from pixeljit.diffusion.timegrids import time_grid
    from pixeljit.evaluation import GenerationSpec
    from pixeljit.experiments.nfe import NfeConfig
    from pixeljit.training.config_io import apply_overrides, to_dict
    from pixeljit.training.presets import get_preset

    spec = GenerationSpec(num=np.int64(6), batch_size=np.int32(4), seed=np.uint8(3))
    assert (spec.num, spec.batch_size, spec.seed) == (6, 4, 3)
    assert {type(v) for v in (spec.num, spec.batch_size, spec.seed)} == {int}
    assert torch.equal(time_grid(np.int64(4)), time_grid(4))
    settings = {"optim.steps": np.int64(7), "optim.lr": np.float32(0.5),
                "run.tensorboard": np.bool_(False)}  # fmt: skip
    cfg = apply_overrides(get_preset("fmnist-tiny"), settings)
    assert (cfg.optim.steps, cfg.optim.lr, cfg.run.tensorboard) == (7, 0.5, False)
    json.dumps(to_dict(cfg))  # plain Python values: the config is written as it is
    study = dataclasses.replace(
        NfeConfig(), budgets=(np.int64(4), 8), num=np.int64(NfeConfig().num)
    )
    assert study.budgets == (4, 8) and type(study.budgets[0]) is int and type(study.num) is int
    for bad in (True, 2.0, "3"):
        with pytest.raises(ValueError, match="GenerationSpec.num must be an integer"):
            GenerationSpec(num=bad)
        with pytest.raises(ValueError, match="steps must be an integer"):
            time_grid(bad)
        with pytest.raises(ValueError, match="optim.steps must be an integer"):
            apply_overrides(get_preset("fmnist-tiny"), {"optim.steps": bad})
