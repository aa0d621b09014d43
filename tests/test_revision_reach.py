"""A change of the training code touches only the steps a resume trains: a finished run of an
older revision resumed with nothing left to train is no inexact resume, and revision 4's epoch
cut touches an accumulating run only where the steps left reach a draw it moved."""

from __future__ import annotations

import itertools

from conftest import tiny_run
from pixeljit.data.loader import DeviceLoader
from pixeljit.training.loop import train
from pixeljit.training.revisions import revision_changes
from test_accumulation_epochs import Indexed
from test_resume_versions import INEXACT, REV_1_TO_2, make_old, resume


def draws_moved(n: int, micro: int, step_batch: int, before: int, draws: int) -> bool:
    """Whether `draws` micro-batches after `before` come from other (epoch, position)s under
    this loader than under the cut before revision 4 (an epoch ended where a micro-batch no
    longer fit: a loader whose whole step is one micro-batch cuts so), the state of the older
    run loaded into this code's loader."""
    old = DeviceLoader(Indexed(n), micro, flip=False, epoch_batch=micro)
    for _ in range(before):
        next(old)
    new = DeviceLoader(Indexed(n), micro, flip=False, epoch_batch=step_batch)
    new.load_state_dict(old.state_dict())
    for _ in range(draws):
        if (old.epoch, old.position) != (new.epoch, new.position):
            return True
        next(old), next(new)
    return False


def test_revision_4_touches_a_resume_exactly_where_its_draws_move():
    checked = touched = 0
    for n, micro, accumulation in [(100, 10, 4), (90, 20, 2), (57, 4, 3), (64, 8, 2)]:
        step_batch = micro * accumulation
        for before, steps in itertools.product(range(0, 40, 3), range(0, 12)):
            old = DeviceLoader(Indexed(n), micro, flip=False, epoch_batch=micro)
            for _ in range(before):
                next(old)
            saved = {"training_revision": 3, "step": 5,
                     "config": {"optim": {"global_batch": step_batch}, "run": {"seed": 0},
                                "model": {}},
                     "loader": old.state_dict()}  # fmt: skip
            moved = draws_moved(n, micro, step_batch, before, steps * accumulation)
            changes = revision_changes(saved, None, total_steps=5 + steps)
            assert bool(changes) == moved, (n, micro, accumulation, before, steps)
            checked, touched = checked + 1, touched + moved
            if moved:
                assert "before its end it sees other samples" in changes[0]
    assert 0 < touched < checked  # both answers occur
    # the length unknown (before the data is open, without a length): touched, said so
    saved = {"training_revision": 3, "step": 0,
             "config": {"optim": {"global_batch": 40}, "run": {"seed": 0}, "model": {}},
             "loader": {"global_batch": 10, "num_samples": 100,
                        "epoch": 0, "position": 0}}  # fmt: skip
    (change,) = revision_changes(saved)
    assert "from its first epoch end on (if it trains that far)" in change
    assert revision_changes(saved, None, total_steps=2) == []  # 80 of 100 drawn: no cut yet
    assert revision_changes(saved, None, total_steps=3)  # the third step: past the new cut


def test_a_finished_run_of_an_older_revision_resumes_with_nothing_to_train(
    fmnist16, tmp_path, capsys
):
    """Revision 2 moved the warm-up; a finished 2-step run inside its 4-step warm-up, written
    by revision 1, has nothing left to train at 2 steps: no refusal, nothing trained, nothing
    said to be inexact. Asked for more, it is refused as before (test_resume_versions)."""
    run = tmp_path / "run"
    train(tiny_run(fmnist16(64), run, **{"optim.warmup_epochs": 1.0}), progress=False)
    make_old(run, config_yaml=False)
    before = (run / "latest.pt").read_bytes()
    capsys.readouterr()
    assert resume(run, 2) == 0
    captured = capsys.readouterr()
    assert "nothing to train" in captured.out, captured.out
    assert INEXACT not in captured.out and "revision" not in captured.out + captured.err
    assert (run / "latest.pt").read_bytes() == before
    assert resume(run, 1) == 0  # shorter still: nothing to train either
    capsys.readouterr()
    assert resume(run, 3) == 2
    assert f"bit-exactly: {REV_1_TO_2}: the learning-rate warm-up" in capsys.readouterr().err


def test_a_finished_run_asked_in_epochs_is_judged_by_its_length(fmnist16, tmp_path, capsys):
    """A run whose length is optim.epochs: the length before the data is open comes from the
    checkpoint's data size (64 images at batch 16: 4 steps an epoch, 0.5 epochs = 2 steps)."""
    run = tmp_path / "run"
    epochs = {"optim.warmup_epochs": 1.0, "optim.steps": None, "optim.epochs": 0.5}
    train(tiny_run(fmnist16(64), run, **epochs), progress=False)
    make_old(run, config_yaml=False)
    capsys.readouterr()
    args = ["train", "--resume", str(run), "--no-progress"]
    from pixeljit.cli import main

    assert main(args) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert main([*args, "--epochs", "0.75"]) == 2  # step 3 of 4 inside the warm-up: refused
    assert REV_1_TO_2 in capsys.readouterr().err
