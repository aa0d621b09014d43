"""objective.sigma_data travels with the 'edm' pre-conditioner everywhere the pre-conditioner does:
the sampler's denoiser, `sample()`, training previews, `load_trained` of a run, a .safetensors
export and a hub folder, and `pixeljit convert`; files written before it was recorded load with
the default 0.5, and a hostile value in a file is refused in one line naming the file."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import pixeljit
from conftest import SAMPLED_RUN, TINY_NET, tiny_run
from pixeljit.checkpoints.hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from pixeljit.checkpoints.hub_write import write_hub_folder
from pixeljit.checkpoints.load import TrainedModel, export_safetensors, load_trained
from pixeljit.cli import main
from pixeljit.diffusion.execution import NetDenoiser
from pixeljit.diffusion.sampler import sample

TRAINED = 0.3  # the run's sigma_data (not the default 0.5)
DEFAULT = 0.5  # ObjectiveConfig's
EDM = {"objective.preconditioner": "edm", "objective.sigma_data": TRAINED}
DRAW = {"steps": 2, "cfg": 1.0, "seed": 7}
LABELS = [0, 1, 2, 1]


def edm_coefficients(t: torch.Tensor, s: float, sd: float):
    """c_skip, c_out (and c_in) of objective.preconditioner_coefficients' docstring, written out:
    c_skip = σd²t/(σd²t² + s²(1−t)²), c_out = σd·s(1−t)/√(σd²t² + s²(1−t)²), c_in = 1 (z_t)."""
    t = t.double()
    denom = sd**2 * t**2 + s**2 * (1 - t) ** 2
    return sd**2 * t / denom, sd * s * (1 - t) / denom.sqrt()


@pytest.fixture(scope="module")
def random_net():
    torch.manual_seed(0)
    net = pixeljit.JiT(TINY_NET)
    with torch.no_grad():  # the zero-initialised layers randomised: the output is not 0
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory, fmnist16):
    from pixeljit.training.loop import train

    out = tmp_path_factory.mktemp("sd") / "run"
    train(tiny_run(fmnist16(64), out, **EDM, **SAMPLED_RUN), progress=False)
    return out


def images(model) -> torch.Tensor:
    return model.sample(LABELS, **DRAW)


def test_denoiser_applies_the_trained_sigma_data():
    raw = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    z = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([0.0, 0.37, 0.9], dtype=torch.float64)
    scale = 0.7
    denoiser = NetDenoiser(lambda z, t, y: raw, "edm", scale, None, sigma_data=TRAINED)
    c_skip, c_out = edm_coefficients(t, scale, TRAINED)
    expected = c_skip.view(-1, 1, 1, 1) * z + c_out.view(-1, 1, 1, 1) * raw
    torch.testing.assert_close(denoiser(z, t, None), expected, rtol=1e-12, atol=1e-12)
    default = NetDenoiser(lambda z, t, y: raw, "edm", scale, None)
    c_skip, c_out = edm_coefficients(t, scale, DEFAULT)
    expected = c_skip.view(-1, 1, 1, 1) * z + c_out.view(-1, 1, 1, 1) * raw
    torch.testing.assert_close(default(z, t, None), expected, rtol=1e-12, atol=1e-12)


def test_sample_takes_sigma_data(random_net):
    """One Euler step from t = 0 lands on x̂(z, 0) = c_out(0)·net(z, 0, y) = σd·net(z, 0, y)."""
    torch.manual_seed(1)
    cfg = random_net.config
    noise = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    labels = torch.tensor([0, 2])
    raw = random_net(noise, torch.zeros(2), labels)
    for sd in (TRAINED, DEFAULT, 1.7):
        got = sample(random_net, labels, noise=noise, steps=1, method="euler",
                     preconditioner="edm", sigma_data=sd, noise_scale=1.0)  # fmt: skip
        torch.testing.assert_close(got, sd * raw, rtol=1e-5, atol=1e-6)
    plain = sample(random_net, labels, noise=noise, steps=1, method="euler",
                   preconditioner="edm", noise_scale=1.0)  # fmt: skip
    torch.testing.assert_close(plain, DEFAULT * raw, rtol=1e-5, atol=1e-6)
    for bad in (0.0, -1.0, math.nan, "0.3"):
        with pytest.raises(ValueError, match="sigma_data must be"):
            sample(random_net, labels, noise=noise, steps=1, preconditioner="edm", sigma_data=bad)


def test_run_export_hub_and_convert_sample_as_trained(run, tmp_path, capsys):
    model = load_trained(run)
    assert model.preconditioner == "edm" and model.sigma_data == TRAINED
    ref = images(model)
    settings = {**model.sampler.kwargs(), **DRAW, "noise_scale": model.noise_scale}  # the run's
    by_hand = sample(model.net, LABELS, **settings, preconditioner="edm", sigma_data=TRAINED)
    assert torch.equal(ref, by_hand)
    default = sample(model.net, LABELS, **settings, preconditioner="edm", sigma_data=DEFAULT)
    assert (ref - default).abs().max() > 1e-3  # the value matters for these weights

    exported = export_safetensors(model, tmp_path / "m.safetensors")
    with safe_open(str(exported), framework="pt") as f:
        assert json.loads(f.metadata()["objective"])["sigma_data"] == TRAINED
    hub = write_hub_folder(model, tmp_path / "hub")
    config = json.loads((hub / CONFIG_NAME).read_text())
    assert config["objective"]["sigma_data"] == TRAINED
    assert f"sigma_data {TRAINED}" in (hub / CARD_NAME).read_text()
    capsys.readouterr()
    assert main(["convert", str(run), str(tmp_path / "c.safetensors")]) == 0
    said = capsys.readouterr().out  # the summary names what the file records
    assert f"x-prediction, noise scale 1.0, edm pre-conditioner (sigma_data {TRAINED})" in said
    assert main(["convert", str(exported), "--hub", str(tmp_path / "chub")]) == 0
    sources = [exported, hub, tmp_path / "c.safetensors", tmp_path / "chub"]
    for source in sources:
        loaded = load_trained(source)
        assert loaded.sigma_data == TRAINED, source
        assert torch.equal(images(loaded), ref), source


def test_preview_grid_samples_with_the_trained_sigma_data(run, fmnist16, tmp_path, monkeypatch):
    from pixeljit.diffusion import sampler as sampler_module
    from pixeljit.training.previews import draw_grid

    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs.get("sigma_data", DEFAULT))
        return sample(*args, **kwargs)

    cfg = tiny_run(fmnist16(64), run, **EDM, **SAMPLED_RUN)  # the run's config
    assert cfg.objective.sigma_data == TRAINED
    monkeypatch.setattr(sampler_module, "sample", recording)
    draw_grid(cfg, load_trained(run).net, None, tmp_path / "grid.png")
    assert seen == [TRAINED]


def _with_objective(src, dst, objective: dict) -> str:
    """A copy of the .safetensors `src` whose metadata 'objective' is `objective` (as a file
    written by hand, or by a pixeljit that recorded no sigma_data, holds it)."""
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["objective"] = json.dumps(objective)
    save_file(tensors, str(dst), metadata=meta)
    return str(dst)


def test_files_without_sigma_data_load_as_trained_with_the_default(random_net, tmp_path):
    objective = {"prediction": "x", "noise_scale": 1.0, "preconditioner": "edm"}
    model = TrainedModel(random_net, preconditioner="edm", noise_scale=1.0, sigma_data=DEFAULT)
    new = export_safetensors(model, tmp_path / "new.safetensors")
    old = _with_objective(new, tmp_path / "old.safetensors", objective)  # before the field
    loaded = load_trained(old)
    assert loaded.sigma_data == DEFAULT
    expected = sample(random_net, LABELS, **DRAW, noise_scale=1.0, preconditioner="edm",
                      sigma_data=DEFAULT)  # fmt: skip
    assert torch.equal(images(loaded), expected)

    hub = write_hub_folder(model, tmp_path / "hub")  # then made as an earlier version wrote it
    config = json.loads((hub / CONFIG_NAME).read_text())
    del config["objective"]["sigma_data"]
    (hub / CONFIG_NAME).write_text(json.dumps(config))
    _with_objective(hub / WEIGHTS_NAME, hub / WEIGHTS_NAME, objective)
    loaded = load_trained(hub)
    assert loaded.sigma_data == DEFAULT
    assert torch.equal(images(loaded), expected)

    # an objective that does not use it writes none: such files load in earlier versions too
    plain = TrainedModel(random_net, noise_scale=1.0)
    assert "sigma_data" not in plain.objective_metadata()
    assert load_trained(export_safetensors(plain, tmp_path / "plain.safetensors")).sigma_data == 0.5


HOSTILE = [math.nan, 0.0, -0.3, "0.3", True, None]


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_hostile_sigma_data_is_refused_naming_the_file(random_net, tmp_path, value):
    model = TrainedModel(random_net, preconditioner="edm", noise_scale=1.0, sigma_data=TRAINED)
    good = export_safetensors(model, tmp_path / "good.safetensors")
    objective = {"prediction": "x", "noise_scale": 1.0, "preconditioner": "edm",
                 "sigma_data": value}  # fmt: skip
    bad = _with_objective(good, tmp_path / "bad.safetensors", objective)
    with pytest.raises(ValueError, match="sigma_data must be a finite number > 0") as err:
        load_trained(bad)
    assert str(err.value).startswith(bad) and "\n" not in str(err.value)

    hub = write_hub_folder(model, tmp_path / "hub")
    config = json.loads((hub / CONFIG_NAME).read_text())
    config["objective"]["sigma_data"] = value
    (hub / CONFIG_NAME).write_text(json.dumps(config))  # NaN: refused as JSON allows no NaN
    wanted = "not a number JSON allows" if value != value else "sigma_data must be a finite"
    with pytest.raises(ValueError, match=wanted) as err:
        load_trained(hub)
    assert str(hub / CONFIG_NAME) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="sigma_data must be a finite number > 0"):
        TrainedModel(random_net, preconditioner="edm", sigma_data=value)


def test_the_sample_and_eval_commands_sample_as_trained(run, tmp_path):
    """`pixeljit sample` and `pixeljit eval --save-images` draw what `load_trained(run).sample`
    does with the run's σ_data (they passed none: 0.5)."""
    import csv

    import numpy as np
    from PIL import Image

    from pixeljit.files.images import to_uint8

    model = load_trained(run)
    assert model.sigma_data == TRAINED

    def expected(labels: list[int]) -> np.ndarray:  # (N, H, W, C) uint8, as the files hold
        drawn = model.sample(labels, steps=2, cfg=1.0, seed=7)
        wrong = model.sample(labels, steps=2, cfg=1.0, seed=7, sigma_data=DEFAULT)
        assert not torch.equal(to_uint8(drawn), to_uint8(wrong))
        return to_uint8(drawn).permute(0, 2, 3, 1).numpy()

    out = tmp_path / "s.npz"
    argv = ["sample", str(run), "--num", "4", "--steps", "2", "--cfg", "1", "--seed", "7",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    drawn = np.load(out)
    assert np.array_equal(drawn["arr_0"], expected(drawn["labels"].tolist()))
    pngs = tmp_path / "pngs"
    argv = ["eval", "--checkpoint", str(run), "--num-images", "10", "--steps", "2", "--cfg", "1",
            "--seed", "7", "--metrics", "is", "--save-images", str(pngs)]  # fmt: skip
    assert main(argv) == 0
    with open(pngs / "labels.csv", newline="") as f:
        labels = [int(row["label"]) for row in csv.DictReader(f)]
    saved = np.stack([np.asarray(Image.open(pngs / f"{k:06d}.png")) for k in range(10)])
    assert np.array_equal(saved.reshape(expected(labels).shape), expected(labels))
