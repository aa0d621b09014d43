"""`eval --images DIR/` reads the folder's labels.csv (as `sample --out DIR/` and `eval
--save-images` write it) for the class accuracy, as it reads an `.npz`'s labels: matched to the
classifier's classes by the names it gives, else taken as numbered; a labels.csv that does not
describe the folder's images is said, and the accuracy left out."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from pixeljit.cli import main
from pixeljit.data import PackedDataset
from pixeljit.data.fashion_mnist import CLASS_NAMES
from pixeljit.files.images import LABELS_CSV, save_labels_csv, save_pngs
from pixeljit.metrics import class_accuracy, create_extractor
from pixeljit.metrics.image_sources import folder_labels

NUM = 40


@pytest.fixture(scope="module")
def real(fmnist16):
    """NUM real held-out 16-px Fashion-MNIST images (N, 1, 16, 16) uint8 and their labels."""
    data = PackedDataset(fmnist16(NUM))
    return torch.from_numpy(data.slice(0, NUM)), torch.from_numpy(data.labels[:NUM])


def _folder(tmp_path, images, labels, names=CLASS_NAMES):
    folder = tmp_path / "pngs"
    save_pngs(images, folder)
    save_labels_csv(folder, labels.tolist(), names)
    return folder


def _accuracy(folder, tmp_path, capsys) -> float | None:
    out = tmp_path / "scores.json"
    assert main(["eval", "--images", str(folder), "--metrics", "is", "--out", str(out),
                 "--overwrite"]) == 0  # fmt: skip
    capsys.readouterr()
    return json.loads(out.read_text())["scores"].get("class_accuracy")


def test_a_folder_labels_csv_gives_the_class_accuracy(real, tmp_path, capsys):
    images, truth = real
    expected = class_accuracy(images, truth, create_extractor("fmnist-cnn"))
    assert expected > 0.5  # real images in the classifier's own numbering (chance is 0.1)
    folder = _folder(tmp_path, images, truth)
    labels, names = folder_labels(folder)
    assert labels.tolist() == truth.tolist()
    assert names == {int(c): CLASS_NAMES[c] for c in truth}
    assert _accuracy(folder, tmp_path, capsys) == pytest.approx(expected)


def test_labels_are_matched_to_the_classifier_by_the_names_the_csv_gives(real, tmp_path, capsys):
    """An image folder's model numbers the classes alphabetically ('Ankle boot' = 0): with its
    names in labels.csv the accuracy is the true one; without names they are taken as they are."""
    images, truth = real
    right = class_accuracy(images, truth, create_extractor("fmnist-cnn"))
    alphabetical = sorted(CLASS_NAMES)
    relabelled = torch.tensor([alphabetical.index(CLASS_NAMES[c]) for c in truth])
    folder = _folder(tmp_path, images, relabelled, alphabetical)
    assert _accuracy(folder, tmp_path, capsys) == pytest.approx(right)
    save_labels_csv(folder, relabelled.tolist(), None)  # "class c": no names
    assert _accuracy(folder, tmp_path, capsys) < right / 2


@pytest.mark.parametrize(
    "edit, said",
    [
        (lambda rows: rows[:-1], "has no row for 000039.png"),
        (lambda rows: [*rows, ["000040.png", "3", "Dress"]], "lists 000040.png, which"),
        (lambda rows: [["name", "cls"], *rows[1:]], "does not start with the header"),
        (lambda rows: [*rows[:2], ["000001.png", "-1", "x"], *rows[3:]], "line 3"),
        (lambda rows: [*rows[:2], [rows[2][0], rows[1][1], "Sneaker"], *rows[3:]],
         "names label 9 both 'Ankle boot' and 'Sneaker'"),
    ],
)  # fmt: skip
def test_a_labels_csv_that_does_not_fit_is_said(real, tmp_path, capsys, edit, said):
    images, truth = real
    folder = _folder(tmp_path, images, truth)
    table = folder / LABELS_CSV
    rows = list(csv.reader(table.read_text().splitlines()))
    assert rows[1][1] == "9"  # the first test image is an ankle boot
    table.write_text("\n".join(",".join(row) for row in edit(rows)) + "\n")
    with pytest.raises(ValueError, match=said):
        folder_labels(folder)
    with pytest.warns(UserWarning, match=f"class accuracy left out: .*{said}"):
        assert _accuracy(folder, tmp_path, capsys) is None


def test_a_folder_without_labels_csv_has_no_labels(real, tmp_path, capsys):
    images, _ = real
    folder = tmp_path / "plain"
    save_pngs(images, folder)
    assert folder_labels(folder) is None
    assert _accuracy(folder, tmp_path, capsys) is None
