"""SIGTERM (`kill PID`, `timeout`, a scheduler) to a verb that does not listen for it itself
(sample, eval, convert, prepare, reproduce toy / nfe) ended the process without a word; it is
now taken as Ctrl-C is, so the verb says what its partial output holds and how to go on, and
the exit status stays SIGTERM's (143). Training and the grids keep their own handling."""

from __future__ import annotations

import os
import signal

import pytest
import torch

import pixeljit
from conftest import TINY_NET
from pixeljit.cli import main
from pixeljit.training.stopsignal import SIGNAL_EXIT_BASE

TERMINATED = SIGNAL_EXIT_BASE + signal.SIGTERM


@pytest.fixture
def tiny_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    pixeljit.save_safetensors(pixeljit.JiT(TINY_NET), path)
    return path


def _terminated_on_call(real, call: int):
    """`real`, but the `call`-th call (0-based) first sends this process SIGTERM."""
    calls = []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) > call:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    return stopping


def test_sigterm_while_sampling_a_png_folder_says_what_it_holds(tiny_file, tmp_path, capsys,
                                                                 monkeypatch):  # fmt: skip
    import pixeljit.cli.sample as sample_cli

    monkeypatch.setattr(sample_cli, "sample", _terminated_on_call(sample_cli.sample, 1))
    out = tmp_path / "pngs"
    argv = ["sample", str(tiny_file), "--out", f"{out}/", "--num", "12", "--steps", "1",
            "--batch-size", "4"]  # fmt: skip
    assert main(argv) == TERMINATED
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert err.startswith("pixeljit sample: interrupted: "), err
    assert f"nothing was written to --out {out}/: stopped before all 12 images" in err, err
    assert not out.exists()  # the set is staged, and moved in only once whole
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back


def test_sigterm_of_the_toy_says_it_kept_nothing(tmp_path, capsys, monkeypatch):
    import pixeljit.experiments.toy as toy

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM was not taken")

    monkeypatch.setattr(toy, "run_toy", terminated)
    out = tmp_path / "t"
    assert main(["reproduce", "toy", "--quick", "--steps", "3", "--dims", "2", "--out",
                 str(out)]) == TERMINATED  # fmt: skip
    err = capsys.readouterr().err
    assert f"no file written to --out {out}" in err and "does not resume" in err, err


def test_a_handler_the_caller_installed_is_left_alone(tiny_file, tmp_path, monkeypatch):
    """Embedding code (or a test runner) with its own SIGTERM handler keeps it."""
    import pixeljit.cli.sample as sample_cli

    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        monkeypatch.setattr(sample_cli, "sample", _terminated_on_call(sample_cli.sample, 0))
        assert main(["sample", str(tiny_file), "--out", str(tmp_path / "s.npz"), "--num", "2",
                     "--steps", "1"]) == 0  # fmt: skip
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_under_torchrun_sigterm_keeps_its_default(tmp_path, monkeypatch):
    """A rank unwinding on SIGTERM would wait for the others at teardown: not listened for
    (`eval`, a verb that runs under torchrun; the single-process ones refuse it)."""
    import pixeljit.cli.evaluate as evaluate_cli

    handlers = []

    def spy(args):
        handlers.append(signal.getsignal(signal.SIGTERM))
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_cli, "run", spy)  # the verb's work, before any process group
    argv = ["eval", "--images", str(tmp_path), "--out", str(tmp_path / "s.json")]
    monkeypatch.setenv("WORLD_SIZE", "2")
    main(argv)
    assert handlers == [signal.SIG_DFL]
    monkeypatch.setenv("WORLD_SIZE", "1")
    main(argv)
    assert handlers[1] not in (signal.SIG_DFL, signal.SIG_IGN)
