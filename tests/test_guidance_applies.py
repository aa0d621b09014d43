"""Guidance that no evaluation would ever see: with few steps (or a narrow interval) no
evaluation time falls inside the open CFG interval, so a scale changes nothing; `--cfg 3` was
accepted and the summary said `cfg 3 on (0.1, 1)` over unguided images (a sampler probe)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pixeljit
from conftest import TINY_NET
from pixeljit.cli import build_parser, main
from pixeljit.cli.train import build_config
from pixeljit.diffusion.guidance import GuidedField
from pixeljit.diffusion.sampler import SamplerConfig


@pytest.mark.parametrize(
    "settings, times, guided",
    [
        ({"method": "heun", "steps": 1}, [0.0], 0),  # one Heun step is an Euler step at t = 0
        ({"method": "heun", "steps": 2}, [0.0, 0.5, 0.5], 2),
        ({"method": "euler", "steps": 10, "interval": (0.1, 0.9)}, [k / 10 for k in range(10)], 7),
        ({"method": "dpm++3m", "steps": 10, "interval": (0.95, 1.0)}, [k / 10 for k in range(10)],
         0),
        ({"method": "euler", "steps": 4, "interval": (0.0, 0.3)}, [0.0, 0.25, 0.5, 0.75], 2),
    ],
)  # fmt: skip
def test_the_evaluations_inside_the_open_interval_are_counted(settings, times, guided):
    sampler = SamplerConfig(cfg=3.0, **settings)
    assert sampler.evaluation_times().tolist() == pytest.approx(times)
    assert sampler.guided_evaluations() == guided


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("guidance")
    torch.manual_seed(0)
    net = pixeljit.JiT(TINY_NET)
    with torch.no_grad():  # away from adaLN-Zero's start, whose output ignores the label
        for p in net.parameters():
            p.normal_(0, 0.3)
    pixeljit.save_safetensors(net, folder / "plain.safetensors")
    guided = {"cfg": 2.0, "method": "dpm++3m", "steps": 10, "grid": "uniform"}
    pixeljit.save_safetensors(net, folder / "guided.safetensors", sampler=guided)
    return folder


def _refused(capsys, argv) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


NEVER = [
    (["--steps", "1", "--cfg", "3"], "heun with 1 step on the uniform grid evaluates the network "
     "at t = 0, none inside the guidance interval (0.1, 1)"),
    (["--method", "dpm++3m", "--steps", "10", "--cfg", "3", "--interval", "0.95", "1"],
     "at t = 0, 0.1, 0.2, …, 0.7, 0.8, 0.9, none inside the guidance interval (0.95, 1)"),
]  # fmt: skip


@pytest.mark.parametrize("flags, said", NEVER)
@pytest.mark.parametrize("verb", ["sample", "eval"])
def test_guidance_given_that_would_never_apply_is_refused(models, tmp_path, capsys, verb, flags,
                                                          said):  # fmt: skip
    ckpt = str(models / "plain.safetensors")
    if verb == "sample":
        argv = ["sample", ckpt, "--num", "2", "--out", str(tmp_path / "g.npz"), *flags]
    else:
        argv = ["eval", "--checkpoint", ckpt, "--num", "10", "--metrics", "is", *flags]
    err = _refused(capsys, argv)
    assert said in err and "take more --steps, widen --interval, or pass --cfg 1" in err, err
    assert not any(tmp_path.iterdir())


def test_a_cfg_sweep_that_would_never_apply_is_refused(models, capsys):
    argv = ["eval", "--checkpoint", str(models / "plain.safetensors"), "--num", "10", "--ref",
            "r.npz", "--steps", "1", "--sweep-cfg", "1", "3", "1"]  # fmt: skip
    err = _refused(capsys, argv)
    assert "guidance (cfg 2 / 3) would never apply" in err
    assert err.rstrip().endswith("take more --steps or widen --interval (--debug shows the "
                                 "traceback)")  # --cfg 1 is refused beside --sweep-cfg  # fmt: skip


def test_guidance_that_applies_somewhere_changes_the_images(models, tmp_path):
    """The boundary: Heun-2 evaluates at t = 0.5 (inside), so its scale is taken and acts."""
    outs = []
    for cfg in ("1", "3"):
        out = tmp_path / f"c{cfg}.npz"
        argv = ["sample", str(models / "plain.safetensors"), "--num", "2", "--steps", "2",
                "--cfg", cfg, "--out", str(out)]  # fmt: skip
        assert main(argv) == 0
        outs.append(np.load(out)["arr_0"])
    assert not np.array_equal(*outs)


def test_a_recommended_scale_with_too_few_steps_is_said_not_to_apply(models, tmp_path, capsys):
    """The model's own scale, not asked for: the images are made, and the summary says the
    guidance never applied instead of `cfg 2 on (0.1, 1)`."""
    argv = ["sample", str(models / "guided.safetensors"), "--num", "2", "--steps", "1",
            "--out", str(tmp_path / "g.npz")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "cfg 2 never applied (no evaluation inside (0.1, 1))" in out, out
    assert "on (0.1, 1)" not in out


def test_training_previews_refuse_guidance_asked_for_that_never_applies():
    base = ["train", "--preset", "fmnist-tiny", "--data", "fashion-mnist", "--out", "r"]
    parse = build_parser().parse_args
    with pytest.raises(ValueError, match=r"--set: sample.cfg 3 would never apply to the preview "
                       r"grids: dpm\+\+3m with sample.steps 1 .* at t = 0, none inside "
                       r"sample.interval \(0.1, 1\)"):  # fmt: skip
        build_config(parse([*base, "--set", "sample.cfg=3", "--set", "sample.steps=1"]))
    # the preset's own scale with fewer preview steps: only a faster, unguided preview
    assert build_config(parse([*base, "--set", "sample.steps=1"])).sample.steps == 1
    # only the interval asked for: it is what the message names beside the preset's scale
    with pytest.raises(ValueError, match=r"--set: with sample.interval \(0.5, 1\), sample.cfg "
                       r"2 would never apply to the preview grids"):  # fmt: skip
        build_config(parse([*base, "--set", "sample.interval=[0.5,1]", "--set",
                            "sample.steps=1"]))  # fmt: skip


@pytest.mark.parametrize("field", ["cfg", "t_eps"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_guided_field_refuses_a_scale_or_clamp_that_is_no_number(field, value):
    labels = torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match=f"must be finite, got {value}"):
        GuidedField(lambda z, t, y: z, labels, null_label=3, **{field: value})


def test_an_nfe_study_whose_rows_would_all_be_unguided_is_refused(models, tmp_path, capsys):
    """`reproduce nfe --cfg 3 --interval 0.5 1` with Euler-1 / Euler-2 (t = 0; t = 0, 0.5, the
    interval open) ran every row unguided under a header saying CFG 3; a study with some
    guided rows names the unguided ones."""
    ref = tmp_path / "ref.npz"
    ref.write_bytes(b"")  # read only after the rows are checked (then refused: not statistics)
    argv = ["reproduce", "nfe", "--checkpoint", str(models / "plain.safetensors"), "--ref",
            str(ref), "--num", "4", "--methods", "euler", "--grids", "uniform", "--cfg", "3",
            "--interval", "0.5", "1", "--out", str(tmp_path / "nfe")]  # fmt: skip
    err = _refused(capsys, [*argv, "--budgets", "1", "2"])
    assert "guidance (cfg 3) would never apply: euler with 2 steps" in err, err
    assert not (tmp_path / "nfe").exists()
    main([*argv, "--budgets", "2", "4"])  # Euler-4 evaluates at 0.75: guided
    assert "note: rows euler/uniform/2 are unguided" in capsys.readouterr().out
