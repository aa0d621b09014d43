"""`hf://` model names: parsed, refused when malformed, and loaded through huggingface_hub's own
cache lookup, offline, on a cache laid out here (the folder itself: test_hub.py)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from hub_helpers import (
    COMMIT,
    SAMPLE_ARGS,
    broken,
    images,
    same_weights,
    set_field,
)
from pixeljit.checkpoints import hub as hub_module
from pixeljit.checkpoints.hub import (
    CONFIG_NAME,
    HEADER_ALLOWANCE,
    WEIGHTS_NAME,
    load_hub,
    weights_bound,
)
from pixeljit.checkpoints.hub_remote import parse_hf_uri
from pixeljit.checkpoints.load import load_trained
from pixeljit.cli import main
from pixeljit.model import JiT
from pixeljit.model.jit import MAX_FIELDS

# ---------------------------------------------------------------------------------- hf://


@pytest.mark.parametrize(
    "uri, parsed",
    [
        ("hf://org/name", ("org/name", None)),
        ("hf://Org-1/jit.b_16@main", ("Org-1/jit.b_16", "main")),
        ("hf://org/name@refs/pr/3", ("org/name", "refs/pr/3")),
        (f"hf://org/name@{COMMIT}", ("org/name", COMMIT)),
    ],
)
def test_hf_names_parse(uri, parsed):
    assert parse_hf_uri(uri) == parsed


@pytest.mark.parametrize(
    "uri", ["hf://name", "hf://org/name/extra", "hf://org/-x", "hf://o--x/name", "hf://org/n@",
            "hf://org/name@../x", "hf://org/na me", "hf:///name"],
)  # fmt: skip
def test_bad_hf_names_refused(uri):
    with pytest.raises(ValueError, match="is not a Hub model name"):
        load_trained(uri)


def _hub_cache(root, hub, repo="org--name"):
    """`root` laid out as huggingface_hub's cache holding `hub` as the `main` of org/name."""
    snapshot = root / f"models--{repo}" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for file in hub.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (root / f"models--{repo}" / "refs").mkdir()
    (root / f"models--{repo}" / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, hub, monkeypatch):
    from huggingface_hub import constants

    root = tmp_path / "hf-cache"
    snapshot = _hub_cache(root, hub)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


def test_hf_uri_offline_from_the_cache(offline_cache, hub):
    local = load_trained(hub)
    for uri in ("hf://org/name", "hf://org/name@main", f"hf://org/name@{COMMIT}"):
        model = load_trained(uri)
        assert same_weights(model, local) and model.sampler == local.sampler
        assert model.description == f"hf://org/name@{COMMIT} (ema:0.995)"
        assert torch.equal(images(model), images(local))
    with pytest.raises(FileNotFoundError, match=r"not in the local Hub cache, and the Hub was "
                       r"not asked \(HF_HUB_OFFLINE is set\)"):  # fmt: skip
        load_trained("hf://org/name@v2")
    with pytest.raises(FileNotFoundError, match="could not get config.json"):
        load_trained("hf://other/model")


def test_hf_weights_over_their_bound_are_not_fetched(offline_cache):
    bound = weights_bound(offline_cache / CONFIG_NAME)
    with open(offline_cache / WEIGHTS_NAME, "r+b") as f:
        f.truncate(bound + 1)  # sparse: the size is asked for before any download
    with pytest.raises(ValueError, match="not downloaded"):
        load_hub("hf://org/name")


def test_weights_bound_is_exact_and_cheap(hub, tmp_path):
    """float64 for every parameter the config implies plus the header allowance, counted without
    building a block per claimed layer (a config claiming 10⁹ blocks answers at once)."""
    params = sum(p.numel() for p in load_trained(hub).net.state_dict().values())
    assert weights_bound(hub / CONFIG_NAME) == params * 8 + HEADER_ALLOWANCE
    deep = broken(hub, tmp_path, lambda c: set_field(c, "architecture.depth", MAX_FIELDS["depth"]))
    deep_config = dataclasses.replace(load_trained(hub).net.config, depth=MAX_FIELDS["depth"])
    with torch.device("meta"):  # exact at the deepest allowed config too: the full count
        deep_params = sum(p.numel() for p in JiT(deep_config).state_dict().values())
    built = []
    real_jit = hub_module.JiT

    def recording_jit(config):
        built.append(config.depth)
        return real_jit(config)

    with pytest.MonkeyPatch.context() as patch:  # cheap: one block is built, not 256
        patch.setattr(hub_module, "JiT", recording_jit)
        bound = weights_bound(os.path.join(deep, CONFIG_NAME))
    assert bound == deep_params * 8 + HEADER_ALLOWANCE and built == [1]
    (tmp_path / "x").mkdir()
    deeper = broken(hub, tmp_path / "x", lambda c: set_field(c, "architecture.depth", 10**9))
    with pytest.raises(ValueError, match="depth must be ≤ 256"):  # refused at once
        weights_bound(os.path.join(deeper, CONFIG_NAME))


def test_hf_uri_on_the_command_line_offline(hub, tmp_path):
    """`pixeljit sample hf://…` in a fresh process whose huggingface_hub reads HF_HUB_CACHE and
    HF_HUB_OFFLINE=1 from the environment, as a user's would."""
    _hub_cache(tmp_path / "hf-cache", hub)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    remote, local = tmp_path / "remote.npz", tmp_path / "local.npz"
    command = ["-m", "pixeljit", "sample", "hf://org/name@main", *SAMPLE_ARGS, "--out", str(remote)]
    proc = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert main(["sample", str(hub), *SAMPLE_ARGS, "--out", str(local)]) == 0
    assert np.array_equal(np.load(remote)["arr_0"], np.load(local)["arr_0"])


def test_without_huggingface_hub_a_one_line_hint(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'pixeljit\[hub\]'"):
        load_trained("hf://org/name")
    assert main(["sample", "hf://org/name"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'pixeljit[hub]'" in err and err.count("\n") == 1


def test_an_unreachable_hub_is_told_from_an_offline_one(monkeypatch):
    """Without HF_HUB_OFFLINE the message said it was set; it now says the Hub could not be
    reached and how to skip huggingface_hub's retries."""
    from pixeljit.checkpoints.hub_remote import _fetch

    class LocalEntryNotFoundError(Exception):
        __module__ = "huggingface_hub.errors"

    def download(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(FileNotFoundError, match=r"could not be reached .*HF_HUB_OFFLINE=1 skips"):
        _fetch("hf://org/name", download, "org/name", "config.json", None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    with pytest.raises(FileNotFoundError, match=r"was not asked \(HF_HUB_OFFLINE is set\)"):
        _fetch("hf://org/name", download, "org/name", "config.json", None)
