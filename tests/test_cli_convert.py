"""`pixeljit convert` end to end on the tiny reference checkpoint."""

from __future__ import annotations

import torch

import pixeljit
from pixeljit.cli import main


def test_convert_then_load(reference, tmp_path, capsys):
    src = tmp_path / "run"
    src.mkdir()
    torch.save(reference["checkpoint"], src / "checkpoint-last.pth")
    out = tmp_path / "tiny.safetensors"
    rc = main(["convert", str(src), str(out), "--weights", "model", "--in-context-start", "2"])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    net = pixeljit.load_safetensors(out)
    f = reference["forward"]
    with torch.no_grad():
        err = (net(f["z"], f["t"], f["y"]) - f["out"]).norm() / f["out"].norm()
    assert err < 1e-3


def test_convert_errors_are_clean(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "x.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["convert", str(tmp_path), str(tmp_path / "x.pt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
