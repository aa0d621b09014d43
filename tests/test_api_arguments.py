"""The Python API's arguments: each bad one gets a ValueError / TypeError naming it, before any
file is read or any work is done (never a torch assertion, nor a damaged-file message)."""

from __future__ import annotations

import dataclasses

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


NOISE = torch.zeros(1, 3, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise": NOISE, "seed": 5}, "noise and seed were both given"),
        ({"seed": 5, "generator": torch.Generator()}, "seed and generator were both given"),
        ({"grid": "uniform", "shift": 2.0}, "shift=2 has no effect on the 'uniform' grid"),
        ({"num": 1.0}, "num must be an integer"),
        ({"num": True}, "num must be an integer"),
        ({"generator": 0}, "generator must be a torch.Generator, got int .*pass seed="),
        ({"noise": NOISE.numpy()}, "noise must be a floating-point torch.Tensor, got ndarray"),
        ({"noise": NOISE.long()}, "noise must be a floating-point torch.Tensor, got torch.int64"),
        ({"noise": NOISE.double()}, "noise is torch.float64, .* pass noise.float"),
        ({"noise": torch.full((1, 3, 8, 8), float("nan"))}, "noise holds NaN"),
    ],
)
def test_sample_refuses_arguments_it_would_ignore_or_fail_on(kwargs, message):
    """Noise given with a seed, or a seed with a generator, used one and ignored the other; a
    shift off the shifted grid was ignored; a float count, an int generator and numpy, integer,
    float64 or NaN noise failed deep in torch or returned NaN images."""
    with pytest.raises(ValueError, match=message):
        pixeljit.sample(pixeljit.JiT(TINY), [0], steps=1, **kwargs)


@pytest.mark.parametrize("labels", [{0, 1}, (i for i in range(2))])
def test_sample_labels_must_be_a_sequence(labels):
    with pytest.raises(ValueError, match="labels must be a list, tuple, array or tensor"):
        pixeljit.sample(pixeljit.JiT(TINY), labels, steps=1)


def test_sample_refuses_a_network_whose_weights_are_not_float32():
    """A bf16 network failed in its first convolution ("Input type (float) and bias type
    (c10::BFloat16) should be the same"); the way to run it in bf16 is autocast."""
    net = pixeljit.JiT(TINY).to(torch.bfloat16)
    with pytest.raises(ValueError, match="weights are torch.bfloat16: .*amp_dtype=torch.bfloat16"):
        pixeljit.sample(net, [0], steps=1)
    assert pixeljit.sample(net.float(), [0], steps=1, amp_dtype=torch.bfloat16).isfinite().all()


def test_sample_defaults_to_the_noise_scale_training_defaults_to():
    """sample() drew noise at scale 1 while ObjectiveConfig (and so flow_matching_loss) trains at
    image_size/256 by default; a .safetensors that records no objective loaded at 1 too."""
    torch.manual_seed(0)
    net = pixeljit.JiT(TINY)
    for param in net.parameters():  # past adaLN-Zero's zero output
        torch.nn.init.normal_(param, std=0.3)
    scale = TINY.image_size / 256
    default = pixeljit.sample(net, [0], steps=2, seed=0)
    assert torch.equal(default, pixeljit.sample(net, [0], steps=2, seed=0, noise_scale=scale))
    assert not torch.equal(default, pixeljit.sample(net, [0], steps=2, seed=0, noise_scale=1.0))


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
    for name in (
        None,
        16,
        "JiT-X/16",
        "JiT-B",
        "JiT-B/x",
        "JiT-B/8",
        "B/16",
        "JiT-B/016",
        "JiT-b/16",
    ):
        with pytest.raises(ValueError, match="JiT-B/16") as err:  # the names it knows
            pixeljit.create_model(name)
        assert f"got {name!r}" in str(err.value) or f"unknown model {name!r}" in str(err.value)


@pytest.mark.parametrize(
    ("device", "message"), [("meta", "'meta' holds no values"), ("gpu", "is not a device")]
)
def test_the_file_loaders_check_the_device_like_load_trained(tiny_file, device, message):
    """load_safetensors(device='meta') built a network without values (after some fifty torch
    warnings); 'gpu' was torch's own error."""
    with pytest.raises(ValueError, match=message):
        pixeljit.load_safetensors(tiny_file, device=device)
    state = {"model_ema1": pixeljit.load_safetensors(tiny_file).state_dict()}
    with pytest.raises(ValueError, match=message):
        pixeljit.load_reference(state, device=device)


