"""`eval --ref fashion-mnist|emoji` is measured in the channels of the images it scores: where
they are not the data set's own (emoji in grey, Fashion-MNIST in RGB), that is said, since the
statistics are then of converted images (the colour emoji were turned grey without a word)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

from pixeljit.cli.evaluate_ref import say_converted
from pixeljit.data.prepare import native_channels

MAIN, OTHER = SimpleNamespace(is_main=True), SimpleNamespace(is_main=False)


@pytest.mark.parametrize(
    "ref, channels, said",
    [
        ("emoji", 1, "--ref emoji is measured in grey, as X are: its RGB images are converted"),
        ("fashion-mnist", 3, "measured in RGB, as X are: its grey images are converted"),
        ("emoji", 3, None),
        ("fashion-mnist", 1, None),
        ("/some/packed-or-image-folder", 1, None),  # a folder's own channels are not known here
    ],
)
def test_a_builtin_reference_in_other_channels_is_said(ref, channels, said, capsys):
    say_converted(ref, channels, "X", MAIN)
    out = capsys.readouterr().out
    assert (said in out) if said else out == ""
    say_converted(ref, channels, "X", OTHER)  # said once, by the main process
    assert capsys.readouterr().out == ""


def test_native_channels_are_what_prepare_packs_by_default(tmp_path):
    """The note's "its grey / RGB images" is what `prepare` packs without --channels."""
    from pixeljit.data import prepare

    grey = prepare("fashion-mnist", 16, tmp_path / "f", split="test", limit=4)
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    Image.new("L", (16, 16), 100).save(folder / "a.png")  # a grey image in a folder: repeated
    colour = prepare(tmp_path / "images", 16, tmp_path / "i")
    assert grey.image_shape[0] == native_channels("fashion-mnist") == 1
    assert colour.image_shape[0] == native_channels(str(tmp_path / "images")) == 3
    assert native_channels("emoji") == 3
