"""Hostile and malformed weight files: every loader bounds what it builds by what the file holds,
checks dtypes and shapes on `meta` before materialising, and refuses NaN / Inf weights."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from safetensors.torch import save_file

import pixeljit
from pixeljit.checkpoints import weights as weights_module
from pixeljit.checkpoints.authors import extract_state_dict
from pixeljit.checkpoints.checksums import CHECKSUM_KEY, checksums
from pixeljit.checkpoints.load import load_trained
from pixeljit.checkpoints.run import FORMAT
from pixeljit.checkpoints.safetensors_io import SAFETENSORS_CONFIG_KEY
from pixeljit.cli import main
from pixeljit.diffusion.objective import ObjectiveConfig
from pixeljit.model import JiTConfig
from pixeljit.training.config import TrainConfig
from pixeljit.training.config_io import to_dict

TINY = JiTConfig(
    image_size=8, patch_size=4, hidden_size=16, depth=2, num_heads=2, num_classes=3,
    bottleneck_dim=4, in_context_len=2, in_context_start=1,
)  # fmt: skip


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in pixeljit.JiT(TINY).state_dict().items()}


def _safetensors(path, state=None, **config_changes):
    config = {**TINY.to_dict(), **config_changes}
    meta = {SAFETENSORS_CONFIG_KEY: json.dumps(config)}
    save_file(state if state is not None else _state(), str(path), metadata=meta)
    return path


@pytest.fixture
def no_build(monkeypatch):
    """Fails the test if a JiT is built at all (the refusal must come before)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a JiT was built from an unchecked config")

    monkeypatch.setattr(weights_module, "JiT", refuse)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"depth": 200}, "config says depth 200 but the weights hold blocks 0–1"),
        ({"depth": 100_000}, "depth must be ≤ 256, got 100000"),  # beyond any network
        ({"num_heads": 0}, "must be positive integers"),
        ({"image_size": -8}, "must be positive integers"),
        ({"depth": "2"}, "must be positive integers"),
    ],
)
def test_safetensors_config_refused_before_building(tmp_path, no_build, changes, message):
    path = _safetensors(tmp_path / "w.safetensors", **changes)
    with pytest.raises(ValueError, match=message) as err:
        pixeljit.load_safetensors(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "changes", [{"hidden_size": 4096}, {"image_size": 4096}, {"in_channels": 64}]
)
def test_safetensors_config_larger_than_the_file_is_refused(tmp_path, monkeypatch, changes):
    # the old loader materialised the config's network (terabytes) before comparing shapes
    built, real_jit = [], weights_module.JiT

    def recording(config):
        net = real_jit(config)
        built.append({p.device.type for p in net.parameters()})
        return net

    monkeypatch.setattr(weights_module, "JiT", recording)
    path = _safetensors(tmp_path / "w.safetensors", **changes)
    with pytest.raises(ValueError, match="parameters, more than the file's .* bytes"):
        pixeljit.load_safetensors(path)
    assert built == [{"meta"}]  # counted on `meta`: no memory for the config's network


def test_safetensors_dtype_and_shape_checked_from_the_header(tmp_path):
    state = _state()
    state["pos_embed"] = torch.zeros(state["pos_embed"].shape, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"floating point.*pos_embed \(I32\)"):
        pixeljit.load_safetensors(_safetensors(tmp_path / "int.safetensors", state))
    state = _state()
    state["final_layer.linear.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"final_layer.linear.bias: checkpoint \(3,\)"):
        pixeljit.load_safetensors(_safetensors(tmp_path / "shape.safetensors", state))


def test_a_flipped_byte_in_an_export_or_hub_folder_is_named(tiny_file, tmp_path):
    """Run checkpoints named a damaged tensor; a .safetensors export (and a hub folder's
    model.safetensors) loaded it silently: exports now carry per-tensor SHA-256s."""
    from pixeljit.checkpoints.hub_write import write_hub_folder
    from pixeljit.checkpoints.load import export_safetensors

    model = load_trained(tiny_file)
    export = export_safetensors(model, tmp_path / "tiny.safetensors")
    hub = write_hub_folder(model, tmp_path / "hub")
    for path in (export, hub / "model.safetensors"):
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01  # the last bit of the data block: the last tensor's last byte
        path.write_bytes(bytes(data))
    for source in (export, hub):
        with pytest.raises(ValueError, match="is damaged: checksum mismatch in [a-z_.0-9]+;"):
            load_trained(source)
    older = tmp_path / "older.safetensors"  # an export without checksums loads as before
    _safetensors(older, {k: v.contiguous() for k, v in model.net.state_dict().items()},
                 **model.net.config.to_dict())  # fmt: skip
    assert load_trained(older).net.config == model.net.config


def test_file_kinds_are_read_from_the_suffix_in_any_case(tiny_file, tmp_path):
    """`convert` writes X.SAFETENSORS (any case); loading it said "cannot load"."""
    from pixeljit.checkpoints.load import export_safetensors

    model = load_trained(tiny_file)
    upper = export_safetensors(model, tmp_path / "TINY.SAFETENSORS")
    assert load_trained(upper).net.config == model.net.config


def test_safetensors_garbage_and_bad_json_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a valid .safetensors file"):
        pixeljit.load_safetensors(junk)
    bad = tmp_path / "bad.safetensors"
    save_file(_state(), str(bad), metadata={SAFETENSORS_CONFIG_KEY: "{not json"})
    with pytest.raises(ValueError, match="is not valid JSON"):
        pixeljit.load_safetensors(bad)


def _poison(state, names, value):
    for name in names:
        state[name] = state[name].clone()
        state[name].view(-1)[0] = value
    return state


def test_non_finite_weights_are_refused_for_every_kind(tmp_path, capsys):
    names = ["pos_embed", "blocks.1.attn.qkv.weight", "final_layer.linear.bias"]
    st = _safetensors(tmp_path / "nan.safetensors", _poison(_state(), names, float("nan")))
    with pytest.raises(ValueError, match=r"non-finite.*'blocks.1.attn.qkv.weight'") as err:
        load_trained(st)
    assert all(n in str(err.value) for n in names)
    # the authors' format, through the CLI verbs a user runs
    authors = tmp_path / "checkpoint-last.pth"
    poisoned = _poison(_state(), ["pos_embed"], float("inf"))
    torch.save({"model_ema1": {"net." + k: v for k, v in poisoned.items()}}, authors)
    out = tmp_path / "x.safetensors"
    assert main(["convert", str(authors), str(out), "--in-context-start", "1"]) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and "pos_embed" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["sample", str(st), "--device", "cpu", "--out", str(tmp_path / "s.png")]) == 2
    assert "non-finite" in capsys.readouterr().err
    assert not (tmp_path / "s.png").exists()


