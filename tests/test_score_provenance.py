"""Scores stay with the weights they measured: `pixeljit eval --out` records the checkpoint, step,
weights and a digest of them; `pixeljit convert --hub` publishes only the scores of the weights
it exports. And a score is only computed between images of one size: statistics record the
shape of the images they measured, and `eval` refuses a reference of another shape."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_run
from pixeljit.checkpoints.load import load_trained
from pixeljit.checkpoints.provenance import weights_digest
from pixeljit.cli import main
from pixeljit.data import PackedDataset
from pixeljit.training.loop import train


def _eval(source, ref, out, *extra) -> list[str]:
    return ["eval", "--checkpoint", str(source), "--num", "8", "--steps", "1", "--ref", str(ref),
            "--metrics", "fd", "--batch-size", "8", "--out", str(out), *extra]  # fmt: skip


@pytest.fixture
def run(tmp_path, fmnist16):
    """A 2-step run (EMAs 0.995 and 0.999, a preview grid at its last step) and its eval.json."""
    out = tmp_path / "run"
    train(tiny_run(fmnist16(64), out, **{"sample.every": 2}), progress=False)
    assert main(_eval(out, fmnist16(64), out / "eval.json")) == 0
    return out


def test_digest_names_the_weights_not_the_file(run, tmp_path):
    model = load_trained(run)
    export = tmp_path / "w.safetensors"
    assert main(["convert", str(run), str(export)]) == 0
    back = load_trained(export)
    assert weights_digest(back.net) == weights_digest(model.net)
    # the export names them too: messages about scores can say which weights they are
    assert (back.weights, back.step) == ("ema:0.995", 2) and "(ema:0.995)" in back.description
    assert weights_digest(load_trained(run, "ema:0.999").net) != weights_digest(model.net)
    with torch.no_grad():  # one element moved by one ulp is other weights
        p = next(model.net.parameters())
        p.view(-1)[0] = torch.nextafter(p.view(-1)[0], torch.tensor(np.inf))
    assert weights_digest(model.net) != weights_digest(load_trained(run).net)


def test_a_stale_eval_json_is_not_published_with_later_weights(run, fmnist16, tmp_path, capsys):
    recorded = json.loads((run / "eval.json").read_text())["model"]
    assert (recorded["step"], recorded["weights"]) == (2, "ema:0.995")
    assert recorded["checkpoint"] == str(run)
    # the run trains on; its eval.json still holds the scores of step 2
    assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 0
    capsys.readouterr()
    hub = tmp_path / "hub"
    assert main(["convert", str(run), "--hub", str(hub)]) == 0
    said = capsys.readouterr().out
    assert "was not used: it scored other weights (step 2, ema:0.995" in said
    assert "not these (step 4, ema:0.995)" in said
    card = (hub / "README.md").read_text()
    fd = json.loads((run / "eval.json").read_text())["scores"]["FD-FMNIST"]
    assert "Unknown: no evaluation of these weights" in card and f"{fd:.6g}" not in card
    # named explicitly, scores of other weights are refused, with the way out
    assert main(["convert", str(run), "--hub", str(tmp_path / "h2"),
                 "--scores", str(run / "eval.json")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "it scored other weights" in err and "--weights" in err
    assert not (tmp_path / "h2").exists() or not any((tmp_path / "h2").iterdir())


def test_scores_of_another_ema_are_refused_and_the_grid_says_whose_it_is(run, tmp_path, capsys):
    hub = tmp_path / "hub"
    assert main(["convert", str(run), "--hub", str(hub), "--weights", "ema:0.999"]) == 0
    assert "scored other weights (step 2, ema:0.995" in capsys.readouterr().out
    card = (hub / "README.md").read_text()
    assert "from its sampling average (ema:0.995), not these weights (ema:0.999)" in card
    assert main(["convert", str(run), "--hub", str(tmp_path / "same")]) == 0
    same = (tmp_path / "same" / "README.md").read_text()
    assert "from its sampling average (ema:0.995), with" in same and "not these" not in same


def test_a_sweep_names_the_weights_it_loaded(run, fmnist16, tmp_path, capsys):
    """Without --emas a sweep scores the default weights: each row names them as loaded
    ('ema:0.995', not null) with their digest, so `convert --scores` can check its best row."""
    out = tmp_path / "sweep.json"
    argv = ["eval", "--checkpoint", str(run), "--num", "8", "--steps", "2", "--ref",
            str(fmnist16(64)), "--sweep-cfg", "1.0", "2.0", "1.0", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert {r["weights"] for r in result["sweep"]} == {"ema:0.995"}
    assert result["sampler"]["cfg"] == result["best"]["cfg"]
    hub = tmp_path / "hub"
    assert main(["convert", str(run), "--hub", str(hub), "--scores", str(out)]) == 0
    card = (hub / "README.md").read_text()
    assert f"| FD-FMNIST | {result['best']['FD-FMNIST']:.6g} |" in card
    assert f"| cfg | {result['best']['cfg']:.6g} |" in card and "weights_sha256" not in card
    assert "Unverified" not in card


def test_statistics_of_another_image_size_are_refused(run, fmnist16, tmp_path, capsys):
    """The 16-px model against statistics measured at 20 px: the FD would measure the resize."""
    stats = tmp_path / "ref20.npz"
    make = ["eval", "--make-ref", str(fmnist16(64)), "--size", "20", "--channels", "1",
            "--extractor", "fmnist-cnn", "--out", str(stats)]  # fmt: skip
    # a packed folder is read as packed: statistics "at 20 px" of 16-px images are refused
    assert main(make) == 2 and not stats.exists()
    assert "is packed at 16×16 px with 1 channel(s), not the 20×20 px" in capsys.readouterr().err
    images20 = tmp_path / "ref20-images"
    images20.mkdir()
    for i, image in enumerate(PackedDataset(fmnist16(64)).slice(0, 24)):
        big = torch.nn.functional.interpolate(torch.from_numpy(image)[None].float(), size=20)
        Image.fromarray(big[0, 0].round().clamp(0, 255).byte().numpy()).save(images20 / f"{i}.png")
    make[2] = str(images20)
    assert main(make) == 0
    assert tuple(np.load(stats)["image_shape"]) == (1, 20, 20)
    capsys.readouterr()
    assert main(_eval(run, stats, tmp_path / "e.json")) == 2
    err = capsys.readouterr().err
    assert "holds statistics of 20×20-px 1-channel images" in err
    assert "but the model's images are 16×16-px 1-channel" in err
    assert "--make-ref DATASET --size 16 --channels 1" in err
    # scored images: their size is read from them; a --size that contradicts them is refused
    images = tmp_path / "imgs.npz"
    np.savez(images, arr_0=PackedDataset(fmnist16(64)).slice(0, 32).transpose(0, 2, 3, 1))
    base = ["eval", "--images", str(images), "--metrics", "fd", "--extractor", "fmnist-cnn"]
    assert main([*base, "--ref", str(stats)]) == 2
    assert "but the images of --images" in capsys.readouterr().err
    assert main([*base, "--ref", str(fmnist16(64)), "--size", "20"]) == 2
    assert "--size 20, but the images of --images" in capsys.readouterr().err
    out = tmp_path / "images.json"
    assert main([*base, "--ref", str(fmnist16(64)), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["scores"]["FD-FMNIST"] >= 0


def test_found_files_that_do_not_fit_are_passed_over_not_fatal(run, fmnist16, tmp_path, capsys):
    """In the run folder: a broken eval.json is left out with a note (not an error that blocks
    the export), and a stale eval.json does not hide a score.json of these weights."""
    (run / "eval.json").write_text("{bad")
    assert main(["convert", str(run), "--hub", str(tmp_path / "h1")]) == 0
    assert "eval.json was not used: scores file" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 0
    assert main(_eval(run, fmnist16(64), run / "score.json", "--seed", "3")) == 0
    capsys.readouterr()
    assert main(["convert", str(run), "--hub", str(tmp_path / "h2")]) == 0
    card = (tmp_path / "h2" / "README.md").read_text()
    fd = json.loads((run / "score.json").read_text())["scores"]["FD-FMNIST"]
    assert f"| FD-FMNIST | {fd:.6g} |" in card and "As recorded in `score.json`" in card


@pytest.mark.parametrize(
    "scores, why",
    [({"FD": 10**400}, "finite number"), ({"FD": float("nan")}, "finite number"),
     ({"model": {"fd": 3.0}, "num": 5}, "no 'scores'")],
)  # fmt: skip
def test_named_scores_files_are_checked(run, tmp_path, capsys, scores, why):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(scores))
    assert main(["convert", str(run), "--hub", str(tmp_path / "h"), "--scores", str(bad)]) == 2
    assert why in capsys.readouterr().err


def test_text_from_a_scores_file_is_shown_as_text(run, tmp_path):
    named = tmp_path / "named.json"
    named.write_text(json.dumps({"<b>FD</b>": "[x](http://e)"}))
    assert main(["convert", str(run), "--hub", str(tmp_path / "h"), "--scores", str(named)]) == 0
    card = (tmp_path / "h" / "README.md").read_text()
    assert "<b>" not in card and "](http://e)" not in card
    assert "| &#60;b&#62;FD&#60;/b&#62; | &#91;x&#93;(http://e) |" in card


def test_a_split_of_a_packed_reference_is_refused(run, fmnist16, tmp_path, capsys):
    assert main(_eval(run, fmnist16(64), tmp_path / "e.json", "--ref-split", "test")) == 2
    assert "--ref-split has no effect with the packed folder --ref" in capsys.readouterr().err


@pytest.mark.parametrize(
    "weights", [{"name": 5}, {"step": -1}, {"step": True}, {"name": "x", "other": 1}, [1]]
)
def test_a_safetensors_weights_record_is_checked(run, tmp_path, weights):
    import pixeljit
    from conftest import write_raw_safetensors

    path = tmp_path / "w.safetensors"
    net = load_trained(run).net
    with pytest.raises(ValueError, match="metadata 'weights' must be"):
        pixeljit.save_safetensors(net, path, weights=weights)  # never written
    write_raw_safetensors(net, path, weights=weights)
    with pytest.raises(ValueError, match="metadata 'weights' must be"):
        load_trained(path)


def test_weights_of_the_same_name_that_differ_say_their_digests():
    """Same step and weights name, other bytes (a copied eval.json, weights edited since): the
    note read "other weights (step 600, ema:0.995 of r), not these (step 600, ema:0.995)"."""
    from types import SimpleNamespace

    from pixeljit.checkpoints.provenance import DIGEST_KEY, mismatch

    record = {"step": 600, "weights": "ema:0.995", "checkpoint": "r", DIGEST_KEY: "a" * 64}
    model = SimpleNamespace(step=600, weights="ema:0.995")
    why = mismatch(record, model, "b" * 64)
    assert "under the same name as these: SHA-256 aaaaaaaaaaaa…, these bbbbbbbbbbbb…" in why
    assert mismatch(record, model, "a" * 64) is None
    other = mismatch(record, SimpleNamespace(step=700, weights="ema:0.995"), "b" * 64)
    assert other.endswith("not these (step 700, ema:0.995)")
