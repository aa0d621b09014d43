"""The loaders' Python API (`load_reference`, `load_safetensors`, `load_trained`, `train`) as a
user calls it: empty and None arguments mean the same everywhere (an empty path never the
current folder, None the default), a misspelt override is named, a file or folder of another
kind is named as what it is with the loader that reads it, messages give the Python form of the
fix beside the flag, a loaded model prints in one line, and the weights keep float32 whatever
the default dtype."""

from __future__ import annotations

import pickle

import pytest
import torch

import pixeljit
from conftest import tiny_run
from pixeljit.checkpoints.load import _run_state
from pixeljit.training.loop import train

REF_START = 2  # the in-context start block of the authors' tiny reference network (its README)


@pytest.fixture(scope="module")
def authors_dir(tmp_path_factory, reference):
    """A folder holding an authors' checkpoint-last.pth (the tiny reference checkpoint)."""
    folder = tmp_path_factory.mktemp("authors")
    torch.save(reference["checkpoint"], folder / "checkpoint-last.pth")
    return folder


# ------------------------------------------------------------- empty and None arguments


def test_load_reference_refuses_an_empty_path_and_none(authors_dir, monkeypatch):
    """An empty path loaded ./checkpoint-last.pth from the current folder; None failed deep in
    pathlib with "expected str, bytes or os.PathLike object"."""
    monkeypatch.chdir(authors_dir)  # the current folder holds a checkpoint "" used to load
    with pytest.raises(ValueError, match="source is empty: .*never means the current folder"):
        pixeljit.load_reference("", in_context_start=REF_START)
    for bad, kind in ((None, "NoneType"), (3, "int"), (b"checkpoint-last.pth", "bytes")):
        with pytest.raises(TypeError, match=f"source must be a path to .*got {kind}") as err:
            pixeljit.load_reference(bad, in_context_start=REF_START)
        assert "expected str, bytes" not in str(err.value)
    with pytest.raises(TypeError, match="pass path.decode"):
        pixeljit.load_reference(b"checkpoint-last.pth")
    net = pixeljit.load_reference(".", in_context_start=REF_START)  # the folder said as a path
    assert net.config.in_context_start == REF_START


def test_load_safetensors_and_load_trained_refuse_empty_and_non_paths(tiny_file, monkeypatch):
    monkeypatch.chdir(tiny_file.parent)
    with pytest.raises(ValueError, match="path is empty: pass a .safetensors file"):
        pixeljit.load_safetensors("")
    for bad, kind in ((None, "NoneType"), (7, "int"), (b"tiny.safetensors", "bytes")):
        with pytest.raises(TypeError, match=f"path must be a path to a .safetensors .*got {kind}"):
            pixeljit.load_safetensors(bad)
        with pytest.raises(TypeError, match=f"source must be a path .*got {kind}"):
            pixeljit.load_trained(bad)
    assert pixeljit.load_safetensors("tiny.safetensors").config.depth == 2


def test_none_and_empty_mean_the_same_in_every_loader(tiny_file, reference):
    """load_trained(device=None) was refused ("None is not a device") where the other loaders
    take None as the CPU; weights="" silently meant the default; load_reference(weights=None)
    said the checkpoint "has no None weights"."""
    model = pixeljit.load_trained(tiny_file, device=None)
    assert model.device == torch.device("cpu")
    with pytest.raises(ValueError, match="weights is empty .*leave it out \\(None\\)"):
        pixeljit.load_trained(tiny_file, weights="")
    checkpoint = reference["checkpoint"]
    default = pixeljit.load_reference(checkpoint, weights=None, in_context_start=REF_START)
    ema1 = pixeljit.load_reference(checkpoint, "model_ema1", in_context_start=REF_START)
    raw = pixeljit.load_reference(checkpoint, "model", in_context_start=REF_START)
    ema1_state = ema1.state_dict()
    assert all(torch.equal(v, ema1_state[k]) for k, v in default.state_dict().items())
    assert not torch.equal(default.blocks[0].mlp.w3.weight, raw.blocks[0].mlp.w3.weight)
    with pytest.raises(ValueError, match="weights is empty"):
        pixeljit.load_reference(checkpoint, weights="", in_context_start=REF_START)
    state = {k.removeprefix("net."): v for k, v in checkpoint["model"].items()}  # a bare dict
    with pytest.raises(ValueError, match="no 'ema' weights: pass weights= 'model' / 'model_ema1'"):
        pixeljit.load_reference(state, weights="ema", in_context_start=REF_START)


# --------------------------------------------------------------------- unknown overrides


def test_an_unknown_override_is_named_with_the_known_fields(reference, tmp_path):
    """It read "the weights imply an invalid JiT config: JiTConfig.__init__() got an unexpected
    keyword argument 'foo'", blaming the checkpoint."""
    with pytest.raises(ValueError) as err:
        pixeljit.load_reference(reference["checkpoint"], in_context_start=REF_START, foo=1)
    message = str(err.value)
    assert "unknown JiT config fields ['foo']" in message and "'attention'" in message
    assert "imply" not in message and "__init__" not in message
    with pytest.raises(ValueError, match="unknown JiT config fields \\['foo'\\]"):  # unread
        pixeljit.load_reference(tmp_path / "missing.pth", foo=1)
    net = pixeljit.load_reference(reference["checkpoint"], in_context_start=REF_START,
                                  attention="fp32")  # fmt: skip
    assert net.config.attention == "fp32"


# ------------------------------------------------------------ files of another kind


