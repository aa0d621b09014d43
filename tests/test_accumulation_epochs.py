"""An epoch ends where a whole optimiser step no longer fits, so one process accumulating A
micro-batches sees the samples W = A processes see, epoch after epoch (the loader cut each epoch
at the micro-step: from the first epoch boundary on, 1 × 2 micro-batches and 2 ranks trained on
other samples, a training probe)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_run, torchrun
from pixeljit.checkpoints.run import load_checkpoint
from pixeljit.data.loader import DeviceLoader
from pixeljit.training.loop import train
from pixeljit.training.revisions import revision_changes


class Indexed:
    """A data set whose sample i is the image filled with i (its label too)."""

    def __init__(self, n: int):
        self.labels = np.arange(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, indices: np.ndarray) -> np.ndarray:
        return np.broadcast_to(
            indices.astype(np.uint8)[:, None, None, None], (len(indices), 1, 1, 1)
        ).copy()


def step_samples(n: int, step_batch: int, world: int, accumulation: int, steps: int) -> list:
    """The sorted sample indices of each optimiser step, over every rank and micro-step."""
    micro_step = step_batch // accumulation  # every rank's micro-batches together
    loaders = [DeviceLoader(Indexed(n), micro_step, rank=r, world_size=world, flip=False,
                            epoch_batch=step_batch) for r in range(world)]  # fmt: skip
    seen = []
    for _ in range(steps):
        labels = [
            int(y) for _ in range(accumulation) for loader in loaders for y in next(loader)[1]
        ]
        seen.append(sorted(labels))
    return seen


def test_every_layout_of_a_step_sees_the_same_samples_across_epochs():
    n, step_batch, steps = 100, 40, 7  # 2 steps an epoch, 20 samples left over: 3.5 epochs
    one = step_samples(n, step_batch, world=1, accumulation=4, steps=steps)
    assert one == step_samples(n, step_batch, world=2, accumulation=2, steps=steps)
    assert one == step_samples(n, step_batch, world=4, accumulation=1, steps=steps)
    assert all(len(set(s)) == step_batch for s in one)
    for epoch in range(3):  # each epoch: two steps of distinct samples
        assert not set(one[2 * epoch]) & set(one[2 * epoch + 1])
    assert one[2] != one[0]  # a new order each epoch


def test_a_loader_resumed_inside_a_step_continues_it():
    n, batch = 100, 40
    straight = DeviceLoader(Indexed(n), 10, flip=False, epoch_batch=batch)
    labels = [next(straight)[1].tolist() for _ in range(12)]
    again = DeviceLoader(Indexed(n), 10, flip=False, epoch_batch=batch)
    for _ in range(7):
        next(again)
    resumed = DeviceLoader(Indexed(n), 10, flip=False, epoch_batch=batch)
    resumed.load_state_dict(again.state_dict())
    assert [next(resumed)[1].tolist() for _ in range(5)] == labels[7:]


@pytest.mark.slow
def test_one_process_accumulating_trains_as_two_ranks_across_epochs(fmnist16, tmp_path):
    """40 images, batch 16: 8 left over each epoch; 6 steps cross two epoch boundaries."""
    data = fmnist16(40)
    common = {"optim.global_batch": 16, "optim.steps": 6, "optim.warmup_epochs": 0.0,
              "run.log_every": 1}  # fmt: skip
    train(tiny_run(data, tmp_path / "single", **common, **{"optim.micro_batch": 8}),
          progress=False)  # fmt: skip
    flags = ["train", "--data", str(data), "--out",
             str(tmp_path / "ddp"), "--steps", "6", "--batch-size", "16", "--no-progress",
             "--config", str(tmp_path / "single" / "config.yaml")]  # fmt: skip
    flags += ["--set", "optim.micro_batch=null"]  # two ranks of 8: the same micro-batch
    done = torchrun(flags, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = load_checkpoint(tmp_path / "single"), load_checkpoint(tmp_path / "ddp")
    assert one["loader"]["epoch"] == two["loader"]["epoch"] == 3
    for key, value in one["model"].items():
        assert torch.allclose(value, two["model"][key], rtol=1e-4, atol=1e-6), key


def test_an_accumulating_run_of_revision_3_resumes_inexactly_where_its_cut_moved():
    saved = {"training_revision": 3, "step": 10,
             "config": {"optim": {"global_batch": 40}, "run": {"seed": 0}, "model": {}},
             "loader": {"global_batch": 20, "num_samples": 100}}  # fmt: skip
    (change,) = revision_changes(saved)
    assert change.startswith("training revision 3 → 4 (the epoch cut of gradient accumulation")
    assert (
        "a micro-step of 20 did), and this run accumulates micro-steps of 20 over a data "
        "set of 100: from its first epoch end on" in change
    )
    assert revision_changes({**saved, "loader": {"global_batch": 20, "num_samples": 90}}) == []
    assert revision_changes({**saved, "loader": {"global_batch": 40, "num_samples": 100}}) == []
    assert revision_changes({**saved, "training_revision": 4}) == []
