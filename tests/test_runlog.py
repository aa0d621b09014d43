"""The run log: TensorBoard events hold exactly what metrics.jsonl says (read back with the real
`tensorboard` package, an optional extra that the `test` extra installs)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

# a hard import, never a skip: the `test` extra installs tensorboard (pyproject.toml)
from tensorboard.backend.event_processing import event_accumulator

from conftest import free_port, tiny_run
from pixeljit.training.loop import train
from pixeljit.training.runlog import (
    METRICS_FILE,
    TENSORBOARD_FOLDER,
    RunLog,
    loss_series,
    plot_loss,
    read_metrics,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def read_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every scalar in the event files under `folder`."""
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def jsonl_series(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                series.setdefault(key, []).append((record["step"], float(value)))
    return series


def assert_same_series(events: dict, expected: dict) -> None:
    assert sorted(events) == sorted(expected)
    for tag, points in expected.items():
        got = events[tag]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        for (_, a), (_, b) in zip(got, points, strict=True):
            assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-30), (tag, a, b)  # float32 events


@pytest.fixture(scope="module")
def data(fmnist16) -> Path:
    return fmnist16(64)


def config(data: Path, out: Path, **overrides):
    """The shared tiny run, 4 steps, with TensorBoard on."""
    return tiny_run(data, out, **{"run.tensorboard": True, "optim.steps": 4, **overrides})


def test_training_writes_tensorboard_scalars_equal_to_jsonl(data, tmp_path):
    train(config(data, tmp_path / "run"), progress=False)
    records = read_metrics(tmp_path / "run" / METRICS_FILE)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    expected = jsonl_series(records)
    assert {"loss", "lr", "img_per_s"} <= set(expected)
    buckets = [key for key in expected if key.startswith("loss_t[")]  # loss by t-bucket
    assert buckets
    for record in records:  # log_every=1: a step's loss is its t-buckets' count-weighted mean
        by_t = [record[key] for key in buckets if key in record]
        assert min(by_t) <= record["loss"] * (1 + 1e-6) and record["loss"] <= max(by_t) * (1 + 1e-6)
    assert_same_series(read_events(tmp_path / "run" / TENSORBOARD_FOLDER), expected)


def test_loss_tally_logs_the_mean_loss_of_each_t_bucket():
    """The loop's per-t-bucket losses: the mean of the per-sample losses whose t fell in each
    quarter of [0, 1], over every step since the last log line; a bucket no t fell in is not
    logged (it would be 0 / 0)."""
    from types import SimpleNamespace

    from pixeljit.training.runlog import LossTally

    tally = LossTally(torch.device("cpu"))
    steps = [  # (per-sample losses, their t)
        (torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.1, 0.2, 0.3, 0.8])),
        (torch.tensor([5.0, 7.0, 6.0, 9.0]), torch.tensor([0.0, 0.6, 0.74, 0.99])),
    ]
    for step, (losses, t) in enumerate(steps, start=1):
        tally.add_losses(losses, t)
        tally.end_step(step, losses.mean(), len(losses))
    plan = SimpleNamespace(steps_per_epoch=10, global_batch=4)
    record = tally.flush(2, plan, 1e-4, SimpleNamespace(enabled=False))
    assert record["loss"] == pytest.approx((2.5 + 6.75) / 2)  # the steps' losses, averaged
    assert record["loss_t[0.00,0.25)"] == pytest.approx((1 + 2 + 5) / 3)
    assert record["loss_t[0.25,0.50)"] == pytest.approx(3.0)
    assert record["loss_t[0.50,0.75)"] == pytest.approx((7 + 6) / 2)
    assert record["loss_t[0.75,1.00)"] == pytest.approx((4 + 9) / 2)
    tally.add_losses(torch.tensor([1.0]), torch.tensor([0.9]))  # the sums restarted
    tally.end_step(3, torch.tensor(1.0), 1)
    again = tally.flush(3, plan, 1e-4, SimpleNamespace(enabled=False))
    assert [k for k in again if k.startswith("loss_t")] == ["loss_t[0.75,1.00)"]
    assert again["loss_t[0.75,1.00)"] == 1.0 and again["loss"] == 1.0


def test_tensorboard_off_writes_no_events(data, tmp_path):
    train(config(data, tmp_path / "run", **{"run.tensorboard": False}), progress=False)
    assert (tmp_path / "run" / METRICS_FILE).is_file()
    assert not (tmp_path / "run" / TENSORBOARD_FOLDER).exists()


