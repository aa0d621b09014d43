"""Bad input to the loss, `train`, `load_reference`, `sample()`, `JiTConfig` and the run
checkpoint loader is refused by name, with the fix (never a raw torch error, an AttributeError
deep inside, or a silently wrong result)."""

from __future__ import annotations

import pytest
import torch

import pixeljit
from pixeljit.checkpoints.run import load_checkpoint, save_checkpoint
from pixeljit.diffusion.objective import ObjectiveConfig, flow_matching_loss, flow_matching_loss_at
from pixeljit.model import JiTConfig
from pixeljit.training.loop import train

TINY = JiTConfig(image_size=8, patch_size=4, hidden_size=16, depth=2, num_heads=2,
                 num_classes=3, bottleneck_dim=4, in_context_len=2, in_context_start=1)  # fmt: skip


@pytest.fixture
def net():
    torch.manual_seed(0)
    return pixeljit.JiT(TINY)


def _batch(n: int = 2):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 8, 8, generator=g) * 2 - 1, torch.arange(n)


# ------------------------------------------------------------------------ 1. the loss's inputs


def test_uint8_images_are_refused_with_the_scaling_to_apply(net):
    x, y = _batch()
    raw = ((x + 1) * 127.5).to(torch.uint8)
    with pytest.raises(ValueError, match=r"x must be float images in \[-1, 1\], got torch.uint8"):
        flow_matching_loss(net, raw, y)
    noise, t = torch.randn(x.shape), torch.full((2,), 0.5)
    with pytest.raises(ValueError, match=r"x.float\(\) / 127.5 - 1"):
        flow_matching_loss_at(net, raw, noise, t, y)


def test_a_dict_objective_config_is_refused_naming_the_class(net):
    x, y = _batch()
    with pytest.raises(ValueError, match=r"config must be an ObjectiveConfig, got dict.*"
                                         r"ObjectiveConfig\(\*\*fields\)"):  # fmt: skip
        flow_matching_loss(net, x, y, {"loss": "x"})
    noise, t = torch.randn(x.shape), torch.full((2,), 0.5)
    with pytest.raises(ValueError, match="config must be an ObjectiveConfig"):
        flow_matching_loss_at(net, x, noise, t, y, {"loss": "x"})


@pytest.mark.parametrize(
    "bad, got",
    [
        (torch.arange(2)[:, None], r"torch.int64 \(2, 1\)"),  # broadcast by the drop: (2, 2)
        ([0, 1], "list"),  # failed on .device
        (torch.tensor(1), r"torch.int64 \(\)"),  # failed with an IndexError
        (torch.tensor([0.0, 1.0]), r"torch.float32 \(2,\)"),
        (torch.tensor([True, False]), r"torch.bool \(2,\)"),
        (torch.arange(3), r"torch.int64 \(3,\)"),  # one label too many
    ],
)
def test_labels_that_are_not_one_index_per_image_are_refused(net, bad, got):
    """Before the label drop, which broadcast a (N, 1) column to (N, N) and then blamed it."""
    x, _ = _batch()
    shape = r"y must be None or integer class indices of shape \(2,\), one per image, got "
    with pytest.raises(ValueError, match=shape + got + r": pass torch.as_tensor\(labels"):
        flow_matching_loss(net, x, bad)
    noise, t = torch.randn(x.shape), torch.full((2,), 0.5)
    with pytest.raises(ValueError, match=shape + got):
        flow_matching_loss_at(net, x, noise, t, bad)


def test_any_integer_label_dtype_trains_like_int64(net):
    x, y = _batch()
    g = torch.Generator().manual_seed(1)
    want, t = flow_matching_loss(net, x, y, generator=g)
    for dtype in (torch.int32,):  # the network takes int64 and int32
        g = torch.Generator().manual_seed(1)
        got, t2 = flow_matching_loss(net, x, y.to(dtype), generator=g)
        assert torch.equal(got, want) and torch.equal(t2, t)


# ------------------------------------------------------------------------ 2. train({...})


def test_train_reads_a_dict_of_sections_and_refuses_anything_else(tmp_path):
    # the dict is read field by field: a bad value is named by its dotted name ...
    with pytest.raises(ValueError, match="optim.lr must be a number"):
        train({"run": {"out": str(tmp_path / "a")}, "optim": {"lr": "fast"}})
    # ... and a valid one gets as far as a TrainConfig would (here: no data was named)
    with pytest.raises(ValueError, match="no data"):
        train({"run": {"out": str(tmp_path / "b")}})
    with pytest.raises(ValueError, match="cfg must be a TrainConfig or a dict of its sections"):
        train("fmnist-tiny")


