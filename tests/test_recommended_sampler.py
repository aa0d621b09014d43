"""Sampler flags left out take the model's recommended settings (a run's `sample` section, a hub
folder's config.json, the authors' values), in `pixeljit sample`, `pixeljit eval` and
`pixeljit reproduce nfe` alike; flags given override only themselves. `pixeljit sample RUN`
once drew every model with the paper's Heun-50 and no guidance, whatever the model recommended.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import pixeljit
from conftest import write_raw_safetensors
from pixeljit.checkpoints.hub_write import write_hub_folder
from pixeljit.checkpoints.load import TrainedModel, load_trained
from pixeljit.cli import build_parser, main
from pixeljit.cli.sampler_args import describe_sampler, sampler_from_args
from pixeljit.diffusion.sampler import FAST_SAMPLER, SamplerConfig, sample
from pixeljit.files.images import to_uint8

TINY = pixeljit.JiTConfig(image_size=16, patch_size=4, in_channels=1, hidden_size=32, depth=2,
                          num_heads=2, num_classes=10, bottleneck_dim=8, in_context_len=2,
                          in_context_start=1)  # fmt: skip
# what the hub folder recommends: every field away from SamplerConfig's defaults
RECOMMENDED = SamplerConfig(steps=3, method="euler", grid="shifted", shift=2.0, cfg=2.5,
                            interval=(0.2, 1.0), t_eps=0.1)  # fmt: skip
LABELS = [1, 1, 3, 3]
SEED = 5
MIN_GAP = 20  # of 255: images of another sampler setting differ by at least this somewhere


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    net = pixeljit.JiT(TINY)
    with torch.no_grad():  # randomise the zero-initialised layers so the settings matter
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="module")
def hub(tiny_net, tmp_path_factory):
    model = TrainedModel(tiny_net, class_names=tuple(f"c{k}" for k in range(10)),
                         description="tiny", sampler=RECOMMENDED)  # fmt: skip
    return write_hub_folder(model, tmp_path_factory.mktemp("hub") / "tiny")


def _library(net, labels, seed, **settings) -> np.ndarray:
    settings.setdefault("noise_scale", 1.0)  # the hub model's (sample()'s default: 16/256)
    images = sample(net, labels, seed=seed, **settings)
    return to_uint8(images).permute(0, 2, 3, 1).numpy().astype(int)  # NHWC like the files


def _cli_sample(source, tmp_path, *flags) -> np.ndarray:
    npz = tmp_path / f"s{len(list(tmp_path.iterdir()))}.npz"
    argv = ["sample", str(source), "--labels", "1", "3", "--num", "4", "--seed", str(SEED),
            "--device", "cpu", "--out", str(npz), *flags]  # fmt: skip
    assert main(argv) == 0
    return np.load(npz)["arr_0"].astype(int)


def test_the_hub_folder_records_what_it_recommends(hub):
    assert load_trained(hub).sampler == RECOMMENDED


def test_sample_without_flags_draws_with_the_recommended_settings(hub, tiny_net, tmp_path, capsys):
    got = _cli_sample(hub, tmp_path)
    assert np.abs(got - _library(tiny_net, LABELS, SEED, **RECOMMENDED.kwargs())).max() <= 1
    # and not with SamplerConfig's defaults (what `pixeljit sample` once used for every model)
    assert np.abs(got - _library(tiny_net, LABELS, SEED, steps=3)).max() > MIN_GAP
    out = capsys.readouterr().out
    assert "euler, 3 steps, shifted 2 grid, cfg 2.5 on (0.2, 1), t_eps 0.1: the model's" in out


def test_a_flag_given_overrides_only_itself(hub, tiny_net, tmp_path, capsys):
    got = _cli_sample(hub, tmp_path, "--cfg", "1")
    unguided = {**RECOMMENDED.kwargs(), "cfg": 1.0}
    assert np.abs(got - _library(tiny_net, LABELS, SEED, **unguided)).max() <= 1
    assert np.abs(got - _library(tiny_net, LABELS, SEED, **RECOMMENDED.kwargs())).max() > MIN_GAP
    assert "recommended settings, with --cfg as given" in capsys.readouterr().out


def test_fast_replaces_the_solver_and_keeps_the_recommended_guidance(hub, tiny_net, tmp_path):
    got = _cli_sample(hub, tmp_path, "--fast")
    fast = dataclasses.replace(RECOMMENDED, **FAST_SAMPLER).kwargs()  # no shift off its grid
    assert fast["cfg"] == 2.5 and fast["method"] == "dpm++3m" and fast["grid"] == "uniform"
    assert np.abs(got - _library(tiny_net, LABELS, SEED, **fast)).max() <= 1


def test_a_model_without_a_recommendation_samples_with_the_defaults(tiny_net, tmp_path, capsys):
    path = tmp_path / "tiny.safetensors"
    pixeljit.save_safetensors(tiny_net, path)
    model = load_trained(path)
    assert model.sampler is None  # and no objective: ObjectiveConfig's, as training defaults to
    assert (model.prediction, model.noise_scale) == ("x", tiny_net.config.image_size / 256)
    images = tmp_path / "out"
    images.mkdir()
    got = _cli_sample(path, images, "--steps", "3")
    expected = _library(tiny_net, LABELS, SEED, steps=3, noise_scale=None)  # heun, cfg 1
    assert np.abs(got - expected).max() <= 1
    out = capsys.readouterr().out
    assert "heun, 3 steps, uniform grid, cfg 1: SamplerConfig's defaults" in out
    assert "with --steps as given" in out
    # a hub folder of it writes the defaults into config.json: still no recommendation
    hub = tmp_path / "hub"
    assert main(["convert", str(path), "--hub", str(hub)]) == 0
    assert load_trained(hub).sampler is None
    assert "pixeljit's defaults (the source records none)" in (hub / "README.md").read_text()


def test_eval_samples_with_the_recommended_settings(hub, tiny_net, tmp_path, fmnist16, capsys):
    pngs = tmp_path / "pngs"
    argv = ["eval", "--checkpoint", str(hub), "--num", "8", "--ref", str(fmnist16(64)),
            "--metrics", "fd", "--batch-size", "8", "--device", "cpu", "--save-images",
            str(pngs)]  # fmt: skip
    assert main(argv) == 0
    got = np.stack([np.asarray(Image.open(pngs / f"{k:06d}.png")) for k in range(8)])
    balanced = list(range(8))  # eval's labels: class k mod 10 for image k
    expected = _library(tiny_net, balanced, 0, **RECOMMENDED.kwargs())[..., 0]
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert "euler, 3 steps" in capsys.readouterr().out


def test_nfe_takes_guidance_from_the_recommendation_unless_given():
    from pixeljit.cli.reproduce_nfe import nfe_config
    from pixeljit.experiments.nfe import DEFAULT_CFG

    parser = build_parser()
    base = ["reproduce", "nfe", "--checkpoint", "c", "--ref", "r"]
    args = parser.parse_args(base)
    config = nfe_config(args, True, RECOMMENDED)
    assert (config.cfg, config.interval, config.shift, config.t_eps) == (2.5, (0.2, 1.0), 2.0, 0.1)
    config = nfe_config(parser.parse_args([*base, "--cfg", "1.5", "--interval", "0", "1"]), True,
                        RECOMMENDED)  # fmt: skip
    assert (config.cfg, config.interval, config.shift) == (1.5, (0.0, 1.0), 2.0)
    no_rec = nfe_config(args, True, None)
    assert (no_rec.cfg, no_rec.interval) == (DEFAULT_CFG, SamplerConfig().interval)
    assert nfe_config(args, False, RECOMMENDED).cfg == 1.0  # an unconditional model: unguided


def test_describe_names_the_source():
    args = build_parser().parse_args(["sample", "ckpt", "--steps", "7"])
    sampler = sampler_from_args(args, RECOMMENDED)
    assert sampler == SamplerConfig(**{**RECOMMENDED.kwargs(), "steps": 7})
    text = describe_sampler(sampler, args, RECOMMENDED)
    assert text.endswith("the model's recommended settings, with --steps as given")
    every = ["sample", "ckpt", "--steps", "2", "--method", "heun", "--grid", "shifted", "--shift",
             "3", "--cfg", "1", "--interval", "0.1", "1", "--t-eps", "0.05"]  # fmt: skip
    args = build_parser().parse_args(every)
    assert describe_sampler(sampler_from_args(args, RECOMMENDED), args, RECOMMENDED).endswith(
        ": as given"
    )


def test_a_safetensors_export_keeps_the_recommendation(hub, tiny_net, tmp_path):
    from pixeljit.checkpoints.load import export_safetensors

    path = export_safetensors(load_trained(hub), tmp_path / "tiny.safetensors")
    assert load_trained(path).sampler == RECOMMENDED
    images = tmp_path / "out"
    images.mkdir()
    got = _cli_sample(path, images)
    assert np.abs(got - _library(tiny_net, LABELS, SEED, **RECOMMENDED.kwargs())).max() <= 1


@pytest.mark.parametrize(
    "sampler, problem",
    [({"steps": 0}, "invalid sampler settings"), ({"solver": "rk4"}, "fields among"),
     (["euler"], "fields among"), ({"interval": [0.9, 0.1]}, "invalid sampler settings")],
)  # fmt: skip
def test_bad_sampler_metadata_is_refused_naming_the_file(tiny_net, tmp_path, sampler, problem):
    path = tmp_path / "bad.safetensors"
    with pytest.raises(ValueError, match=f"bad.safetensors.*{problem}"):
        pixeljit.save_safetensors(tiny_net, path, sampler=sampler)  # never written
    assert not path.exists()
    write_raw_safetensors(tiny_net, path, sampler=sampler)
    with pytest.raises(ValueError, match=f"bad.safetensors.*{problem}"):
        load_trained(path)


def test_an_unconditional_model_recommends_no_guidance_and_no_class_names(tmp_path, capsys):
    """An unconditional run keeps its preset's CFG in its sample section and its data set's
    class names: `pixeljit sample RUN` refused it ('cannot be guided') and its hub folder did
    not load back ('10 class names for num_classes 0')."""
    import dataclasses

    torch.manual_seed(1)
    net = pixeljit.JiT(dataclasses.replace(TINY, num_classes=0)).eval()
    model = TrainedModel(net, class_names=tuple(f"c{k}" for k in range(10)), sampler=RECOMMENDED)
    assert model.sampler == SamplerConfig(**{**RECOMMENDED.kwargs(), "cfg": 1.0})
    assert model.class_names is None
    folder = write_hub_folder(model, tmp_path / "hub")
    assert load_trained(folder).sampler.cfg == 1.0
    npz = tmp_path / "u.npz"
    assert main(["sample", str(folder), "--num", "2", "--device", "cpu", "--out", str(npz)]) == 0
    assert np.load(npz)["arr_0"].shape == (2, 16, 16, 1)
    assert "cfg 1, t_eps 0.1: the model's recommended settings" in capsys.readouterr().out


def test_a_loaded_model_samples_with_its_objective_and_recommendation(hub, tiny_net):
    """`pixeljit.sample(load_trained(...))` was refused, and the README showed no other way; a
    loaded model now samples itself: its recommendation, any keyword of sample() on top."""
    model = load_trained(hub)
    own = {**RECOMMENDED.kwargs(), "noise_scale": model.noise_scale}
    expected = sample(tiny_net, LABELS, seed=SEED, **own)
    assert torch.equal(model.sample(LABELS, seed=SEED), expected)
    fewer = sample(tiny_net, LABELS, seed=SEED, **{**own, "steps": 2})
    assert torch.equal(model.sample(LABELS, seed=SEED, steps=2), fewer)
    scaled = sample(tiny_net, LABELS, seed=SEED, **{**RECOMMENDED.kwargs(), "noise_scale": 2.0})
    assert torch.equal(model.sample(LABELS, seed=SEED, noise_scale=2.0), scaled)
    with pytest.raises(ValueError, match=r"call model.sample\(labels"):
        sample(model, LABELS)


def test_the_summary_line_names_seed_precision_and_every_setting_given(hub, tmp_path, capsys):
    """Enough to draw the same images again: the seed, the network's precision, a --noise-scale
    over the trained one and a --t-eps beyond the default were missing from the line."""
    noise_scale = load_trained(hub).noise_scale
    _cli_sample(hub, tmp_path, "--noise-scale", "0.5", "--t-eps", "0.2", "--amp", "none")
    out = capsys.readouterr().out
    assert (f"4 images (seed {SEED}, float32, noise scale 0.5 as given (trained with "
            f"{noise_scale:g})), euler, 3 steps, shifted 2 grid, cfg 2.5 on (0.2, 1), t_eps 0.2: "
            "the model's recommended settings, with --t-eps as given") in out  # fmt: skip
    _cli_sample(hub, tmp_path, "--amp", "bf16")
    assert f"4 images (seed {SEED}, bfloat16 autocast), euler, 3 steps" in capsys.readouterr().out