def test_resume_replaces_the_redone_steps_in_tensorboard(tmp_path):
    """After a resume from step 2, steps 3.. are logged again: TensorBoard must show one point
    per step, the new one, exactly as metrics.jsonl (truncated on resume) does."""
    first = RunLog(tmp_path, enabled=True, tensorboard=True)
    for step in (1, 2, 3, 4):
        first.write({"step": step, "loss": 10.0 + step})
    first.close()  # the run died after logging step 4; its checkpoint is at step 2
    again = RunLog(tmp_path, enabled=True, tensorboard=True)  # as train() does on resume
    again.truncate_after(2)
    for step in (3, 4, 5):
        again.write({"step": step, "loss": 20.0 + step})
    again.close()
    records = read_metrics(tmp_path / METRICS_FILE)
    assert [(r["step"], r["loss"]) for r in records] == [(1, 11.0), (2, 12.0), (3, 23.0),
                                                         (4, 24.0), (5, 25.0)]  # fmt: skip
    assert_same_series(read_events(tmp_path / TENSORBOARD_FOLDER), jsonl_series(records))


def test_missing_tensorboard_is_said_not_silent(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises
    with pytest.warns(UserWarning, match=r"tensorboard is not installed.*pixeljit\[tensorboard\]"):
        log = RunLog(tmp_path, enabled=True, tensorboard=True)
    log.write({"step": 1, "loss": 0.5})
    log.close()
    assert read_metrics(tmp_path / METRICS_FILE) == [{"step": 1, "loss": 0.5}]
    assert not (tmp_path / TENSORBOARD_FOLDER).exists()


def test_loss_plot_keeps_every_bucket_any_record_logged(tmp_path):
    """loss.png took its t-buckets from the last record only: a short run whose last steps drew
    no t in [0.75, 1) lost that curve though earlier records logged it. A one-record log plots
    a marker (a one-point line draws nothing)."""
    records = [
        {"step": 5, "loss": 1.0, "loss_t[0.00,0.25)": 2.0, "loss_t[0.75,1.00)": 0.5},
        {"step": 10, "loss": 0.8, "loss_t[0.00,0.25)": 1.5},
    ]
    series = loss_series(records)
    assert list(series) == ["loss", "loss_t[0.00,0.25)", "loss_t[0.75,1.00)"]
    assert series["loss_t[0.75,1.00)"] == ([5], [0.5]) and series["loss"] == ([5, 10], [1.0, 0.8])
    metrics = tmp_path / METRICS_FILE
    import matplotlib.axes

    drawn = []  # (label, marker) of each line plotted
    real_plot = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        drawn.append((kwargs.get("label"), kwargs.get("marker")))
        return real_plot(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.axes.Axes, "plot", spy)
        for count, marker in ((1, "o"), (2, None)):  # a one-point line is its marker
            drawn.clear()
            metrics.write_text("".join(json.dumps(r) + "\n" for r in records[:count]))
            assert plot_loss(metrics, tmp_path / f"loss{count}.png").is_file()
            assert ("loss", marker) in drawn, drawn


def _first_bad_worker(rank: int, port: int, firsts: list[int], out: str) -> None:
    import torch.distributed as dist

    from pixeljit.training.distributed import DistInfo
    from pixeljit.training.runlog import LossTally

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=len(firsts))
    try:
        tally = LossTally(torch.device("cpu"))
        tally.first_bad.fill_(firsts[rank])
        info = DistInfo(rank=rank, world_size=len(firsts), local_rank=rank,
                        device=torch.device("cpu"))  # fmt: skip
        Path(out, f"rank{rank}").write_text(str(tally.first_bad_step(info)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("firsts", [[5, 3, -1], [-1, -1, -1]])
def test_the_first_non_finite_step_is_the_earliest_over_the_ranks(tmp_path, firsts):
    """The ranks' first bad steps were combined by MAX: one rank's NaN at step 3, spread to the
    others at a later step, was reported at that later step."""
    import torch.multiprocessing as mp

    mp.spawn(_first_bad_worker, args=(free_port(), firsts, str(tmp_path)), nprocs=len(firsts))
    seen = [b for b in firsts if b >= 0]
    expected = min(seen) if seen else -1
    assert [int((tmp_path / f"rank{r}").read_text()) for r in range(len(firsts))] == [
        expected
    ] * len(firsts)
