"""The Python API's arguments: each bad one gets a ValueError / TypeError naming it, before any
file is read or any work is done (never a torch assertion, nor a damaged-file message)."""

from __future__ import annotations

import pytest
import torch

import pixeljit
from conftest import TINY_NET
from pixeljit.checkpoints.load import export_safetensors
from pixeljit.model import JiTConfig

TINY = TINY_NET  # conftest: the network `tiny_file` holds


def test_load_trained_refuses_bad_arguments_before_reading(tiny_file, tmp_path, monkeypatch):
    """An empty path loaded the current folder, and a non-string `weights` was reported as a
    damaged checkpoint."""
    monkeypatch.chdir(tiny_file.parent)
    with pytest.raises(ValueError, match="source is empty"):
        pixeljit.load_trained("")
    with pytest.raises(TypeError, match="source must be a path"):
        pixeljit.load_trained(None)
    with pytest.raises(TypeError, match="weights must be a name"):
        pixeljit.load_trained(tiny_file, weights=5)


@pytest.mark.parametrize(
    ("device", "message", "absent"),
    [
        ("meta", "'meta' holds no values", None),
        ("mps", "MPS \\(Apple GPU\\) is not available here; use 'cpu'", "mps"),
        ("cuda", "CUDA is not available here; use 'cpu'", "cuda"),
        ("xpu:0", "XPU is not available here", "xpu"),
        ("tpu", "is not a device", None),
    ],
)
def test_load_trained_refuses_a_device_this_machine_lacks(tiny_file, device, message, absent):
    """A missing MPS printed torch's dispatcher error (kilobytes), missing CUDA an
    AssertionError, and 'meta' returned a model that could not sample, after forty warnings."""
    have = {"mps": torch.backends.mps.is_available(), "cuda": torch.cuda.is_available(),
            "xpu": hasattr(torch, "xpu") and torch.xpu.is_available()}  # fmt: skip
    if absent and have[absent]:
        pytest.skip(f"{absent} is available here")
    with pytest.raises(ValueError, match=message):
        pixeljit.load_trained(tiny_file, device=device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to count its devices")
def test_load_trained_refuses_a_cuda_index_past_the_count(tiny_file):
    with pytest.raises(ValueError, match="this machine has"):
        pixeljit.load_trained(tiny_file, device=f"cuda:{torch.cuda.device_count()}")


def test_in_context_start_is_refused_for_pixeljit_files(tiny_file, tmp_path):
    """A run and a .safetensors export record their architecture; the argument (the authors'
    files' depth setting) was ignored without a word."""
    model = pixeljit.load_trained(tiny_file)
    export = tmp_path / "tiny.safetensors"
    export_safetensors(model, export)
    for source in (tiny_file, export):
        with pytest.raises(ValueError, match="in_context_start has no effect"):
            pixeljit.load_trained(source, in_context_start=0)
        assert pixeljit.load_trained(source).net.config == model.net.config


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (3, "one class per image, a 1-D sequence, got 3: e.g. \\[3\\]"),
        (torch.tensor(2), "got 2:"),
        ([[0, 1]], "got shape \\(1, 2\\)"),
        (["Sneaker"], "a loaded model maps class names"),
        ("0", "a loaded model maps class names"),
    ],
)
def test_sample_labels_must_be_one_index_per_image(labels, message):
    """A bare 3 drew one image of class 3 (a user may read it as three images), a 2-D list was
    flattened silently, and a class name was torch's "too many dimensions 'str'"."""
    with pytest.raises(ValueError, match=message):
        pixeljit.sample(pixeljit.JiT(TINY), labels, steps=1)


def test_sample_given_a_loaded_model_says_to_pass_its_net(tiny_file):
    model = pixeljit.load_trained(tiny_file)
    with pytest.raises(ValueError, match="pass model.net with prediction=model.prediction"):
        pixeljit.sample(model, [0], steps=1)
    images = pixeljit.sample(model.net, [0], steps=1, prediction=model.prediction)
    assert images.shape == (1, 3, 8, 8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_sample_on_cuda_without_cuda_is_a_value_error(device):
    """It was torch's AssertionError "Torch not compiled with CUDA enabled"."""
    net = pixeljit.JiT(TINY)
    with pytest.raises(ValueError, match="CUDA is not available here"):
        pixeljit.sample(net, [0], steps=1, device=device)


@pytest.mark.parametrize("amp_dtype", ["bf16", torch.float32, torch.int8])
def test_sample_amp_dtype_must_be_an_autocast_dtype(amp_dtype):
    """A string was a TypeError from deep inside autocast, after a warning."""
    net = pixeljit.JiT(TINY)
    with pytest.raises(ValueError, match="amp_dtype must be None"):
        pixeljit.sample(net, [0], steps=1, amp_dtype=amp_dtype)
    images = pixeljit.sample(net, [0], steps=1, amp_dtype=torch.bfloat16)
    assert images.dtype == torch.float32 and images.shape == (1, 3, 8, 8)


# ------------------------------------------------ the network's own config: types and bounds


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dropout_blocks": -5}, "dropout_blocks must be two integers, got -5"),
        ({"hidden_size": 10**6}, "hidden_size must be ≤ 8192"),
        ({"depth": 10**5}, "depth must be ≤ 256"),
        ({"mlp_ratio": 1e9}, r"mlp_ratio must lie in \(0, 64\]"),
        ({"num_classes": 10**9}, "num_classes must be ≤ 100000"),
        ({"in_context_len": 10**7}, "in_context_len must be ≤ 4096"),
        ({"bottleneck_dim": 10**6}, "bottleneck_dim must be ≤ 8192"),
    ],
)
def test_jit_config_bounds_every_size_before_anything_is_built(fields, message):
    """The Python API is bounded like `--set model.…`: a mistyped size is refused by JiTConfig
    itself, so `JiT(config)` never starts allocating terabytes."""
    with pytest.raises(ValueError, match=message):
        JiTConfig(**fields)


def test_create_model_names_a_bad_name():
    for name in (None, 16, "JiT-X/16", "JiT-B", "JiT-B/x"):
        with pytest.raises(ValueError, match="JiT-B/16"):
            pixeljit.create_model(name)
