"""`pixeljit convert` end to end on the tiny reference checkpoint."""

from __future__ import annotations

import torch

import pixeljit
from conftest import PARITY_REL_ERR, rel_err
from pixeljit.cli import main


def test_convert_then_load(reference, tmp_path, capsys):
    src = tmp_path / "run"
    src.mkdir()
    torch.save(reference["checkpoint"], src / "checkpoint-last.pth")
    out = tmp_path / "tiny.safetensors"
    rc = main(["convert", str(src), str(out), "--weights", "model", "--in-context-start", "2"])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    net = pixeljit.load_safetensors(out)
    authors = pixeljit.load_reference(src, weights="model", in_context_start=2)
    # the conversion is a copy: every tensor bit-exact, so the output is too
    converted, original = net.state_dict(), authors.state_dict()
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], original[k]) for k in original)
    f = reference["forward"]
    with torch.no_grad():
        out_converted = net(f["z"], f["t"], f["y"])
        assert torch.equal(out_converted, authors(f["z"], f["t"], f["y"]))
    assert rel_err(out_converted, f["out"]) <= PARITY_REL_ERR


def test_convert_errors_are_clean(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "x.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["convert", str(tmp_path), str(tmp_path / "x.pt")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
