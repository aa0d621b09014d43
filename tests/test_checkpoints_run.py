"""Run checkpoints on disk: checksums catch silent corruption, a non-finite state or a full disk
never replaces the previous checkpoint, an unreadable latest.pt names the milestones to use."""

from __future__ import annotations

import errno
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from pixeljit.checkpoints.run import (
    FORMAT,
    LATEST,
    UNCHECKED_FORMAT,
    NonFiniteStateError,
    load_checkpoint,
    save_checkpoint,
)
from pixeljit.cli import main


def small_state(step: int = 3) -> dict:
    torch.manual_seed(step)
    net = torch.nn.Linear(8, 4)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.95))
    net(torch.randn(2, 8)).sum().backward()
    opt.step()
    return {
        "model": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "ema": {"decays": [0.99], "names": ["weight", "bias"],
                "shadows": [[net.weight.detach() * 0.5, net.bias.detach() * 0.5]]},
        "optimizer": opt.state_dict(),  # tuples (betas) and int keys
        "rng": {"torch": torch.get_rng_state()},
        "step": step,
        "config": {"model": {"depth": 2}, "optim": {"betas": [0.9, 0.95]}},
    }  # fmt: skip


def flip_byte_in_entry(path: Path, suffix: str, at: int) -> None:
    """Flip one byte of a stored (uncompressed) zip entry in place, CRC left stale."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(suffix))
    raw = bytearray(path.read_bytes())
    offset = info.header_offset
    name_len, extra_len = struct.unpack("<HH", raw[offset + 26 : offset + 30])
    raw[offset + 30 + name_len + extra_len + at] ^= 0xFF
    path.write_bytes(bytes(raw))


def tensor_entry(path: Path, tensor: torch.Tensor) -> str:
    """The zip entry (e.g. 'data/3') holding exactly `tensor`'s bytes."""
    want = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if "/data/" in info.filename and z.read(info) == want:
                return info.filename.split("/", 1)[1]
    raise AssertionError("tensor bytes not found in the checkpoint")


def test_round_trip_is_verified_without_warnings(tmp_path):
    state = small_state()
    save_checkpoint(state, tmp_path, 3, milestone=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for source in (tmp_path, tmp_path / "step-000000003.pt"):
            loaded = load_checkpoint(source)
            assert loaded["format"] == FORMAT and loaded["step"] == 3
            assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])


def test_a_flipped_byte_in_a_tensor_is_caught_and_named(tmp_path):
    state = small_state()
    path = save_checkpoint(state, tmp_path, 3, milestone=False)
    entry = tensor_entry(path, state["model"]["weight"])
    flip_byte_in_entry(path, entry, at=5)
    raw = torch.load(path, weights_only=True)  # torch itself reads the corrupt file silently
    assert not torch.equal(raw["model"]["weight"], state["model"]["weight"])
    with pytest.raises(
        ValueError, match=r"latest\.pt is corrupt: checksum mismatch in model/weight"
    ):
        load_checkpoint(tmp_path)


def test_a_changed_step_is_caught(tmp_path):
    path = save_checkpoint(small_state(3), tmp_path, 3, milestone=False)
    state = torch.load(path, weights_only=True)
    state["step"] = 4  # as if the pickled int were hit
    torch.save(state, path)
    with pytest.raises(ValueError, match="checksum mismatch in <non-tensor fields>"):
        load_checkpoint(path)


def test_an_old_format_checkpoint_without_checksum_loads_with_a_warning(tmp_path):
    torch.save({**small_state(), "format": UNCHECKED_FORMAT}, tmp_path / LATEST)
    with pytest.warns(UserWarning, match="carries no checksum"):
        assert load_checkpoint(tmp_path)["step"] == 3


def test_a_current_checkpoint_whose_checksum_was_removed_is_refused(tmp_path):
    path = save_checkpoint(small_state(3), tmp_path, 3, milestone=False)
    state = torch.load(path, weights_only=True)
    del state["checksum"]
    state["class_names"] = ["x"] * 1000
    torch.save(state, path)
    with pytest.raises(ValueError, match="lost its checksum"):
        load_checkpoint(path)


