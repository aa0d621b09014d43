"""A flag that would do nothing is refused, naming it (a new user's probe found eval --images
scoring all 64 images of a file while --num 10 was given, and --shift, --ncols, --scale and
guidance of an unconditional model accepted and ignored); the sampler flags of `sample` and
`eval` are one set; a metric given too few images says how many it needs."""

from __future__ import annotations

import re

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
              ["--sweep-cfg", "1", "2", "0.5"], ["--emas", "all"],
              ["--attention", "fp32"]]  # fmt: skip
# messages name --num in full: under torchrun, torchrun's parser takes --num for --numa-binding
FULL_NAMES = {"--num": "--num-images"}


@pytest.mark.parametrize("flag", GENERATION, ids=lambda f: f[0])
def test_generation_flags_are_refused_with_images_and_make_ref(tmp_path, capsys, flag):
    images = ["eval", "--images", str(tmp_path / "x.npz"), "--ref", str(tmp_path / "r.npz")]
    make_ref = ["eval", "--make-ref", "fashion-mnist", "--size", "8", "--channels", "1",
                "--out", str(tmp_path / "s.npz")]  # fmt: skip
    named = FULL_NAMES.get(flag[0], flag[0])  # the flag as messages name it
    for argv, mode in ((images, "--images"), (make_ref, "--make-ref")):
        err = _error(capsys, [*argv, *flag])
        assert f"{named} has no effect with {mode}" in err and f"drop {named}" in err
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
    pixeljit.save_safetensors(pixeljit.JiT(TINY_NET), folder / "vpred.safetensors",
                              objective={"prediction": "v"})  # fmt: skip
    rng = np.random.default_rng(0)
    np.savez(folder / "one.npz", rng.integers(0, 256, (1, 28, 28, 1), dtype=np.uint8))
    classifier = create_extractor("fmnist-cnn")
    d = classifier.dim
    features = rng.standard_normal((8, d)).astype(np.float32)  # reproduce nfe scores P/R
    save_dataset_stats(folder / "ref.npz", DatasetStats(np.zeros(d), np.eye(d), 100,
                       classifier.stats_name, features, image_shape=(1, 28, 28)))  # fmt: skip
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


def test_too_few_images_are_refused_before_the_reference_is_measured(files, capsys, monkeypatch):
    """One image against a data-set --ref packed all 60,000 training images at the image's size
    and measured them before the count was checked."""

    def never(*args, **kwargs):
        raise AssertionError("the reference was measured before the count was checked")

    monkeypatch.setattr("pixeljit.evaluation.dataset_stats_for", never)
    argv = ["eval", "--images", str(files / "one.npz"), "--ref", "fashion-mnist", "--metrics",
            "fd", "pr"]  # fmt: skip
    assert "needs at least 2 images" in _error(capsys, argv)


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


# --interval without guidance, --t-eps where the clamp cancels or is never applied, --cfg on an
# unconditional model: each accepted and ignored before (a second probe; t_eps with dpm++3m gave
# byte-identical images, the same flag with heun changed pixels by up to 128 levels)
NO_EFFECT = [  # (model, flags, what the message says, the flag it says to drop)
    ("cond", ["--cfg", "1", "--interval", "0.2", "1"], "--interval has no effect without guidance",
     "--interval"),
    ("uncond", ["--interval", "0.2", "1"], "--interval has no effect without guidance",
     "--interval"),
    ("uncond", ["--fast", "--cfg", "2"], "is an unconditional model, which cannot be guided",
     "--cfg"),  # the same words in the three verbs
    ("cond", ["--fast", "--t-eps", "0.5"], "--t-eps has no effect with dpm++3m", "--t-eps"),
    ("cond", ["--method", "dpm++2m", "--t-eps", "0.5"], "--t-eps has no effect with dpm++2m",
     "--t-eps"),
    ("vpred", ["--method", "heun", "--t-eps", "0.5"], "a v-prediction model", "--t-eps"),
]  # fmt: skip


@pytest.mark.parametrize("verb", ["sample", "eval", "nfe"])
@pytest.mark.parametrize("model, extra, message, flag", NO_EFFECT)
def test_guidance_and_clamp_flags_that_would_do_nothing_are_refused(
    files, tmp_path, capsys, monkeypatch, verb, model, extra, message, flag
):
    def never(*args, **kwargs):
        raise AssertionError("sampled before the flags were checked")

    monkeypatch.setattr("pixeljit.diffusion.sampler.solve", never)  # refused before any sampling
    ckpt = str(files / f"{model}.safetensors")
    ref = str(files / "ref.npz")
    if verb == "nfe":
        if "--fast" in extra or "--method" in extra:  # nfe names its solvers with --methods
            i = extra.index("--method") if "--method" in extra else None
            extra = [e for e in extra if e != "--fast"]
            extra = (
                (["--methods", extra[i + 1]] + extra[:i] + extra[i + 2 :])
                if i is not None
                else ["--methods", "dpm++3m", *extra]
            )
        argv = ["reproduce", "nfe", "--checkpoint", ckpt, "--ref", ref, "--num", "4",
                "--budgets", "4", "--out", str(tmp_path / "nfe"), *extra]  # fmt: skip
    elif verb == "eval":
        argv = ["eval", "--checkpoint", ckpt, "--ref", ref, "--num", "4", "--metrics", "fd",
                *extra]  # fmt: skip
    else:
        argv = ["sample", ckpt, "--num", "2", "--out", str(tmp_path / "g.npz"), *extra]
    err = _error(capsys, argv)
    assert message in err and re.search(f"drop {flag}( |$)", err), err
    assert not any(tmp_path.iterdir())  # no sample file, no study folder


def test_t_eps_with_heun_on_an_x_prediction_model_still_acts(files, tmp_path):
    """The refusal above is only where the flag cannot act: with Heun it changes the images."""
    outs = []
    for t_eps in ("0.05", "0.5"):
        out = tmp_path / f"h{t_eps}.npz"
        argv = ["sample", str(files / "cond.safetensors"), "--num", "2", "--steps", "3",
                "--method", "heun", "--cfg", "1", "--t-eps", t_eps, "--out", str(out)]  # fmt: skip
        assert main(argv) == 0
        outs.append(np.load(out)["arr_0"])
    assert not np.array_equal(*outs)
