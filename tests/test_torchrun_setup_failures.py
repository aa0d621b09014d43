"""Training set-up failures say what failed and how to fix it, under torchrun too.

When rank 0 failed packing the training data, the other ranks, waiting for it at a barrier,
printed gloo's "Connection closed by peer" instead of saying rank 0 had stopped the run. A
failure to pack into the data cache called the cache "the output folder", which no flag of
`train` names. A resume refused for a changed world size said "set these back", naming no
command that does."""

from __future__ import annotations

import pytest
from PIL import Image

from conftest import torchrun
from pixeljit.data.open import cache_entry, open_dataset
from pixeljit.files.cache import CACHE_ENV
from pixeljit.training.config_io import to_dict
from pixeljit.training.presets import get_preset
from pixeljit.training.resume import check_resume

SIZE = 8  # px: the raw folder's pack
TORCHRUN_TIMEOUT_S = 180  # two ranks start, fail and stop in seconds; a hang waits minutes
EXECUTION = {"device_type": "cpu", "precision": "fp32", "compiled": False,
             "checkpointed_graph": False, "adamw": "foreach", "world_size": 1,
             "micro_batch": 16, "strategy": "single", "fsdp_bf16_params": False,
             "bf16_residual": False}  # fmt: skip


def image_folder(folder, bad: bool = False):
    """A raw image folder of two classes; with `bad`, one file that is no image."""
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for k in range(2):
            Image.new("L", (SIZE, SIZE), 40 * k).save(folder / label / f"{k}.png")
    if bad:
        (folder / "a" / "broken.png").write_text("not an image")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("verb", ["train", "eval"])
def test_rank_0_failing_to_pack_the_data_stops_every_rank_saying_so(verb, tmp_path, monkeypatch):
    """The training data (`train`), or the reference data set of `eval --make-ref` (its cold
    `--ref DATASET` takes the same path), which rank 0 alone packs."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    raw = image_folder(tmp_path / "raw", bad=True)
    if verb == "train":
        flags = ["--preset", "fmnist-tiny", "--data", str(raw), "--out", str(tmp_path / "run"),
                 "--steps", "1", "--batch-size", "2", "--set", "run.device=cpu",
                 "--no-progress"]  # fmt: skip
        doing = "opening the training data"
    else:
        flags = ["--make-ref", str(raw), "--size", str(SIZE), "--channels", "1",
                 "--extractor", "fmnist-cnn", "--out", str(tmp_path / "ref.npz")]  # fmt: skip
        doing = "packing the reference data"
    done = torchrun([verb, *flags], timeout=TORCHRUN_TIMEOUT_S, cwd=tmp_path)
    err = done.stderr
    assert done.returncode != 0
    assert f"pixeljit {verb} (rank 0 of 2): error: cannot read image" in err, err[-3000:]
    assert (f"pixeljit {verb} (rank 1 of 2): error: rank 0 stopped the run while {doing} "
            "(rank 0's error says why)") in err, err[-3000:]  # fmt: skip
    assert "Connection closed" not in err, err[-3000:]


def test_an_unwritable_data_cache_is_named_with_its_variable(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "a-file" / "cache"))
    with pytest.raises(ValueError) as caught:
        open_dataset(str(image_folder(tmp_path / "raw")), SIZE, 1, progress=False)
    message = str(caught.value)
    assert "cannot write the data cache folder" in message, message
    assert f"set {CACHE_ENV} to a folder you can write" in message, message
    assert "output folder" not in message, message


def test_a_foreign_file_in_the_data_cache_is_named_with_its_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    raw = str(image_folder(tmp_path / "raw"))
    entry = cache_entry(raw, SIZE, 1, None)
    entry.mkdir(parents=True)
    (entry / "notes.txt").write_text("mine")
    with pytest.raises(ValueError) as caught:
        open_dataset(raw, SIZE, 1, progress=False)
    message = str(caught.value)
    assert f"data cache folder {entry} is not empty" in message, message
    assert f"delete {entry} (the data is packed again) or set {CACHE_ENV} to another" in message
    assert "output folder" not in message, message
    assert (entry / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("saved", "now", "command"),
    [(2, 1, "resume it under `torchrun --nproc_per_node 2`"),
     (4, 2, "resume it under `torchrun --nproc_per_node 4`"),
     (1, 2, "resume it without torchrun")],
)  # fmt: skip
def test_a_resume_refused_for_its_world_size_names_the_command(saved, now, command):
    config = to_dict(get_preset("fmnist-tiny"))
    checkpoint = {"config": config, "execution": {**EXECUTION, "world_size": saved}}
    with pytest.raises(ValueError, match="execution.world_size") as caught:
        check_resume(checkpoint, config, {**EXECUTION, "world_size": now}, "run/latest.pt",
                     allow_inexact=False)  # fmt: skip
    assert command in str(caught.value), str(caught.value)