def test_class_names_beyond_the_model_classes_are_refused(tmp_path):
    config = {"model": {"num_classes": 10}}
    state = {**small_state(3), "class_names": ["x"] * 1000, "config": config}
    path = save_checkpoint(state, tmp_path, 3, milestone=False)  # checksummed, so only the bound
    with pytest.raises(ValueError, match="at most 10 strings"):
        load_checkpoint(path)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_unreadable_latest_names_the_milestones(tmp_path, damage):
    save_checkpoint(small_state(3), tmp_path, 3, milestone=True)
    save_checkpoint(small_state(6), tmp_path, 6, milestone=True)
    latest = save_checkpoint(small_state(8), tmp_path, 8, milestone=False)
    if damage == "truncate":
        latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    else:
        flip_byte_in_entry(latest, tensor_entry(latest, small_state(8)["model"]["weight"]), 0)
    with pytest.raises(ValueError) as err:
        load_checkpoint(tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(latest) in message
    assert f"--resume {tmp_path / 'step-000000006.pt'}" in message
    assert "step-000000003.pt" in message
    # a caller whose user named the checkpoint otherwise (sample, eval, convert): no --resume
    with pytest.raises(ValueError) as err:
        load_checkpoint(tmp_path, flag=None)
    message = str(err.value)
    assert "--" not in message and f"pass {tmp_path / 'step-000000006.pt'} instead" in message


def deflate_members(path: Path) -> None:
    """Rewrite a torch.save zip with every member compressed (torch.save never compresses: a
    compressed member may inflate to any size, the shape of a zip bomb)."""
    with zipfile.ZipFile(path) as z:
        members = [(info.filename, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)


def test_a_compressed_checkpoint_is_refused_before_torch_load(tmp_path, monkeypatch, capsys):
    latest = save_checkpoint(small_state(3), tmp_path, 3, milestone=False)
    deflate_members(latest)
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        raise AssertionError("torch.load ran on a compressed checkpoint")

    monkeypatch.setattr("pixeljit.checkpoints.run.torch.load", spy)
    with pytest.raises(ValueError, match="compressed members"):
        load_checkpoint(tmp_path)
    assert main(["train", "--resume", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "compressed members" in err and err.count("\n") == 1
    assert calls == []


def test_a_non_finite_state_is_never_written(tmp_path):
    latest = save_checkpoint(small_state(3), tmp_path, 3, milestone=False)
    before = latest.read_bytes()
    bad = small_state(6)
    bad["ema"]["shadows"][0][1][0] = float("nan")
    with pytest.raises(NonFiniteStateError, match=r"step 6: non-finite values in ema/shadows/0/1"):
        save_checkpoint(bad, tmp_path, 6, milestone=True)
    assert latest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST]


def test_a_full_disk_names_the_path_and_size_and_keeps_the_previous(tmp_path, monkeypatch):
    latest = save_checkpoint(small_state(3), tmp_path, 3, milestone=False)
    before = latest.read_bytes()
    real_save = torch.save

    def disk_fills_up(obj, f):
        Path(f).write_bytes(b"partial")  # some bytes made it, then the disk was full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_fills_up)
    with pytest.raises(RuntimeError) as err:
        save_checkpoint(small_state(6), tmp_path, 6, milestone=True)
    monkeypatch.setattr(torch, "save", real_save)
    message = str(err.value)
    assert "no space left" in message and str(tmp_path) in message and "bytes" in message
    need = int(message.split("(")[1].split(" bytes")[0])
    assert need >= (8 * 4 + 4) * 4 * 4  # model + EMA + two Adam moments, float32
    assert latest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [LATEST]  # no temp file left
    assert load_checkpoint(tmp_path)["step"] == 3


def test_torchs_zip_error_on_a_full_disk_gets_the_full_disk_message(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    latest = save_checkpoint(small_state(3), tmp_path, 3, milestone=False)
    before = latest.read_bytes()

    def zip_writer_fails(obj, f):  # what torch raises when the disk fills mid-write
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 681472")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", zip_writer_fails)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 100))
    with pytest.raises(RuntimeError, match=r"no space left .* bytes\) and 0.0 MB are free"):
        save_checkpoint(small_state(6), tmp_path, 6, milestone=True)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 0, 10**12))
    with pytest.raises(RuntimeError, match="inline_container"):  # room enough: not a full disk
        save_checkpoint(small_state(6), tmp_path, 6, milestone=True)
    assert latest.read_bytes() == before