def test_label_index_takes_a_name_and_an_unconditional_model_no_labels(tiny_file, tmp_path):
    model = pixeljit.load_trained(tiny_file)
    with pytest.raises(ValueError, match="takes a class name \\(a str\\), got 3"):
        model.label_index(3)
    torch.manual_seed(0)
    unconditional = tmp_path / "u.safetensors"
    pixeljit.save_safetensors(pixeljit.JiT(dataclasses.replace(TINY, num_classes=0)), unconditional)
    with pytest.raises(ValueError, match="'Bag': this model is unconditional .* num=N"):
        pixeljit.load_trained(unconditional).sample(["Bag"])


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "message"),
    [
        (None, {"objective": {"prediction": "q"}}, ValueError, "prediction must be one of"),
        # a misspelt key was kept and ignored: the file sampled at the default noise scale
        (
            None,
            {"objective": {"noise": 1.0}},
            ValueError,
            "unknown key\\(s\\) 'noise': it takes prediction, noise_scale, preconditioner",
        ),
        (None, {"class_names": "abc"}, ValueError, "a list of names, got the string 'abc'"),
        (None, {"class_names": ["a"] * 4}, ValueError, "4 class names for num_classes 3"),
        (None, {"sampler": {"steps": 0}}, ValueError, "invalid sampler settings"),
        (None, {"weights": {"step": -1}}, ValueError, "metadata 'weights' must be"),
        ("nan", {}, ValueError, "non-finite weights"),
        ("meta", {}, ValueError, "on 'meta' and holds no values"),
        ("linear", {}, ValueError, "takes a pixeljit JiT network, got Linear"),
    ],
)
def test_save_safetensors_refuses_what_loading_would(tmp_path, make, kwargs, error, message):
    """Each was written, and then refused by load_trained (or, for class names, loaded wrong:
    'abc' became three names, four names served a three-class network)."""
    torch.manual_seed(0)
    net = {"linear": lambda: torch.nn.Linear(2, 2)}.get(make, lambda: pixeljit.JiT(TINY))()
    if make == "nan":
        with torch.no_grad():
            net.pos_embed.fill_(float("nan"))
    if make == "meta":
        net = pixeljit.create_model("JiT-B/16", device="meta")
    path = tmp_path / "w.safetensors"
    with pytest.raises(error, match=message):
        pixeljit.save_safetensors(net, path, **kwargs)
    assert not path.exists()


def test_save_safetensors_names_its_file_and_takes_a_sampler_config(tmp_path):
    from pixeljit.diffusion.sampler import SamplerConfig

    net = pixeljit.JiT(TINY)
    for name in ("w", "w.pt", ".safetensors"):
        with pytest.raises(ValueError, match="name the file NAME.safetensors"):
            pixeljit.save_safetensors(net, tmp_path / name)
    recommended = SamplerConfig(steps=3, cfg=2.0)
    path = pixeljit.save_safetensors(net, tmp_path / "w.SafeTensors", sampler=recommended)
    assert pixeljit.load_trained(path).sampler == recommended


def test_more_class_names_than_classes_are_refused_on_load(tmp_path):
    from conftest import write_raw_safetensors

    path = tmp_path / "w.safetensors"
    write_raw_safetensors(pixeljit.JiT(TINY), path, class_names=["a", "b", "c", "d"])
    with pytest.raises(
        ValueError,
        match="4 class names for num_classes 3: there must be no more names than classes",
    ):
        pixeljit.load_trained(path)


def test_the_network_and_the_time_grid_name_a_wrong_argument_type():
    """AttributeErrors ('float' object has no attribute 'shape', 'dict' … 'num_classes') and
    linspace's TypeError; an infinite shift gave a grid [0, 0, 0, nan]."""
    from pixeljit.diffusion.timegrids import time_grid

    net = pixeljit.JiT(TINY)
    z, y = torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="t must be a tensor, got float"):
        net(z, 0.5, y)
    with pytest.raises(ValueError, match="z must be a tensor, got list"):
        net([0.0], torch.zeros(2), y)
    with pytest.raises(ValueError, match="JiT takes a JiTConfig .* got dict"):
        pixeljit.JiT({"depth": 2})
    with pytest.raises(ValueError, match="steps must be an integer ≥ 1, got 2.5"):
        time_grid(2.5)
    with pytest.raises(ValueError, match="shift must be a finite number > 0, got inf"):
        time_grid(3, "shifted", shift=float("inf"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"prediction": "foo"}, "prediction must be one of"),
     ({"noise_scale": -2.0}, "noise_scale must be a finite number > 0"),
     ({"preconditioner": "edm2"}, "preconditioner must be one of")],
)  # fmt: skip
def test_a_trained_model_checks_its_objective(kwargs, message):
    from pixeljit.checkpoints.load import TrainedModel

    with pytest.raises(ValueError, match=message):
        TrainedModel(pixeljit.JiT(TINY), **kwargs)
    with pytest.raises(ValueError, match="takes a JiT network, got NoneType"):
        TrainedModel(None)


def test_a_trained_model_moves_to_a_device_but_keeps_fp32(tiny_file):
    """`model.to(device)` raised AttributeError (a user had to know about `model.net`)."""
    model = pixeljit.load_trained(tiny_file)
    same = model.to(torch.device("cpu"))
    assert same is model and model.device == torch.device("cpu")
    images = model.to("cpu").sample([0, 1], steps=2, seed=0)
    assert images.device.type == "cpu" and images.dtype == torch.float32
    with pytest.raises(ValueError, match="not a dtype.*amp_dtype"):
        model.to(torch.bfloat16)
    with pytest.raises(ValueError, match="'gpu' is not a device"):
        model.to("gpu")
    assert next(model.net.parameters()).dtype == torch.float32


def test_a_file_of_one_format_named_as_the_other_is_named_so(tiny_file, tmp_path):
    """A .safetensors renamed .pt failed with 'not a zip-format PyTorch checkpoint', a .pt
    renamed .safetensors with 'header too large': neither named the real format."""
    import shutil

    exported = tmp_path / "w.safetensors"
    pixeljit.save_safetensors(pixeljit.load_trained(tiny_file).net, exported)
    misnamed = tmp_path / "w.pt"
    shutil.copy(exported, misnamed)
    with pytest.raises(ValueError, match=r"is a \.safetensors file named \.pt: rename it to w\."):
        pixeljit.load_trained(misnamed)
    run_file = tmp_path / "run.safetensors"
    torch.save({"step": 1, "model": {}}, run_file)
    with pytest.raises(ValueError, match=r"PyTorch checkpoint \(torch.save\) named \.safetensors"):
        pixeljit.load_trained(run_file)
    assert pixeljit.load_trained(exported).net.config == pixeljit.load_trained(tiny_file).net.config