# ------------------------------------------------------------------ 3. load_reference(model)


def test_load_reference_points_a_safetensors_file_to_load_trained(tiny_file):
    with pytest.raises(ValueError, match=r"\.safetensors model file.*pixeljit\.load_trained\("):
        pixeljit.load_reference(tiny_file)
    assert isinstance(pixeljit.load_trained(tiny_file).net, pixeljit.JiT)  # the fix works


def _run_checkpoint(folder, class_names):
    state = {"model": {"w": torch.ones(2)}, "step": 3, "class_names": class_names,
             "config": {"model": {"num_classes": 3}}}  # fmt: skip
    return save_checkpoint(state, folder, 3, milestone=False)


def test_load_reference_points_a_training_checkpoint_to_load_trained(tmp_path):
    path = _run_checkpoint(tmp_path, None)
    with pytest.raises(ValueError, match=r"pixeljit training checkpoint.*load_trained\("):
        pixeljit.load_reference(path)


# ----------------------------------------------------------------- 4. t outside [0, 1]


@pytest.mark.parametrize("bad", [1.5, -0.2, float("nan")])
def test_loss_at_refuses_times_outside_0_1(net, bad):
    x, y = _batch()
    noise = torch.randn(x.shape)
    t = torch.tensor([0.5, bad])
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\].*pass times in \[0, 1\]"):
        flow_matching_loss_at(net, x, noise, t, y, ObjectiveConfig())
    assert flow_matching_loss_at(net, x, noise, torch.tensor([0.0, 1.0]), y).isfinite().all()


# ----------------------------------------------------------------- 5. non-finite samples


def test_sample_refuses_to_return_non_finite_images(net):
    assert pixeljit.sample(net, [0, 1], steps=1, seed=0).isfinite().all()
    with torch.no_grad():
        net.final_layer.linear.bias.fill_(float("nan"))  # a diverged network
    with pytest.raises(ValueError, match=r"2 of the 2 images from sample 4 on are not finite"):
        pixeljit.sample(net, [0, 1], steps=1, seed=0, first_index=4)


# ------------------------------------------------------------ 6. a zero-width MLP


@pytest.mark.parametrize(("mlp", "units"), [("swiglu", 2), ("gelu", 1)])
def test_an_mlp_ratio_leaving_no_hidden_unit_is_refused_with_the_minimum(mlp, units):
    fields = {**TINY.to_dict(), "mlp": mlp}
    with pytest.raises(ValueError, match=rf"mlp_ratio 0.01 gives the {mlp} MLP no hidden unit.*"
                                         rf"mlp_ratio ≥ {units}/16"):  # fmt: skip
        JiTConfig(**{**fields, "mlp_ratio": 0.01})
    least = JiTConfig(**{**fields, "mlp_ratio": units / 16})  # the minimum named builds
    assert least.mlp_width == 1
    assert pixeljit.JiT(least).blocks[0].mlp(torch.zeros(1, 16)).shape == (1, 16)


# ------------------------------------------------- 7. a run checkpoint's class names


def test_a_run_checkpoint_with_repeated_class_names_is_refused(tmp_path):
    path = _run_checkpoint(tmp_path, ["Bag", "Coat", "Bag"])  # checksummed: only names differ
    with pytest.raises(ValueError, match=r"class_names must be distinct, 'Bag' appear"):
        load_checkpoint(path)


def test_a_non_finite_preview_leaves_its_grid_out_and_the_training_goes_on(
    fmnist16, tmp_path, monkeypatch, capsys
):
    """`sample` now refuses NaN images; a training preview that draws them (finite weights, an
    unstable sampler setting) must not stop the run: that step has no grid, and a warning."""
    from conftest import tiny_run
    from pixeljit.diffusion import sampler as sampler_module
    from pixeljit.training.loop import train

    monkeypatch.setattr(sampler_module, "solve", lambda field, z, grid, method: z * float("nan"))
    result = train(tiny_run(fmnist16(64), tmp_path / "run"), progress=False)
    assert result.step == 2 and not result.stopped_on_nan
    assert (tmp_path / "run" / "latest.pt").is_file()
    assert not list((tmp_path / "run").glob("samples-*.png"))
    assert "warning: no preview grid samples-0000002.png: " in capsys.readouterr().out
