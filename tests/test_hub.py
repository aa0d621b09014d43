"""Hugging Face layout folders (`pixeljit convert --hub`): the round trip from a run, the model
card, and the refusals of hostile or broken folders (`hf://`: test_hub_remote.py)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import pixeljit
from hub_helpers import (
    SAMPLE_ARGS,
    broken,
    eval_args,
    images,
    same_weights,
    set_field,
)
from pixeljit.checkpoints.hub import CONFIG_NAME, MAX_CONFIG_BYTES, WEIGHTS_NAME
from pixeljit.checkpoints.hub_write import write_hub_folder
from pixeljit.checkpoints.load import authors_sampler, load_trained
from pixeljit.cli import main
from pixeljit.diffusion.sampler import SamplerConfig
from pixeljit.model import model_config

# ----------------------------------------------------------------------------- round trip


def test_run_to_hub_folder_loads_identically(hub_run, hub):
    original, back = load_trained(hub_run), load_trained(hub)
    assert sorted(p.name for p in hub.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "samples.png",
    ]  # fmt: skip
    assert same_weights(original, back)
    assert (back.prediction, back.noise_scale, back.preconditioner) == ("v", 0.5, "none")
    assert back.class_names == original.class_names and back.class_names[0] == "T-shirt/top"
    assert (back.weights, back.step, back.ema_decay) == ("ema:0.995", 2, 0.995)
    assert back.sampler == original.sampler == SamplerConfig(steps=2, cfg=1.5)
    assert back.net.config == original.net.config
    assert torch.equal(images(back), images(original))
    # the folder's weights file alone loads as the folder: sampler, weights and step included
    alone = load_trained(hub / "model.safetensors")
    assert (alone.sampler, alone.weights, alone.step) == (back.sampler, "ema:0.995", 2)
    # the grid is the run's own preview of the exported step, byte for byte
    assert (hub / "samples.png").read_bytes() == (hub_run / "samples-0000002.png").read_bytes()


def test_a_hub_folder_converts_again_with_its_grid(hub, tmp_path, capsys):
    """A folder converted again said 'the source holds no sample grid' beside its samples.png."""
    again = tmp_path / "again"
    assert main(["convert", str(hub), "--hub", str(again)]) == 0
    assert "; grid," in capsys.readouterr().out
    assert (again / "samples.png").read_bytes() == (hub / "samples.png").read_bytes()
    assert same_weights(load_trained(again), load_trained(hub))


def test_sample_and_eval_read_the_folder_as_the_run(hub_run, hub, tmp_path, fmnist16):
    got = {}
    for name, source in (("run", hub_run), ("hub", hub)):
        npz = tmp_path / f"{name}.npz"
        assert main(["sample", str(source), *SAMPLE_ARGS, "--out", str(npz)]) == 0
        got[name] = np.load(npz)["arr_0"]
    assert np.array_equal(got["run"], got["hub"])
    scores = {}
    for name, source in (("run", hub_run), ("hub", hub)):
        out = tmp_path / f"{name}-eval.json"
        assert main(eval_args(source, fmnist16(64), out)) == 0
        scores[name] = json.loads(out.read_text())
    assert scores["run"]["scores"] == scores["hub"]["scores"] and len(scores["hub"]["scores"]) >= 2
    # the record names each checkpoint, and the exported weights digest as the run's
    run_model, hub_model = scores["run"]["model"], scores["hub"]["model"]
    assert run_model["weights_sha256"] == hub_model["weights_sha256"]
    assert (run_model["checkpoint"], hub_model["checkpoint"]) == (str(hub_run), str(hub))


def test_model_card_front_matter_and_content(hub, hub_run):
    card = (hub / "README.md").read_text()
    assert card.startswith("---\n")
    front, body = card.split("---\n", 2)[1:]
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "pixeljit"
    assert "license" in meta and meta["license"] is None  # left for the publisher
    assert {"diffusion", "image-generation", "jit", "pixel-space"} <= set(meta["tags"])
    assert {"v-prediction", "class-conditional"} <= set(meta["tags"])
    assert "![samples](samples.png)" in body and "step 2" in body
    fd = json.loads((hub_run / "eval.json").read_text())["scores"]["FD-FMNIST"]
    assert f"| FD-FMNIST | {fd:.6g} |" in body  # the run's eval.json, which scored these weights
    assert "8 images, seed 0, heun 2 steps, CFG 1.5 on (0.1, 1)" in body
    assert "v-prediction, noise scale 0.5" in body and "T-shirt/top" in body
    params = sum(p.numel() for p in load_trained(hub_run).net.parameters())
    assert f"| parameters | {params:,} |" in body
    config = json.loads((hub / CONFIG_NAME).read_text())
    assert config["sampler"]["cfg"] == 1.5 and config["weights"]["ema_decay"] == 0.995


def test_scores_flag_and_unknown_scores(hub_run, tmp_path, capsys):
    scores = tmp_path / "sweep.json"
    best = {"weights": "ema:0.995", "cfg": 1.5, "FD-FMNIST": 3.25}  # records no weights digest
    scores.write_text(json.dumps({"sweep": [best], "best": best}))
    out = tmp_path / "hub"
    assert main(["convert", str(hub_run), "--hub", str(out), "--scores", str(scores)]) == 0
    card = (out / "README.md").read_text()
    assert "| FD-FMNIST | 3.25 |" in card and "sweep.json" in card
    assert "Unverified: the file does not record which weights it scored" in card
    assert "the model card marks them unverified" in capsys.readouterr().out  # said here too
    # the scores of images (eval --images), or a 'scores' that is no object: refused
    images = tmp_path / "images.json"
    images.write_text(json.dumps({"scores": {"FD-FMNIST": 1.0}, "images": "x.npz"}))
    malformed = tmp_path / "malformed.json"
    malformed.write_text(json.dumps({"scores": 5}))
    a_folder = tmp_path / "results"  # said "does not exist"
    a_folder.mkdir()
    for path, message in (
        (images, "scored the images of x.npz"),
        (malformed, "got int"),
        (a_folder, f"scores file {a_folder} is a folder: pass the JSON"),
    ):
        hub = tmp_path / f"hub-{path.stem}"
        argv = ["convert", str(hub_run), "--hub", str(hub), "--scores", str(path)]
        assert main(argv) == 2 and message in capsys.readouterr().err
        assert not hub.exists()
    # a .safetensors export records neither grid nor scores: the card says so; it does carry
    # the run's recommended sampler settings
    plain = tmp_path / "w.safetensors"
    assert main(["convert", str(hub_run), str(plain)]) == 0
    assert main(["convert", str(plain), "--hub", str(tmp_path / "bare")]) == 0
    card = (tmp_path / "bare" / "README.md").read_text()
    assert "None: the source holds no sample grid" in card and "Unknown: no evaluation" in card
    assert "the source's settings" in card and "## Recommended sampling" in card
    assert load_trained(tmp_path / "bare").sampler == load_trained(hub_run).sampler is not None
    assert not (tmp_path / "bare" / "samples.png").exists()
    # a file that records no sampler: the card names the defaults it fell back to, and does not
    # call them a recommendation (nor after a round trip through a hub folder)
    bare = tmp_path / "bare.safetensors"
    pixeljit.save_safetensors(load_trained(hub_run).net, bare)
    assert main(["convert", str(bare), "--hub", str(tmp_path / "bare2")]) == 0
    assert main(["convert", str(tmp_path / "bare2"), "--hub", str(tmp_path / "bare3")]) == 0
    for folder in ("bare2", "bare3"):
        card = (tmp_path / folder / "README.md").read_text()
        assert "pixeljit's defaults" in card and "Recommended" not in card, card


def test_authors_checkpoint_converts(reference, tmp_path):
    src = tmp_path / "authors"
    src.mkdir()
    torch.save(reference["checkpoint"], src / "checkpoint-last.pth")
    out = tmp_path / "hub"
    assert main(["convert", str(src), "--hub", str(out), "--in-context-start", "2"]) == 0
    authors = pixeljit.load_reference(src, in_context_start=2)
    back = load_trained(out)
    assert all(torch.equal(v, back.net.state_dict()[k]) for k, v in authors.state_dict().items())
    assert (back.weights, back.ema_decay, back.class_names) == ("model_ema1", 0.9999, None)
    card = (out / "README.md").read_text()
    assert yaml.safe_load(card.split("---\n")[1])["datasets"] == ["imagenet-1k"]
    assert "ImageNet-1k class indices 0–9" in card and "None: the source holds no sample" in card


def test_authors_recommended_sampler_follows_their_readme():
    h16 = authors_sampler(model_config("JiT-H/16"))
    assert (h16.method, h16.steps, h16.cfg, h16.interval) == ("heun", 50, 2.2, (0.1, 1.0))
    assert authors_sampler(model_config("JiT-L/32")).cfg == 2.5
    assert authors_sampler(model_config("JiT-G/16")) is None  # not released: no README value


# ------------------------------------------------------------------------------- refusals


def test_existing_folder_refused_without_overwrite(hub_run, hub, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in hub.iterdir()}
    assert main(["convert", str(hub_run), "--hub", str(hub)]) == 2
    err = capsys.readouterr().err
    assert "is not empty" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in hub.iterdir()} == before
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["convert", str(hub_run), "--hub", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    # --overwrite replaces an earlier export's files and leaves the user's
    copy = tmp_path / "copy"
    shutil.copytree(hub, copy)
    (copy / "notes.txt").write_text("mine")
    assert (
        main(["convert", str(hub_run), "--hub", str(copy), "--weights", "model", "--overwrite"])
        == 0
    )
    assert (copy / "notes.txt").read_text() == "mine"
    assert load_trained(copy).weights == "model"
    # a folder holding another training run (its latest.pt, or a milestone alone) or an authors'
    # checkpoint: loading it reads that, never the export
    for name, held in (("latest.pt", "a training run"), ("step-000000002.pt", "a training run"),
                       ("checkpoint-last.pth", "an authors' checkpoint")):  # fmt: skip
        other = tmp_path / f"other-{name}"
        other.mkdir()
        (other / name).write_bytes(b"x")
        argv = ["convert", str(hub_run), "--hub", str(other), "--overwrite"]
        assert main(argv) == 2 and f"holds {held}" in capsys.readouterr().err
        assert [p.name for p in other.iterdir()] == [name]
    assert main(["convert", str(hub_run), "out.safetensors", "--hub", str(copy)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["convert", str(hub_run)]) == 2
    assert "not neither" in capsys.readouterr().err
    assert main(["convert", str(hub_run), "x.safetensors", "--scores", "s.json"]) == 2
    assert "--scores has no effect without --hub" in capsys.readouterr().err


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: "{not json", "is not valid JSON"),
        (lambda c: '{"format": "pixeljit.hub/1", "format": "x"}', "duplicate keys"),
        (lambda c: json.dumps(c).replace('"noise_scale": 0.5', '"noise_scale": NaN'), "NaN"),
        (lambda c: [1, 2], "not a pixeljit hub config"),
        (lambda c: set_field(c, "format", "other/1"), "not a pixeljit hub config"),
        (lambda c: set_field(c, "extra", 1), "unknown fields ['extra']"),
        (lambda c: set_field(c, "architecture.depth", -1), "must be positive integers"),
        (lambda c: set_field(c, "architecture.depth", True), "must be positive integers"),
        (lambda c: set_field(c, "architecture.norm", "batch"), "invalid architecture"),
        (lambda c: set_field(c, "architecture.colour", 1), "unknown JiT config fields"),
        (lambda c: set_field(c, "objective.prediction", "z"), "prediction must be one of"),
        (lambda c: set_field(c, "objective.noise_scale", -1), "noise_scale must be"),
        (lambda c: set_field(c, "class_names", ["a"] * 11), "11 class names for num_classes 10"),
        (lambda c: set_field(c, "class_names", [1] * 10), "class_names must be a list of strings"),
        (lambda c: set_field(c, "weights.ema_decay", 2), "ema_decay must be"),
        (lambda c: set_field(c, "weights.step", False), "step must be"),
        (lambda c: set_field(c, "sampler.steps", 0), "invalid sampler settings"),
        (lambda c: set_field(c, "sampler.solver", "x"), "unknown 'sampler' fields"),
        (
            lambda c: set_field(c, "architecture.hidden_size", 64),
            "describe different architectures",
        ),
        # model.safetensors records its own objective (v, s = 0.5): config.json must agree, or
        # the weights would be sampled as another prediction target (other images, silently)
        (lambda c: set_field(c, "objective.prediction", "x"), "prediction 'v' there, 'x' in"),
        (lambda c: set_field(c, "objective.noise_scale", 1.0), "give different objectives"),
        # ... and its class names and which weights: a reordered list drew the wrong class for
        # a name, another step published scores for other weights
        (lambda c: set_field(c, "class_names", c["class_names"][::-1]), "different class names"),
        (lambda c: set_field(c, "weights.step", 999), "different weights (ema:0.995 at step"),
        (lambda c: set_field(c, "weights.name", "model"), "model at step"),
        # text where a number belongs is refused when read, not met by a TypeError mid-sampling
        (lambda c: set_field(c, "sampler.cfg", "2"), "cfg must be a number, got '2'"),
        (lambda c: set_field(c, "sampler.interval", ["0.1", 1]), "interval low must be a number"),
        (lambda c: set_field(c, "objective.noise_scale", "0.5"), "noise_scale must be a finite"),
    ],
)
def test_malformed_config_refused(hub, tmp_path, edit, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_trained(broken(hub, tmp_path, edit))


def test_shapes_that_do_not_fit_are_refused(hub, tmp_path):
    """Weights without pixeljit's metadata (as another tool would write them), checked against
    config.json alone: a wrong shape and a missing tensor are named."""
    folder = broken(hub, tmp_path, lambda c: c)
    state = load_file(hub / WEIGHTS_NAME)
    state["final_layer.linear.weight"] = state["final_layer.linear.weight"][:-1]
    save_file(state, os.path.join(folder, WEIGHTS_NAME))
    with pytest.raises(ValueError, match="shape mismatches.*final_layer.linear.weight"):
        load_trained(folder)
    del state["final_layer.linear.weight"]
    save_file(state, os.path.join(folder, WEIGHTS_NAME))
    with pytest.raises(ValueError, match="missing keys"):
        load_trained(folder)
    save_file(load_file(hub / WEIGHTS_NAME), os.path.join(folder, WEIGHTS_NAME))
    assert same_weights(load_trained(folder), load_trained(hub))  # no metadata needed
    broken(hub, tmp_path, lambda c: set_field(c, "architecture.depth", 3))
    save_file(load_file(hub / WEIGHTS_NAME), os.path.join(folder, WEIGHTS_NAME))
    with pytest.raises(ValueError, match="depth 3 but the weights hold blocks 0–1"):
        load_trained(folder)


def test_huge_config_and_missing_weights_refused(hub, tmp_path):
    folder = broken(hub, tmp_path, lambda c: json.dumps(c) + " " * MAX_CONFIG_BYTES)
    with pytest.raises(ValueError, match="over the"):
        load_trained(folder)
    folder = broken(hub, tmp_path, lambda c: c)
    os.remove(os.path.join(folder, WEIGHTS_NAME))
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        load_trained(folder)
    folder = broken(hub, tmp_path, lambda c: c)
    os.remove(os.path.join(folder, CONFIG_NAME))  # the generic "holds neither …" before
    with pytest.raises(FileNotFoundError, match="model.safetensors but no config.json") as err:
        load_trained(folder)
    assert "pass the file itself" in str(err.value)
    load_trained(os.path.join(folder, WEIGHTS_NAME))  # which loads


def test_non_finite_weights_refused(hub, tmp_path):
    folder = broken(hub, tmp_path, lambda c: c)
    state = load_file(hub / WEIGHTS_NAME)
    state["pos_embed"][0, 0, 0] = float("nan")
    save_file(state, os.path.join(folder, WEIGHTS_NAME))
    with pytest.raises(ValueError, match="non-finite"):
        load_trained(folder)
    model = load_trained(hub)
    with torch.no_grad():
        model.net.pos_embed.fill_(float("inf"))
    with pytest.raises(ValueError, match="non-finite"):
        write_hub_folder(model, tmp_path / "never")
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".never*"))


@pytest.mark.parametrize("inside", [False, True])
def test_one_set_of_weights_and_no_in_context_start(hub, capsys, inside):
    """A hub folder and a .safetensors (its own weights file here) hold one set of weights: any
    other choice is refused, never silently replaced by the one held."""
    hub = hub / "model.safetensors" if inside else hub
    with pytest.raises(ValueError, match="holds one set of weights"):
        load_trained(hub, "model")
    assert load_trained(hub, "ema:0.995").weights == load_trained(hub, "ema").weights == "ema:0.995"
    with pytest.raises(ValueError, match="holds one set of weights"):
        load_trained(hub, "ema:0.999")
    assert main(["sample", str(hub), "--in-context-start", "2"]) == 2
    assert "--in-context-start has no effect" in capsys.readouterr().err


def test_class_names_stand_for_their_indices(hub):
    """A loaded model maps its class names (any case) to indices; an unknown name lists them."""
    model = load_trained(hub)
    assert model.class_names and "Sneaker" in model.class_names
    sneaker = model.class_names.index("Sneaker")
    by_name = model.sample(["sneaker", 0], steps=1, seed=3)
    assert torch.equal(by_name, model.sample([sneaker, 0], steps=1, seed=3))
    # names in a NumPy array (a column of a table) too: refused as "not class indices" before
    array = model.sample(np.array(["Sneaker", "Sneaker"]), steps=1, seed=3)
    assert torch.equal(array, model.sample([sneaker, sneaker], steps=1, seed=3))
    with pytest.raises(
        ValueError, match="'Sneakers' is not a class name of this model: pass one of 'T-shirt"
    ):
        model.sample(["Sneakers"], steps=1)
