"""Checkpoint properties no other test pins down: a tensor's checksum covers its dtype and shape,
a folder without latest.pt resumes its newest milestone, `weights="ema"` follows the run's
sample.ema_decay, zip members declared larger than the file are refused before torch.load,
half-precision weights load, and `convert --hub --overwrite` removes a stale preview grid."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest
import torch

import pixeljit
from conftest import TINY_NET, tiny_run
from pixeljit.checkpoints.authors import extract_state_dict
from pixeljit.checkpoints.run import LATEST, find_checkpoint, load_checkpoint, save_checkpoint
from pixeljit.checkpoints.weights import check_torch_zip
from pixeljit.cli import main
from pixeljit.training.loop import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY_START = 2  # the authors' tiny reference config's in-context start (as in test_parity.py)


def small_state(step: int) -> dict:
    """A run checkpoint's layout over an 8→4 linear layer (its weight is 2-D: (4, 8))."""
    torch.manual_seed(step)
    net = torch.nn.Linear(8, 4)
    return {
        "model": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "ema": {"decays": [0.99], "names": ["weight", "bias"],
                "shadows": [[net.weight.detach() * 0.5, net.bias.detach() * 0.5]]},
        "step": step,
        "config": {"model": {"depth": 2}},
    }  # fmt: skip


# ------------------------------------------------------------------------------- checksums


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda t: t.reshape(-1), id="flattened"),
        pytest.param(lambda t: t.reshape(8, 4), id="reshaped"),
        pytest.param(lambda t: t.view(torch.int32), id="reinterpreted-as-int32"),
    ],
)
def test_a_tensor_with_its_bytes_kept_but_shape_or_dtype_changed_fails_its_checksum(
    tmp_path, change
):
    """The checksum hashed only a tensor's bytes: the same bytes under another shape or dtype
    (which `copy_` may broadcast or cast into the model silently) passed as intact."""
    save_checkpoint(small_state(3), tmp_path, step=3, milestone=False)
    path = tmp_path / LATEST
    state = torch.load(path, weights_only=True)
    torch.save(state, path)  # the control: re-saved unchanged, it still loads
    assert load_checkpoint(tmp_path)["step"] == 3
    state["model"]["weight"] = change(state["model"]["weight"])
    torch.save(state, path)  # the recorded checksums kept
    with pytest.raises(ValueError, match="checksum mismatch in model/weight;"):
        load_checkpoint(tmp_path)


# -------------------------------------------------------------------------- finding the file


def test_a_folder_without_latest_resolves_to_its_newest_milestone(tmp_path):
    """A run folder whose latest.pt is gone resumed from its OLDEST milestone (throwing away the
    later training): it must take the highest step."""
    for step in (3, 6, 12):
        save_checkpoint(small_state(step), tmp_path, step=step, milestone=True)
    (tmp_path / LATEST).unlink()
    assert find_checkpoint(tmp_path).name == "step-000000012.pt"
    assert load_checkpoint(tmp_path)["step"] == 12


# ------------------------------------------------------------------------- which EMA loads


def test_ema_weights_of_a_run_are_its_sample_ema_decay_not_its_first_ema(fmnist16, tmp_path):
    """`load_trained(run)` (and `weights="ema"`) took the first of optim.ema_decays, ignoring
    the run's sample.ema_decay that its previews (and `pixeljit sample`) promise to use."""
    settings = {"optim.ema_decays": [0.995, 0.999], "sample.ema_decay": 0.999}
    train(tiny_run(fmnist16(32), tmp_path / "run", **settings), progress=False)
    run = tmp_path / "run"
    first, chosen = (pixeljit.load_trained(run, f"ema:{d}") for d in (0.995, 0.999))
    first_state, chosen_state = first.net.state_dict(), chosen.net.state_dict()
    assert not all(torch.equal(first_state[k], chosen_state[k]) for k in first_state)  # guard
    for weights in (None, "ema"):
        model = pixeljit.load_trained(run, weights)
        assert (model.weights, model.ema_decay) == ("ema:0.999", 0.999)
        state = model.net.state_dict()
        assert all(torch.equal(state[k], chosen_state[k]) for k in chosen_state)


# ------------------------------------------------------------------------ zip size bounds


