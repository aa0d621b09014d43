"""Model loading hardened (from a probe): an override of an architecture a pixeljit file records
was applied silently; a named pipe (FIFO) passed as a checkpoint hung forever or was said to be
missing or a folder; an unknown class name's error bounded the class numbers by the names; an
`hf://` name said nothing while huggingface_hub retried for half a minute; an authors'
checkpoint renamed .pt was refused as unsafe instead of told to be named checkpoint-last.pth."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading

import pytest
import torch

import pixeljit
from cli_errors import cli_error
from conftest import REPO_ROOT, TINY_NET, run_group
from pixeljit.checkpoints.load import TrainedModel, load_trained
from pixeljit.model import JiT, JiTConfig

STUCK_S = 30  # a refusal takes well under a second; a read of a FIFO never ends
CLI_S = 120  # a fresh `pixeljit` process: importing torch takes a few seconds on a loaded box
REFUSED = "records its architecture"
NOT_REGULAR = "is not a regular file but a named pipe (FIFO)"
# the authors' layout without in-context tokens (their start block is standard for depths
# 12, 24, 32, 40 only)
AUTHORS_NET = JiTConfig(**{**TINY_NET.to_dict(), "in_context_len": 0, "in_context_start": 0})


def _authors_file(path, args: bool = True):
    """An authors'-layout checkpoint of AUTHORS_NET ('net.'-prefixed weights, maybe 'args')."""
    torch.manual_seed(0)
    state = {f"net.{k}": v.clone() for k, v in JiT(AUTHORS_NET).state_dict().items()}
    ckpt = {"model": state, "model_ema1": state, "model_ema2": state, "epoch": 3}
    if args:
        ckpt["args"] = argparse.Namespace(model="JiT-B/16", img_size=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


# ------------------------------------------------- 5: a recorded architecture is not overridden


@pytest.mark.parametrize(
    "fixture, label",
    [("tiny_file", "tiny.safetensors"), ("hub_run", "latest.pt"), ("hub", "config.json")],
    ids=["safetensors", "run", "hub folder"],
)
def test_a_recorded_architecture_is_not_overridden(fixture, label, request):
    """Overrides that change what the weights compute are refused, naming the field and both
    values; the recorded value itself, the attention kernel and dropout are accepted."""
    source = request.getfixturevalue(fixture)
    refusal = rf"{label} {REFUSED}: rope=False \(it records rope=True\) would change what its "
    with pytest.raises(ValueError, match=refusal + "weights compute; drop the override"):
        load_trained(source, rope=False)
    with pytest.raises(ValueError, match=r"norm='layer' \(it records norm='rms'\)"):
        load_trained(source, norm="layer")
    with pytest.raises(ValueError, match=r"mlp_ratio=4\.01 \(it records mlp_ratio=4\.0\)"):
        load_trained(source, mlp_ratio=4.01)  # the same SwiGLU width: no weight changes shape
    base = load_trained(source)
    config = base.net.config
    z = torch.randn(2, config.in_channels, config.image_size, config.image_size)
    t, y = torch.rand(2), (torch.tensor([0, 1]) if config.num_classes else None)
    assert load_trained(source, rope=True).net.config == config  # the recorded value itself
    for allowed in ({"attention": "fp32"}, {"dropout": 0.1, "dropout_blocks": [0, 1]}):
        model = load_trained(source, **allowed)
        assert all(getattr(model.net.config, k) == (tuple(v) if isinstance(v, list) else v)
                   for k, v in allowed.items())  # fmt: skip
        with torch.no_grad():  # eval mode: the same function of the same weights
            torch.testing.assert_close(model.net(z, t, y), base.net(z, t, y))


def test_a_safetensors_architecture_is_not_overridden_through_its_own_loader(tiny_file, tmp_path):
    with pytest.raises(ValueError, match=r"in_context_len=3 \(it records in_context_len=2\)"):
        pixeljit.load_safetensors(tiny_file, in_context_len=3)
    with pytest.raises(ValueError, match="unknown JiT config fields"):  # not a field: as before
        load_trained(tiny_file, colour="red")
    # the authors' files record no architecture: overrides still apply
    authors = _authors_file(tmp_path / "a" / "checkpoint-last.pth")
    assert load_trained(authors, rope=False).net.config.rope is False


# ------------------------------------------------------ 6: a pipe or device is never opened


def _finishes(call, fifos):
    """The exception `call()` raises in a thread (None if it returns); the test fails if it is
    still running after STUCK_S, and the reader is then released (each FIFO opened for writing
    and closed, so its reader sees an end of file)."""
    box = {}

    def target():
        try:
            call()
        except BaseException as err:  # noqa: BLE001 (handed to the test)
            box["err"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(STUCK_S)
    if thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(STUCK_S)
        pytest.fail(f"still reading after {STUCK_S} s: a named pipe was opened")
    return box.get("err")


def _fifo(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def _pipe(named) -> str:
    """What a refusal of the named pipe or device `named` says."""
    return f"{named} {NOT_REGULAR}"


def _refusal(call, fifos) -> str:
    """The message of the ValueError `call()` raises (the test fails on anything else)."""
    err = _finishes(call, fifos)
    assert isinstance(err, ValueError), repr(err)
    return str(err)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_named_pipes_are_refused_before_they_are_opened(tmp_path, hub):
    from pixeljit.checkpoints.run import load_checkpoint

    fifos = [_fifo(tmp_path / name) for name in ("f.pt", "f.pth", "f.safetensors", "F.SAFETENSORS")]
    for fifo in fifos:
        assert _pipe(fifo) in _refusal(lambda f=fifo: load_trained(f), fifos)
    (tmp_path / "link.pt").symlink_to(fifos[0])  # a link to a pipe is a pipe
    assert _pipe(tmp_path / "link.pt") in _refusal(
        lambda: load_trained(tmp_path / "link.pt"), fifos
    )
    # the file a folder is loaded by
    for folder, name in [("run", "latest.pt"), ("authors", "checkpoint-last.pth")]:
        fifos.append(_fifo(tmp_path / folder / name))
        assert _pipe(tmp_path / folder / name) in _refusal(
            lambda d=folder: load_trained(tmp_path / d), fifos
        )
    fifos.append(_fifo(tmp_path / "milestones" / "step-000000002.pt"))  # the newest is read
    assert _pipe("its step-000000002.pt") in _refusal(
        lambda: load_trained(tmp_path / "milestones"), fifos
    )
    for weights in (True, False):  # a hub folder's weights or config.json
        folder = tmp_path / f"hub-{weights}"
        folder.mkdir()
        name, real = ("model.safetensors", "config.json")
        name, real = (name, real) if weights else (real, name)
        shutil.copy(hub / real, folder / real)
        fifos.append(_fifo(folder / name))
        assert _pipe(folder / name) in _refusal(lambda d=folder: load_trained(d), fifos)
    # the readers that do not go through load_trained: train --resume, the Python API
    assert _pipe(f"--resume {fifos[0]}") in _refusal(lambda: load_checkpoint(fifos[0]), fifos)
    its = f"--resume {tmp_path / 'run'}: its latest.pt"
    assert _pipe(its) in _refusal(lambda: load_checkpoint(tmp_path / "run"), fifos)
    assert _pipe(fifos[2]) in _refusal(lambda: pixeljit.load_safetensors(fifos[2]), fifos)
    assert _pipe(fifos[1]) in _refusal(lambda: pixeljit.load_reference(fifos[1]), fifos)
    assert _pipe("checkpoint-last.pth") in _refusal(
        lambda: pixeljit.load_reference(tmp_path / "authors"), fifos
    )


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_a_device_is_refused_as_not_a_regular_file(capsys):
    with pytest.raises(ValueError, match="/dev/null is not a regular file but a character device"):
        load_trained("/dev/null")
    err = cli_error(capsys, ["convert", "/dev/null", "/tmp/never-written.safetensors"])
    assert "is not a regular file but a character device" in err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
@pytest.mark.parametrize("verb", ["convert", "sample"])
def test_a_named_pipe_on_the_command_line_ends_with_one_line(tmp_path, verb):
    """`pixeljit convert f.pt …` / `sample f.pt` waited forever (run in a process of its own,
    killed after CLI_S: a regression fails, it does not hang the suite)."""
    fifo = _fifo(tmp_path / "f.pt")
    out = tmp_path / ("o.safetensors" if verb == "convert" else "o.png")
    argv = [str(fifo), str(out)] if verb == "convert" else [str(fifo), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = run_group([sys.executable, "-m", "pixeljit", verb, *argv], CLI_S, env=env)
    assert proc.returncode == 2, proc.stderr
    assert f"{fifo} {NOT_REGULAR}" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert not out.exists()


# ------------------------------------------------------------------ 9: every class has a number


def test_an_unknown_class_name_bounds_the_numbers_by_the_classes():
    """10 classes, 2 of them named: numbers 0 to 9 are valid (it said 0 to 1)."""
    config = JiTConfig(**{**TINY_NET.to_dict(), "num_classes": 10})
    model = TrainedModel(JiT(config).eval(), class_names=("cat", "dog"))
    assert model.label_index("Dog") == 1
    with pytest.raises(ValueError, match=r"pass one of 'cat', 'dog', or a class number 0 to 9$"):
        model.label_index("bird")


# ------------------------------------------------------------- 10: hf:// says what it is doing


class LocalEntryNotFoundError(Exception):  # as huggingface_hub names it
    __module__ = "huggingface_hub.errors"


def test_hf_names_say_they_fetch_before_the_first_request(monkeypatch, capsys):
    from pixeljit.checkpoints import hub_remote

    requests = []

    def download(repo, name, **kwargs):  # stands in for hf_hub_download: no network
        requests.append((name, kwargs, capsys.readouterr().err))
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(hub_remote, "_downloader", lambda uri: download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(FileNotFoundError, match="could not be reached"):
        load_trained("hf://org/name@main")
    [(name, kwargs, said)] = requests
    assert name == "config.json" and kwargs["dry_run"] is True
    assert kwargs["etag_timeout"] == hub_remote.ETAG_TIMEOUT_S < 10  # huggingface_hub's default
    assert said == ("fetching hf://org/name@main from the Hugging Face Hub (HF_HUB_OFFLINE=1 "
                    "uses only the local cache)\n")  # fmt: skip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no request is made: nothing to announce
    with pytest.raises(FileNotFoundError, match="was not asked"):
        load_trained("hf://org/name")
    assert requests[-1][2] == "" and capsys.readouterr().err == ""


# ------------------------------------------------------ 11: an authors' checkpoint named .pt


@pytest.mark.parametrize("args", [True, False])
def test_an_authors_checkpoint_named_pt_is_told_to_be_renamed(tmp_path, capsys, args):
    renamed = _authors_file(tmp_path / "x.pt", args)
    held = "model, model_ema1, model_ema2" + (", args" if args else "")
    told = (rf"x\.pt is an authors' checkpoint \(it holds {held}\), not a pixeljit training "
            r"checkpoint: rename it to checkpoint-last\.pth")  # fmt: skip
    with pytest.raises(ValueError, match=told):
        load_trained(renamed)
    err = cli_error(capsys, ["convert", str(renamed), str(tmp_path / "o.safetensors")])
    assert "rename it to checkpoint-last.pth" in err and "refused for safety" not in err
    err = cli_error(capsys, ["train", "--resume", str(renamed)])
    assert "is an authors' checkpoint" in err
    named = tmp_path / "checkpoint-last.pth"
    renamed.rename(named)  # as told: it loads
    assert load_trained(named).net.config == AUTHORS_NET
    foreign = tmp_path / "foreign.pt"  # another project's {'model': …}: not called the authors'
    torch.save({"model": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(ValueError, match="foreign.pt is not a pixeljit training checkpoint"):
        load_trained(foreign)
