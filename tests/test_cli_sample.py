"""`pixeljit sample` end to end on a tiny random model, and the image writers it uses."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

import pixeljit
from conftest import TINY_MODEL as TINY
from conftest import tiny_run
from pixeljit.cli import main
from pixeljit.cli.sample import choose_labels, grid_layout
from pixeljit.diffusion.sampler import sample
from pixeljit.files.images import make_grid, save_npz, to_uint8


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    torch.manual_seed(0)
    net = pixeljit.JiT(TINY)
    with torch.no_grad():  # randomise the zero-initialised layers so samples differ by class
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    pixeljit.save_safetensors(net, path)
    return path


def test_cli_end_to_end(tiny_file, tmp_path):
    grid, npz, folder = tmp_path / "grid.png", tmp_path / "s.npz", tmp_path / "pngs"
    argv = ["sample", str(tiny_file), "--labels", "1", "3", "--num", "6", "--steps", "3",
            "--method", "euler", "--cfg", "2", "--batch-size", "4", "--device", "cpu",
            "--seed", "5", "--out", str(grid), "--out", str(npz), "--out", str(folder)]  # fmt: skip
    assert main(argv) == 0
    data = np.load(npz)
    assert data["arr_0"].shape == (6, 16, 16, 3) and data["arr_0"].dtype == np.uint8
    assert data["labels"].tolist() == [1, 1, 1, 3, 3, 3]
    # the same images as one library call: batches of 4 + 2 do not change the noise
    net = pixeljit.load_safetensors(tiny_file)
    expected = sample(
        net, [1, 1, 1, 3, 3, 3], steps=3, method="euler", cfg=2.0, interval=(0.1, 1.0), seed=5
    )
    expected = to_uint8(expected).permute(0, 2, 3, 1).numpy()
    assert np.abs(data["arr_0"].astype(int) - expected.astype(int)).max() <= 1
    assert len(np.unique(data["arr_0"])) > 10  # not a constant image
    pngs = sorted(folder.glob("*.png"))
    assert [p.name for p in pngs] == [f"{k:06d}.png" for k in range(6)]
    assert np.array_equal(np.asarray(Image.open(pngs[4])), data["arr_0"][4])
    rows = (folder / "labels.csv").read_text().splitlines()  # the class of each PNG
    assert rows == ["file,label,class"] + [
        f"{k:06d}.png,{c},class {c}" for k, c in enumerate([1, 1, 1, 3, 3, 3])
    ]
    with Image.open(grid) as im:  # 2 labelled rows of 3 cells, padding 2
        assert im.height == 2 * 16 + 3 * 2 and im.width > 3 * 16 + 4 * 2
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_cli_reads_authors_checkpoint_folder(reference, tmp_path):
    run = tmp_path / "jit-tiny"
    run.mkdir()
    torch.save(reference["checkpoint"], run / "checkpoint-last.pth")
    out = tmp_path / "ref.npz"
    argv = ["sample", str(run), "--weights", "model", "--in-context-start", "2", "--labels",
            "1", "2", "--num", "2", "--steps", "2", "--cfg", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    net = pixeljit.load_reference(reference["checkpoint"], weights="model", in_context_start=2)
    # the authors' noise scale at 32 px: max(1, 32/256) = 1 (sample()'s default is 32/256)
    expected = to_uint8(sample(net, [1, 2], steps=2, cfg=2.0, interval=(0.1, 1.0), seed=0,
                               noise_scale=1.0))  # fmt: skip
    got = np.load(out)["arr_0"]
    assert np.abs(got.astype(int) - expected.permute(0, 2, 3, 1).numpy().astype(int)).max() <= 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cfg", "-1"], "--cfg: cfg must lie in [0, 100.0] (1 = no guidance), got -1.0"),
        (["--interval", "0.5", "0.2"], "low < high"),
        (["--interval", "0.3", "0.3"], "hold no t"),
        (["--steps", "0"], "--steps: steps must lie in [1, 10000], got 0"),
        (["--labels", "7"], "outside [0, 4)"),
        (["--num", "0"], "--num must be ≥ 1 and ≤ 10,000,000, got 0"),
        (["--out", "x.jpg"], "--out x.jpg: use a .png (grid), a .npz (arrays) or a folder"),
        (["--out", ".png"], "--out .png has nothing before .png: name the file (e.g. "),  # not
        (["--out", ".NPZ"], "--out .NPZ has nothing before .NPZ: name the file"),  # a folder
        (["--device", "nonsense"], "--device 'nonsense' is not a device this command runs on"),
    ],
)
def test_cli_bad_arguments(tiny_file, tmp_path, capsys, extra, message):
    steps = [] if "--steps" in extra else ["--steps", "1"]  # a flag is given once
    argv = ["sample", str(tiny_file), *steps, "--out", str(tmp_path / "g.png"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pixeljit sample: error:" in err and message in err.split("error:")[1]
    assert not (tmp_path / "g.png").exists()


def test_cli_missing_checkpoint(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "none.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_label_choice_and_layout():
    assert choose_labels(6, 3, None) == [0, 0, 1, 1, 2, 2]
    labels = choose_labels(None, 1000, None)  # 8 each of 10 classes spread over the range
    assert len(labels) == 80 and sorted(set(labels)) == list(range(0, 1000, 100))
    assert choose_labels(None, 10, [4, 2]) == [4] * 8 + [2] * 8
    assert choose_labels(None, 0, None) is None
    assert choose_labels(4, 10, None) == [0, 2, 5, 7]  # --num alone: spread over the classes
    assert choose_labels(5, 10, [1, 2, 3, 4, 5]) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="--num 4 is fewer than the 5 --labels"):
        choose_labels(4, 10, [1, 2, 3, 4, 5])  # class 5 was dropped silently
    assert grid_layout([4] * 8 + [2] * 8, 16, None) == (8, ["class 4", "class 2"])
    assert grid_layout([0, 1, 2, 3, 4], 5, None) == (3, None)  # one image per class
    assert grid_layout([0, 0, 1], 3, 2) == (2, ["class 0", "class 1"])
    assert grid_layout([0, 1, 1], 3, 2) == (2, None)
    assert grid_layout(None, 10, None) == (4, None)


def test_to_uint8_matches_authors_rounding():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.5, 1.0, 2.0]).view(1, 1, 2, 3)
    u = to_uint8(x)
    # round(clip((x + 1) / 2 · 255)): 0.0 → 127.5 → 128 (round half to even), 0.5 → 191.25 → 191
    assert u.dtype == torch.uint8 and u.flatten().tolist() == [0, 0, 128, 191, 255, 255]
    # 127.5 has an odd floor, so round-half-up agrees there; these float32 inputs scale exactly to
    # halves with an even floor, where half-to-even (np.round) and half-up (floor(v + 0.5)) differ
    halves = torch.tensor([-0.007843166589736938, 0.5725489854812622, 0.9960784316062927])
    scaled = (halves.float() + 1) / 2 * 255  # to_uint8's arithmetic, in float32
    assert scaled.tolist() == [126.5, 200.5, 254.5]  # exact halves, no rounding noise
    as_np = (halves.numpy() + np.float32(1)) / np.float32(2) * np.float32(255)
    assert as_np.dtype == np.float32 and as_np.tolist() == [126.5, 200.5, 254.5]
    got = to_uint8(halves.view(1, 1, 1, 3)).flatten().tolist()
    assert got == np.round(as_np).astype(np.uint8).tolist() == [126, 200, 254]


def test_grid_places_images_and_draws_labels():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (5, 3, 8, 8), generator=g, dtype=torch.uint8)
    plain = np.asarray(make_grid(imgs, ncols=3, padding=2))
    assert plain.shape == (2 * 8 + 3 * 2, 3 * 8 + 4 * 2, 3)
    cell = plain[2 + 10 : 2 + 10 + 8, 2 + 10 : 2 + 10 + 8]  # row 1, col 1 = image 4
    assert np.array_equal(cell, imgs[4].permute(1, 2, 0).numpy())
    assert (plain[12:20, 22:30] == 255).all()  # the empty sixth cell stays background
    labelled = np.asarray(make_grid(imgs, ncols=3, row_labels=["cat", "dog"], padding=2))
    margin = labelled.shape[1] - plain.shape[1]
    assert margin > 0 and (labelled[:, :margin] < 128).any()  # text drawn in the margin
    assert np.array_equal(labelled[:, margin:], plain)
    grey = make_grid(imgs[:, :1], ncols=5, scale=2)
    assert grey.mode == "L" and grey.size == (5 * 16 + 6 * 2, 16 + 2 * 2)
    with pytest.raises(ValueError, match="row labels"):
        make_grid(imgs, ncols=3, row_labels=["one"])


def test_grid_labels_draw_accented_and_greek_letters_each_its_own():
    """Pillow's built-in font drew every non-ASCII letter as the same box ('ünï' → '□n□'):
    labels that differ only there rendered identically. Each of these must draw differently."""
    imgs = torch.zeros(1, 1, 24, 24, dtype=torch.uint8)
    words = ["ü", "é", "ß", "λ", "Ж", "u"]
    margins = [np.asarray(make_grid(imgs, ncols=1, row_labels=[w]))[:, :-26] for w in words]
    width = min(m.shape[1] for m in margins)
    drawn = {m[:, :width].tobytes() for m in margins}
    assert len(drawn) == len(words)


def test_save_npz_layout(tmp_path):
    imgs = torch.zeros(3, 1, 4, 4)
    path = save_npz(imgs, tmp_path / "a.npz", labels=torch.tensor([0, 1, 2]))
    data = np.load(path)
    assert data["arr_0"].shape == (3, 4, 4, 1) and (data["arr_0"] == 128).all()
    assert data["labels"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]


def _png_stack(folder, count: int) -> np.ndarray:
    return np.stack([np.asarray(Image.open(folder / f"{k:06d}.png")) for k in range(count)])


def test_training_runs_sample_with_their_objective(tmp_path, fmnist16):
    """A v-prediction run samples as v-prediction with its own noise scale, EMA by default, in
    `pixeljit sample` and `pixeljit eval` alike (both once sampled every run as x-prediction)."""
    from pixeljit.checkpoints.load import load_trained
    from pixeljit.training.loop import train

    data = fmnist16(64)
    objective = {"objective.prediction": "v", "objective.noise_scale": 0.5}
    train(tiny_run(data, tmp_path / "run", **objective), progress=False)
    model = load_trained(tmp_path / "run")
    assert (model.prediction, model.noise_scale) == ("v", 0.5)
    assert model.class_names[0] == "T-shirt/top" and "ema:0.995" in model.description
    assert not torch.equal(
        load_trained(tmp_path / "run", "model").net.final_layer.linear.weight,
        model.net.final_layer.linear.weight,
    )

    def library(labels, seed, **objective):
        kwargs = dict(steps=2, cfg=1.5, interval=(0.1, 1.0), seed=seed) | objective
        images = sample(model.net, labels, **kwargs)
        return to_uint8(images).permute(0, 2, 3, 1).numpy().astype(int)  # NHWC like the files

    own = dict(prediction="v", noise_scale=0.5)
    npz = tmp_path / "x.npz"
    assert main(["sample", str(tmp_path / "run"), "--steps", "2", "--cfg", "1.5", "--num", "4",
                 "--labels", "0", "1", "--seed", "3", "--out", str(npz)]) == 0  # fmt: skip
    got = np.load(npz)
    labels = got["labels"].tolist()
    assert labels == [0, 0, 1, 1]
    got = got["arr_0"].astype(int)
    assert np.abs(got - library(labels, 3, **own)).max() <= 1
    assert np.abs(got - library(labels, 3, prediction="x", noise_scale=0.5)).max() > 20
    assert np.abs(got - library(labels, 3, prediction="v", noise_scale=1.0)).max() > 20

    pngs, report = tmp_path / "eval-pngs", tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--num", "8", "--steps", "2",
                 "--cfg", "1.5", "--ref", str(data), "--metrics", "fd", "--batch-size", "8",
                 "--save-images", str(pngs), "--out", str(report)]) == 0  # fmt: skip
    evaluated = _png_stack(pngs, 8)[..., None].astype(int)  # grey PNGs → NHWC
    balanced = list(range(8))  # eval's labels: class k mod 10 for image k
    with open(pngs / "labels.csv", encoding="utf-8", newline="") as f:  # names with commas
        rows = list(csv.reader(f))
    assert rows == [["file", "label", "class"]] + [
        [f"{k:06d}.png", str(k), model.class_names[k]] for k in balanced
    ]
    assert np.abs(evaluated - library(balanced, 0, **own)).max() <= 1
    assert np.abs(evaluated - library(balanced, 0, prediction="x", noise_scale=0.5)).max() > 20

    exported = tmp_path / "run.safetensors"
    assert main(["convert", str(tmp_path / "run"), str(exported)]) == 0
    back = load_trained(exported)
    assert (back.prediction, back.noise_scale, back.class_names) == (
        "v",
        0.5,
        model.class_names,
    )
    with torch.no_grad():
        z, t, y = torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([0, 3])
        assert torch.equal(back.net(z, t, y), model.net(z, t, y))


def _stopped_on_batch(real, batch: int):
    """`sample` that raises KeyboardInterrupt (a Ctrl-C) when asked for batch `batch` (0-based)."""
    calls = []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) > batch:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return stopping


@pytest.mark.parametrize("verb", ["sample", "eval"])
def test_ctrl_c_names_the_folder_left_as_it_was(tiny_file, tmp_path, capsys, monkeypatch, verb):
    """Stopped after 4 of 12 images: the message said only "interrupted", and the folder held
    part of a set with no labels.csv. The set is staged and moved in only once whole: nothing
    is written, the folder is not made, and the message names it and how to finish."""
    import pixeljit.cli.sample as sample_cli
    import pixeljit.evaluation as evaluation

    module = sample_cli if verb == "sample" else evaluation
    monkeypatch.setattr(module, "sample", _stopped_on_batch(module.sample, 1))
    out = tmp_path / "pngs"
    common = ["--num", "12", "--steps", "1", "--batch-size", "4"]
    argv = (["sample", str(tiny_file), "--out", f"{out}/", *common] if verb == "sample" else
            ["eval", "--checkpoint", str(tiny_file), "--metrics", "is", "--save-images",
             str(out), *common])  # fmt: skip
    assert main(argv) == 130
    flag = "--out" if verb == "sample" else "--save-images"
    assert (f"nothing was written to {flag} {out}/: stopped before all 12 images were made (and "
            "their labels.csv); run the command again") in capsys.readouterr().err  # fmt: skip
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_attention_flag_changes_the_network_sample_runs(tiny_file, tmp_path):
    """--attention fp32 (the authors' numerics) computes another network than the default SDPA
    under bf16 autocast; --attention sdpa is the model's own (the images it draws anyway)."""

    def draw(name: str, *flags: str) -> np.ndarray:
        out = tmp_path / f"{name}.npz"
        argv = ["sample", str(tiny_file), "--num", "4", "--steps", "2", "--amp", "bf16",
                "--out", str(out), *flags]  # fmt: skip
        assert main(argv) == 0
        return np.load(out)["arr_0"]

    default, sdpa = draw("default"), draw("sdpa", "--attention", "sdpa")
    assert np.array_equal(default, sdpa)
    assert not np.array_equal(default, draw("fp32", "--attention", "fp32"))


def test_attention_flag_reaches_the_model_eval_loads(tiny_file, tmp_path, monkeypatch, capsys):
    import pixeljit.checkpoints.load as load

    asked = []

    def recorded(*args, **overrides):
        asked.append(overrides)
        raise RuntimeError("loaded")  # enough: what eval asked of the loader

    monkeypatch.setattr(load, "load_trained", recorded)
    argv = ["eval", "--checkpoint", str(tiny_file), "--num", "10", "--ref", str(tmp_path / "r.npz")]
    for flags, want in (([], {}), (["--attention", "fp32"], {"attention": "fp32"})):
        assert main([*argv, *flags]) == 2
        assert "loaded" in capsys.readouterr().err
        assert asked.pop() == want