def test_authors_expanded_tensor_over_a_tiny_storage_is_refused(tmp_path, no_build):
    # a 2 kB file whose pos_embed claims (1, 4, 10**6): a stride-0 view of one float
    state = _state()
    state["pos_embed"] = torch.zeros(1).expand(1, 4, 10**6)
    path = tmp_path / "checkpoint-last.pth"
    torch.save({"model_ema1": state}, path)
    with pytest.raises(ValueError, match="declare more elements than the bytes stored"):
        pixeljit.load_reference(path, in_context_start=1)


def test_authors_compressed_member_is_refused_before_torch_load(tmp_path, monkeypatch):
    plain = tmp_path / "plain.pth"
    torch.save({"model_ema1": _state()}, plain)
    bomb = tmp_path / "checkpoint-last.pth"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load ran"))
    with pytest.raises(ValueError, match="compressed members"):
        pixeljit.load_reference(bomb)


def test_authors_malformed_shapes_are_named(tmp_path, reference):
    state = extract_state_dict(reference["checkpoint"], "model")
    q_norm = "blocks.0.attn.q_norm.weight"
    for key, bad in [("pos_embed", torch.zeros(4)), (q_norm, torch.zeros(0))]:
        with pytest.raises(ValueError, match=f"{key} must be a non-empty"):
            pixeljit.load_reference({**state, key: bad})
    wrong_heads = {**state, q_norm: torch.zeros(7)}
    with pytest.raises(ValueError, match="does not divide hidden size"):
        pixeljit.load_reference(wrong_heads)
    ints = {**state, "final_layer.linear.bias": state["final_layer.linear.bias"].long()}
    with pytest.raises(ValueError, match="floating point"):
        pixeljit.load_reference(ints, in_context_start=2)


def _run_checkpoint(path, state, **changes):
    cfg = to_dict(TrainConfig(model=TINY, objective=ObjectiveConfig(noise_scale=1.0)))
    ckpt = {
        "format": FORMAT, "config": cfg, "model": state, "step": 1,
        "ema": {"decays": [0.99], "names": list(state), "shadows": [list(state.values())]},
        **changes,
    }  # fmt: skip
    ckpt[CHECKSUM_KEY] = checksums(ckpt)  # a current-format file always carries one
    torch.save(ckpt, path)
    return path


def test_run_checkpoints_are_checked_like_the_others(tmp_path):
    good = _run_checkpoint(tmp_path / "good.pt", _state())
    assert load_trained(good).net.config == TINY
    nan = _run_checkpoint(tmp_path / "nan.pt", _poison(_state(), ["pos_embed"], float("nan")))
    with pytest.raises(ValueError, match=r"nan.pt \(ema:0.99\): non-finite.*pos_embed"):
        load_trained(nan)
    broken = _run_checkpoint(tmp_path / "noema.pt", _state(), ema=None)
    with pytest.raises(ValueError, match="noema.pt: malformed pixeljit checkpoint"):
        load_trained(broken)
    cfg = to_dict(TrainConfig(model=TINY, objective=ObjectiveConfig(noise_scale=1.0)))
    cfg["model"]["depth"] = 200
    deep = _run_checkpoint(tmp_path / "deep.pt", _state(), config=cfg)
    with pytest.raises(ValueError, match="config says depth 200"):
        load_trained(deep, weights="model")
