"""Bad input to the network, `sample()`, `save_safetensors` and `JiTConfig` is refused by name
(never ignored, never a cryptic torch error), and compiled sampling leaves the net copyable."""

from __future__ import annotations

import copy
import dataclasses
import io
import os

import pytest
import torch

import pixeljit
from pixeljit.diffusion import execution
from pixeljit.model import JiTConfig

TINY = JiTConfig(image_size=16, patch_size=4, hidden_size=32, depth=2, num_heads=2,
                 num_classes=4, bottleneck_dim=8, in_context_len=2, in_context_start=1)  # fmt: skip


@pytest.fixture
def net():
    torch.manual_seed(0)
    return pixeljit.JiT(TINY).eval()


def _inputs(n: int = 2):
    return torch.randn(n, 3, 16, 16), torch.rand(n), torch.arange(n)


# ------------------------------------------------------------------ 1. compiled sampling


def test_net_copies_and_pickles_after_compiled_sampling_which_compiles_once(net, monkeypatch):
    torch._dynamo.reset()
    graphs: list = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(execution, "_COMPILE_BACKEND", backend)
    first = pixeljit.sample(net, [1], steps=1, seed=0, compile_mode="default")
    built = len(graphs)
    assert built > 0
    twin = copy.deepcopy(net)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for other in (twin, loaded):
        torch.testing.assert_close(pixeljit.sample(other, [1], steps=1, seed=0), first)
    again = pixeljit.sample(net, [1], steps=1, seed=0, compile_mode="default")
    assert len(graphs) == built  # the cached compiled net is reused: no recompile
    torch.testing.assert_close(again, first)
    torch._dynamo.reset()


# ------------------------------------------------------------------------------ 2. sample()


def test_first_index_without_seed_is_refused(net):
    with pytest.raises(ValueError, match="first_index=3 .*pass seed="):
        pixeljit.sample(net, [1], steps=1, first_index=3)
    pixeljit.sample(net, [1], steps=1, seed=0, first_index=3)  # with a seed it numbers them


def test_device_other_than_the_noise_device_is_refused(net, monkeypatch):
    from pixeljit.diffusion import sampler

    monkeypatch.setattr(sampler, "as_device", torch.device)  # "cuda" without a GPU here
    noise = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"device='cuda' but noise is on 'cpu'.*noise.to"):
        pixeljit.sample(net, [1], noise=noise, steps=1, device="cuda")
    pixeljit.sample(net, [1], noise=noise, steps=1, device="cpu")  # agreeing: fine


# ------------------------------------------------------------------------- 3. JiT.forward


def test_unconditional_network_refuses_labels():
    uncond = pixeljit.JiT(dataclasses.replace(TINY, num_classes=0))
    z, t, y = _inputs()
    with pytest.raises(ValueError, match="y must be None for an unconditional model"):
        uncond(z, t, y)
    assert uncond(z, t, None).shape == z.shape
    assert pixeljit.sample(uncond, num=2, steps=1, seed=0).shape == z.shape


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_input_of_another_float_dtype_than_the_weights_names_the_fix(net, dtype):
    z, t, y = _inputs()
    with pytest.raises(ValueError, match=rf"z is {dtype} but the weights are torch.float32.*"
                                         r"z.float\(\)"):  # fmt: skip
        net(z.to(dtype), t, y)


def test_autocast_and_matching_dtypes_still_run(net):
    z, t, y = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(z, t, y).dtype == torch.bfloat16
        assert net(z.bfloat16(), t, y).dtype == torch.bfloat16
    assert net(z, t, y.int()).dtype == torch.float32
    assert copy.deepcopy(net).bfloat16()(z.bfloat16(), t, y).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool, torch.uint8])
def test_labels_that_are_not_int64_or_int32_name_the_fix(net, dtype):
    z, t, y = _inputs()
    with pytest.raises(ValueError, match=rf"y must hold integer class indices.*{dtype}.*y.long"):
        net(z, t, y.to(dtype))


# ---------------------------------------------------------------------- 4/5. save_safetensors


def test_overwrite_must_be_a_bool(net, tmp_path):
    path = pixeljit.save_safetensors(net, tmp_path / "a.safetensors")
    before = path.read_bytes()
    for value in ("no", 1, None):
        with pytest.raises(TypeError, match="overwrite must be True or False"):
            pixeljit.save_safetensors(net, path, overwrite=value)
    assert path.read_bytes() == before


def test_a_refused_save_creates_no_folder(tmp_path):
    with pytest.raises(ValueError, match="takes a pixeljit JiT network"):
        pixeljit.save_safetensors(torch.nn.Linear(2, 2), tmp_path / "new" / "sub" / "a.safetensors")
    assert not (tmp_path / "new").exists()


def test_a_compiled_network_is_saved_as_the_network_it_wraps(net, tmp_path):
    path = pixeljit.save_safetensors(torch.compile(net), tmp_path / "c.safetensors")
    loaded = pixeljit.load_trained(path).net
    assert set(loaded.state_dict()) == set(net.state_dict())


def test_bytes_path_is_refused_by_name(net, tmp_path):
    with pytest.raises(TypeError, match=r"path must be a str or os.PathLike.*bytes"):
        pixeljit.save_safetensors(net, os.fsencode(tmp_path / "b.safetensors"))


def test_duplicate_class_names_are_refused(net, tmp_path):
    with pytest.raises(ValueError, match=r"class_names must be distinct, 'a', 'b' appear"):
        pixeljit.save_safetensors(net, tmp_path / "d.safetensors", class_names=["a", "b", "a", "b"])
    assert not (tmp_path / "d.safetensors").exists()


# ---------------------------------------------------------------------------- 6. JiTConfig


def test_config_stores_tuple_fields_as_tuples_and_stays_hashable():
    config = JiTConfig(dropout_blocks=[1, 2])
    assert config.dropout_blocks == (1, 2)
    assert hash(config) == hash(JiTConfig(dropout_blocks=(1, 2)))
    assert config == JiTConfig.from_dict(config.to_dict())
