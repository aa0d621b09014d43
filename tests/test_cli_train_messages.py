"""`pixeljit train` / `prepare` errors that come from the data layer name only flags those verbs
have (the data layer used to tell a `train` user to pass `--download`, `--data-dir` or
`--skip-bad`, which only `prepare` has)."""

from __future__ import annotations

from test_cli_validation import _check_flags, _error


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
    messages = [_error(capsys, argv) for argv in cases]
    for message in messages:
        _check_flags("train", message)
    assert "`pixeljit prepare fashion-mnist --download" in messages[0]
    assert "--skip-bad" in messages[1]  # still offered, as a `pixeljit prepare` command


def test_prepare_data_errors_name_only_prepare_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIXELJIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("pixeljit.data.fashion_mnist.DEBIAN_DIR", tmp_path / "nothing")
    argv = ["prepare", "fashion-mnist", "--size", "8", "--out", str(tmp_path / "o")]
    message = _error(capsys, argv)
    _check_flags("prepare", message)
