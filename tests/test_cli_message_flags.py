"""Every --flag an error message names exists on the verb the user ran (or on the verb of a
`pixeljit ...` command the message quotes), and no message tells a CLI user to pass a Python
keyword. The data layer used to tell a `train` user to pass `--download`, `--data-dir` or
`--skip-bad`, which only `prepare` has."""

from __future__ import annotations

import pytest
import torch

import pixeljit
from cli_errors import check_flags, cli_error
from conftest import TINY_NET

NAN = "nan"


@pytest.fixture(scope="module")
def authors_file(tmp_path_factory):
    """An authors'-format checkpoint of non-standard depth (needs --in-context-start)."""
    torch.manual_seed(0)
    state = {"net." + k: v for k, v in pixeljit.JiT(TINY_NET).state_dict().items()}
    path = tmp_path_factory.mktemp("authors") / "checkpoint-last.pth"
    torch.save({"model_ema1": state}, path)
    return path


def test_error_messages_name_only_flags_of_the_verb(
    tiny_file, authors_file, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("PIXELJIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("pixeljit.data.fashion_mnist.DEBIAN_DIR", tmp_path / "nothing")
    monkeypatch.delenv("PIXELJIT_INCEPTION_WEIGHTS", raising=False)
    missing = str(tmp_path / "missing")
    images = tmp_path / "imgs"
    images.mkdir()
    not_inception = tmp_path / "other-inception.pth"
    not_inception.write_bytes(b"not the standard weights")
    runs = {
        "sample": [
            [missing], [str(tiny_file), "--out", "x.txt"], [str(authors_file)],
            [str(tiny_file), "--labels", "7", "--out", str(tmp_path / "s.png")],
            [str(tiny_file), "--num", "0"], [str(tiny_file), "--cfg", NAN],
        ],
        "eval": [
            ["--images", str(images)], ["--make-ref", "fashion-mnist", "--size", "8"],
            ["--checkpoint", missing], ["--images", str(images), "--size", "8", "--channels", "1"],
            ["--checkpoint", str(authors_file), "--metrics", "is", "--device", "cpu"],
            ["--make-ref", "fashion-mnist", "--size", "8", "--channels", "1", "--extractor",
             "fmnist-cnn", "--out", str(tmp_path / "r.npz"), "--device", "cpu"],
            ["--images", str(images), "--size", "8", "--channels", "3", "--extractor",
             "inception-v3-fid", "--metrics", "is", "--device", "cpu"],
            ["--checkpoint", str(tiny_file), "--emas", "all", "--sweep-cfg", "1", "2", "1",
             "--device", "cpu"],
            ["--images", str(images), "--size", "8", "--channels", "3", "--extractor",
             "inception-v3-fid", "--inception-weights", str(not_inception), "--metrics", "is"],
        ],
        "convert": [
            [missing, str(tmp_path / "o.safetensors")], [str(tiny_file), "o.pt"],
            [str(authors_file), str(tmp_path / "o.safetensors")],
        ],
        "reproduce": [["toy", "--out", str(tiny_file)], ["toy", "--steps", "0"]],
    }  # fmt: skip
    named = {verb: set() for verb in runs}
    for verb, cases in runs.items():
        for argv in cases:
            named[verb] |= check_flags(verb, cli_error(capsys, [verb, *argv]))
    # the messages do name flags (the check above is not vacuous), each the verb's own
    assert {"--labels", "--num", "--cfg", "--in-context-start"} <= named["sample"]
    assert {"--make-ref", "--size", "--emas", "--in-context-start"} <= named["eval"]
    assert {"--in-context-start", "--hub"} <= named["convert"]
    assert {"--out", "--steps"} <= named["reproduce"]


def test_flag_checker_catches_foreign_flags():
    with pytest.raises(AssertionError, match="has no"):
        check_flags("sample", "pass --data-dir DIR")
    with pytest.raises(AssertionError, match="cannot pass"):
        check_flags("eval", "Pass allow_nonstandard=True to use it anyway.")
    check_flags("sample", "run `pixeljit prepare fashion-mnist --download --size 8 --out D`")
    check_flags("prepare", "pass --overwrite (Python: overwrite=True) to replace it")


def test_train_data_errors_name_only_train_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIXELJIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("pixeljit.data.fashion_mnist.DEBIAN_DIR", tmp_path / "nothing")
    broken = tmp_path / "images" / "cls"
    broken.mkdir(parents=True)
    (broken / "a.png").write_bytes(b"not a png at all")
    base = ["train", "--preset", "fmnist-tiny", "--steps", "1", "--no-progress"]
    cases = [
        [*base, "--data", "fashion-mnist", "--out", str(tmp_path / "r1")],
        [*base, "--data", str(tmp_path / "images"), "--out", str(tmp_path / "r2")],
        [*base, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r3")],
        ["train", "--resume", str(tmp_path / "missing")],
    ]
    messages = [cli_error(capsys, argv) for argv in cases]
    for message in messages:
        check_flags("train", message)
    assert "`pixeljit prepare fashion-mnist --download" in messages[0]
    assert "--skip-bad" in messages[1]  # still offered, as a `pixeljit prepare` command


def test_prepare_data_errors_name_only_prepare_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIXELJIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("pixeljit.data.fashion_mnist.DEBIAN_DIR", tmp_path / "nothing")
    argv = ["prepare", "fashion-mnist", "--size", "8", "--out", str(tmp_path / "o")]
    message = cli_error(capsys, argv)
    assert "--download" in check_flags("prepare", message)  # the way to fetch it, prepare's own
