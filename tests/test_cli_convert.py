"""`pixeljit convert` end to end on the tiny reference checkpoint."""

from __future__ import annotations

import torch

import pixeljit
from cli_errors import cli_error
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
    """One line each, exit 2, no traceback, nothing written."""
    missing = tmp_path / "missing"
    err = cli_error(capsys, ["convert", str(missing), str(tmp_path / "x.safetensors")])
    assert f"SOURCE {missing} does not exist: pass a pixeljit run folder" in err
    err = cli_error(capsys, ["convert", str(tmp_path), str(tmp_path / "x.pt")])
    assert f"output '{tmp_path / 'x.pt'}' must end in .safetensors: write e.g." in err
    assert sorted(tmp_path.iterdir()) == []
