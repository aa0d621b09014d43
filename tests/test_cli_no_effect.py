"""A flag that would do nothing is refused, naming it (a new user's probe found eval --images
scoring all 64 images of a file while --num 10 was given, and --shift, --ncols, --scale and
guidance of an unconditional model accepted and ignored); the sampler flags of `sample` and
`eval` are one set; a metric given too few images says how many it needs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pixeljit
from conftest import TINY_NET
from pixeljit.cli import build_parser, main
from pixeljit.cli.sampler_args import FLAGS
from pixeljit.metrics import DatasetStats, create_extractor, save_dataset_stats


def _error(capsys, argv) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.split("error:", 1)[1]


GENERATION = [["--num", "10"], ["--steps", "3"], ["--method", "euler"], ["--grid", "edm"],
              ["--shift", "2"], ["--cfg", "3"], ["--interval", "0.2", "0.9"], ["--t-eps", "0.1"],
              ["--fast"], ["--amp", "none"], ["--seed", "5"], ["--batch-size", "7"],
              ["--weights", "model"], ["--save-images", "pngs"], ["--in-context-start", "1"],
              ["--sweep-cfg", "1", "2", "0.5"], ["--emas", "all"]]  # fmt: skip


@pytest.mark.parametrize("flag", GENERATION, ids=lambda f: f[0])
def test_generation_flags_are_refused_with_images_and_make_ref(tmp_path, capsys, flag):
    images = ["eval", "--images", str(tmp_path / "x.npz"), "--ref", str(tmp_path / "r.npz")]
    make_ref = ["eval", "--make-ref", "fashion-mnist", "--size", "8", "--channels", "1",
                "--out", str(tmp_path / "s.npz")]  # fmt: skip
    for argv, mode in ((images, "--images"), (make_ref, "--make-ref")):
        err = _error(capsys, [*argv, *flag])
        assert f"{flag[0]} has no effect with {mode}" in err and f"drop {flag[0]}" in err
    assert not any(tmp_path.iterdir())  # nothing read or written


@pytest.mark.parametrize("flag", [["--ref", "r.npz"], ["--metrics", "fd"]], ids=lambda f: f[0])
def test_scoring_flags_are_refused_with_make_ref(tmp_path, capsys, flag):
    argv = ["eval", "--make-ref", "fashion-mnist", "--size", "8", "--channels", "1", "--out",
            str(tmp_path / "s.npz"), *flag]  # fmt: skip
    assert f"{flag[0]} has no effect with --make-ref" in _error(capsys, argv)


def test_make_ref_names_a_wrong_suffix(tmp_path, capsys):
    argv = ["eval", "--make-ref", "fashion-mnist", "--size", "8", "--channels", "1"]
    assert "needs --out STATS.npz" in _error(capsys, argv)
    err = _error(capsys, [*argv, "--out", str(tmp_path / "r.json")])
    assert "not --out" in err and "r.json" in err and "*.npz" in err


def test_sample_and_eval_take_the_same_sampler_flags():
    """README: the sampler flags are the same for both verbs (eval had no --fast, no fp16)."""

    def options(verb):
        sub = build_parser()._subparsers._group_actions[0].choices[verb]
        return {o: a for a in sub._actions for o in a.option_strings}

    sample, evaluate = options("sample"), options("eval")
    for flag in [*FLAGS.values(), "--fast", "--amp"]:
        assert flag in sample and flag in evaluate, flag
        assert sample[flag].choices == evaluate[flag].choices, flag
    assert "fp16" in evaluate["--amp"].choices


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A conditional and an unconditional tiny .safetensors, 1-channel 28-px images and
    classifier statistics of that size."""
    folder = tmp_path_factory.mktemp("noeffect")
    torch.manual_seed(0)
    pixeljit.save_safetensors(pixeljit.JiT(TINY_NET), folder / "cond.safetensors")
    uncond = pixeljit.JiTConfig(**{**TINY_NET.to_dict(), "num_classes": 0})
    pixeljit.save_safetensors(pixeljit.JiT(uncond), folder / "uncond.safetensors")
    rng = np.random.default_rng(0)
    np.savez(folder / "one.npz", rng.integers(0, 256, (1, 28, 28, 1), dtype=np.uint8))
    classifier = create_extractor("fmnist-cnn")
    d = classifier.dim
    save_dataset_stats(folder / "ref.npz", DatasetStats(np.zeros(d), np.eye(d), 100,
                       classifier.stats_name, image_shape=(1, 28, 28)))  # fmt: skip
    return folder


def test_an_unconditional_model_is_not_guided_by_eval(files, capsys):
    """eval silently dropped --cfg 3 (and swept identical FDs over --sweep-cfg) for a model
    without classes, while recording the guidance it never used."""
    base = ["eval", "--checkpoint", str(files / "uncond.safetensors"), "--ref", "r.npz"]
    err = _error(capsys, [*base, "--cfg", "3", "--metrics", "fd"])
    assert "--cfg" in err and "unconditional" in err and "drop --cfg" in err
    err = _error(capsys, [*base, "--sweep-cfg", "1", "3", "1"])
    assert "--sweep-cfg" in err and "unconditional" in err


def test_too_few_images_name_the_count_they_need(files, capsys):
    argv = ["eval", "--images", str(files / "one.npz"), "--ref", str(files / "ref.npz"),
            "--metrics", "fd"]  # fmt: skip
    err = _error(capsys, argv)
    assert "fd needs at least 2 images (for a covariance), got 1" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--shift", "5"], "--shift has no effect on the uniform grid"),
        (["--out", "x.npz", "--ncols", "4"], "--ncols lays out a .png grid"),
        (["--out", "x.npz", "--scale", "2"], "--scale lays out a .png grid"),
        (["--out", "g.png", "--out", "g.png"], "given twice"),
    ],
)
def test_sample_refuses_flags_that_would_do_nothing(files, tmp_path, capsys, extra, message):
    extra = [str(tmp_path / e) if e.endswith((".npz", ".png")) else e for e in extra]
    argv = ["sample", str(files / "cond.safetensors"), "--steps", "1", *extra]
    if "--out" not in extra:
        argv += ["--out", str(tmp_path / "g.png")]
    assert message in _error(capsys, argv)
    assert not any(tmp_path.iterdir())


def test_a_shift_with_the_shifted_grid_and_the_summary_names_the_weights(files, tmp_path, capsys):
    out = tmp_path / "g.npz"
    argv = ["sample", str(files / "cond.safetensors"), "--steps", "2", "--grid", "shifted",
            "--shift", "5", "--num", "3", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "cond.safetensors" in printed and "shifted 5 grid" in printed