def declare_member_size(path: Path, suffix: str, size: int) -> None:
    """Make the zip member ending in `suffix` declare `size` bytes, in the central directory and
    in its local header where that records a size (torch.save's records none: a descriptor)."""
    with zipfile.ZipFile(path) as zf:
        pos, count = zf.start_dir, len(zf.infolist())
    raw = bytearray(path.read_bytes())
    for _ in range(count):
        assert raw[pos : pos + 4] == b"PK\x01\x02"
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", raw, pos + 28)
        name = raw[pos + 46 : pos + 46 + name_len].decode()
        if name.endswith(suffix):
            struct.pack_into("<II", raw, pos + 20, size, size)  # compressed, uncompressed
            local = struct.unpack_from("<I", raw, pos + 42)[0]
            if struct.unpack_from("<I", raw, local + 22)[0]:
                struct.pack_into("<II", raw, local + 18, size, size)
            path.write_bytes(bytes(raw))
            return
        pos += 46 + name_len + extra_len + comment_len
    raise AssertionError(f"no member ending in {suffix} in {path}")


@pytest.mark.parametrize("kind", ["run", "authors"])
def test_a_zip_member_declared_larger_than_the_file_is_refused_before_torch_load(
    reference, tmp_path, monkeypatch, kind
):
    """A member declaring 1 GiB inside a file of kilobytes (stored, so no CRC is checked first)
    reached torch.load, which allocates what the file declares: it must be refused unread."""
    if kind == "run":
        path = save_checkpoint(small_state(3), tmp_path, step=3, milestone=False)
        load = load_checkpoint
    else:
        path = tmp_path / "checkpoint-last.pth"
        torch.save(reference["checkpoint"], path)

        def load(p):
            return pixeljit.load_reference(p, in_context_start=TINY_START)

    declare_member_size(path, "/data.pkl", 2**30)

    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load read a file declaring more bytes than it holds")

    monkeypatch.setattr(torch, "load", no_torch_load)
    message = r"declares \d+ bytes of members but holds \d+ bytes: corrupt file"
    with pytest.raises(ValueError, match=message):
        check_torch_zip(path)
    with pytest.raises(ValueError, match=message):
        load(path)


# ---------------------------------------------------------------------- half-precision loads


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_authors_weights_load_as_float32(reference, dtype):
    """`FLOAT_DTYPES` promises bf16 and fp16 weights load (cast to the float32 network); bf16
    was refused as "not floating point"."""
    state = extract_state_dict(reference["checkpoint"], "model")
    half = {k: v.to(dtype) for k, v in state.items()}
    net = pixeljit.load_reference(half, in_context_start=TINY_START)
    want = pixeljit.load_reference(
        {k: v.float() for k, v in half.items()}, in_context_start=TINY_START
    ).state_dict()
    got = net.state_dict()
    assert got.keys() == want.keys()
    assert all(v.dtype == torch.float32 for v in got.values())
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_a_half_precision_network_exports_and_loads_back_as_float32(tmp_path, dtype):
    """A .safetensors export of a bf16 or fp16 network loads with the same values in float32."""
    torch.manual_seed(0)
    net = pixeljit.JiT(TINY_NET).to(dtype)
    path = pixeljit.save_safetensors(net, tmp_path / "half.safetensors")
    back = pixeljit.load_trained(path).net.state_dict()
    own = net.state_dict()
    assert back.keys() == own.keys()
    assert all(v.dtype == torch.float32 and torch.equal(v, own[k].float()) for k, v in back.items())


# ------------------------------------------------------------------------------ hub folders


def test_overwriting_a_hub_folder_with_an_export_without_grid_removes_the_stale_grid(
    tiny_file, tmp_path
):
    """`convert --hub --overwrite` from a source with no preview grid left the previous export's
    samples.png beside a card saying there is none: it is removed, the user's files stay."""
    folder = tmp_path / "hub"
    assert main(["convert", str(tiny_file), "--hub", str(folder)]) == 0  # the earlier export
    (folder / "samples.png").write_bytes(b"a stale grid of other weights")
    (folder / "notes.txt").write_text("mine")
    assert main(["convert", str(tiny_file), "--hub", str(folder), "--overwrite"]) == 0
    assert not (folder / "samples.png").exists()
    assert (folder / "notes.txt").read_text() == "mine"
    card = (folder / "README.md").read_text()
    assert "![samples](samples.png)" not in card and "None: the source holds no sample grid" in card
    assert pixeljit.load_trained(folder).net.config == TINY_NET
