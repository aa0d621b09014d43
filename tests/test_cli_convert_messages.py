"""What `pixeljit convert` tells a new user: its help texts and which OUT names it takes."""

from __future__ import annotations

import argparse

import pytest
import torch

import pixeljit
from cli_errors import _parsers, cli_error
from pixeljit.cli import build_parser, main


def test_convert_help_has_a_description_and_names_every_source_kind():
    parser = _parsers()["convert"]
    assert parser.description and "Hub" in parser.description
    source = next(a.help for a in parser._actions if a.dest == "source")
    assert ".safetensors" in source and "Hub folder" in source and "hf://" in source, source
    top = build_parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    verb = next(a.help for a in sub._choices_actions if a.dest == "convert")
    assert ".safetensors export" in verb and "Hub folder" in verb, verb


@pytest.mark.parametrize("name", ["X.SAFETENSORS", "y.SafeTensors"])
def test_convert_takes_the_suffix_in_any_case(tiny_file, tmp_path, capsys, name):
    out = tmp_path / name
    assert main(["convert", str(tiny_file), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    net = pixeljit.load_safetensors(out)
    original = pixeljit.load_safetensors(tiny_file).state_dict()
    assert all(torch.equal(v, original[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("name", [".safetensors", ".SAFETENSORS"])
def test_convert_refuses_a_name_that_is_only_the_suffix(tiny_file, tmp_path, capsys, name):
    err = cli_error(capsys, ["convert", str(tiny_file), str(tmp_path / name)])
    assert "no name before .safetensors" in err and "model.safetensors" in err
    assert not list(tmp_path.iterdir())  # no hidden file written