def test_load_safetensors_names_a_folder_as_a_folder(authors_dir, tiny_file, tmp_path):
    """An existing folder was said not to exist."""
    for folder, what, fix in (
        (authors_dir, "an authors' checkpoint folder (checkpoint-last.pth)",
         f"load_trained('{authors_dir}')"),
        (tiny_file.parent, "a folder", f"pass the file itself ({tiny_file})"),
        (tmp_path, "a folder", "pass a NAME.safetensors file"),
    ):  # fmt: skip
        with pytest.raises(ValueError) as err:
            pixeljit.load_safetensors(folder)
        message = str(err.value)
        assert f"{folder} is {what}, not a .safetensors file" in message and fix in message
        assert "does not exist" not in message and "not found" not in message


def test_load_safetensors_names_torch_files_and_their_loader(authors_dir, tmp_path):
    """A torch.save checkpoint failed with 'header too large'."""
    authors = authors_dir / "checkpoint-last.pth"
    run = tmp_path / "latest.pt"
    torch.save({"step": 1}, run)
    other = tmp_path / "weights.bin"
    torch.save({"step": 1}, other)
    named = tmp_path / "misnamed.safetensors"
    torch.save({"step": 1}, named)
    legacy = tmp_path / "old.pth"
    with open(legacy, "wb") as fh:
        pickle.dump({"step": 1}, fh, protocol=2)
    for path, what, fix in (
        (authors, "an authors' checkpoint (torch.save)", f"pixeljit.load_trained('{authors}')"),
        (run, "a pixeljit training checkpoint (torch.save)", f"pixeljit.load_trained('{run}')"),
        (other, "a PyTorch checkpoint (torch.save)", "rename it to NAME.pt"),
        (named, "a PyTorch checkpoint (torch.save)", "rename it to NAME.pt"),
        (legacy, "a Python pickle (the legacy torch.save format)", "pixeljit.save_safetensors"),
    ):
        with pytest.raises(ValueError) as err:
            pixeljit.load_safetensors(path)
        message = str(err.value)
        assert f"{path} is {what}, not a .safetensors file" in message and fix in message
        assert "header" not in message
    # what load_safetensors points to reads it
    assert pixeljit.load_trained(authors, in_context_start=REF_START).weights == "model_ema1"


# --------------------------------------------------------- the Python form of each fix


def test_train_into_a_used_folder_gives_the_python_form(tmp_path, fmnist16):
    """`train(cfg)` from Python was told only `pixeljit train --resume …` and --restart."""
    for existing, resumable in (("latest.pt", True), ("config.yaml", False)):
        out = tmp_path / existing.split(".")[0]
        out.mkdir()
        (out / existing).write_text("an earlier run's file")
        with pytest.raises(ValueError) as err:  # a lone config.yaml is judged once data is open
            train(tiny_run(fmnist16(64), out), progress=False)
        message = str(err.value)
        assert "pass --restart (Python: restart=True)" in message
        assert (f"`pixeljit train --resume {out}` (Python: resume='{out}')" in message) is resumable
        assert (out / existing).read_text() == "an earlier run's file"


def test_weights_messages_give_the_flag_and_the_keyword(tiny_file):
    """load_trained's errors named only the command line's --weights."""
    both = "--weights on the command line, weights= in Python"
    with pytest.raises(ValueError, match=f"drop the weights choice \\({both}\\)"):
        pixeljit.load_trained(tiny_file, weights="model")
    ckpt = {"ema": {"decays": [0.99], "names": [], "shadows": [[]]}, "config": {"sample": {}}}
    with pytest.raises(ValueError, match=f"weights 'ema:x' \\({both}\\): write ema:<decay>"):
        _run_state(ckpt, "run/latest.pt", "ema:x")
    with pytest.raises(ValueError, match=f"weights \\({both}\\) must be 'ema'.*got 'best'"):
        _run_state(ckpt, "run/latest.pt", "best")


# ------------------------------------------------------------- what a loaded model is


def test_a_loaded_model_prints_in_one_short_line(tiny_file, authors_dir):
    """repr printed the whole network, one line per layer."""
    model = pixeljit.load_trained(tiny_file)
    text = repr(model)
    count = sum(p.numel() for p in model.net.parameters() if p.requires_grad)
    assert "\n" not in text and len(text) < 300 and "Linear" not in text
    assert text.startswith(f"TrainedModel(source='{tiny_file}'")
    for part in ("weights=None", "image_size=8", "num_classes=3", f"parameters={count:,}"):
        assert part in text
    authors = repr(pixeljit.load_trained(authors_dir, in_context_start=REF_START))
    assert "weights='model_ema1'" in authors and "image_size=32" in authors


def test_a_float64_default_dtype_loads_float32_weights(tiny_file, reference):
    """With torch.set_default_dtype(torch.float64) the loaded weights came back float64 although
    the file holds F32."""
    want = pixeljit.load_trained(tiny_file).net.state_dict()
    torch.set_default_dtype(torch.float64)
    try:
        model = pixeljit.load_trained(tiny_file)
        net = pixeljit.load_reference(reference["checkpoint"], in_context_start=REF_START)
        assert torch.get_default_dtype() == torch.float64  # nothing global changed
    finally:
        torch.set_default_dtype(torch.float32)
    got = model.net.state_dict()
    assert {v.dtype for v in got.values()} == {torch.float32}
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    images = model.sample([0, 1], steps=2, seed=0)
    assert images.dtype == torch.float32 and bool(torch.isfinite(images).all())
