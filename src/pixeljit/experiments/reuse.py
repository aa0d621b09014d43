"""Cells another results folder already finished, taken instead of trained again (`--reuse DIR`).

The image grids share cells: `table2`'s bottlenecked v-loss cells are `noise`'s μ = −0.8 row and
`resolution`'s largest size with s = size/256, and its x-prediction one is `bottleneck`'s `none`.
A finished cell of another folder is taken only when everything its numbers depend on is the
same:

- the training recipe as the engine resolved it (its saved config), all but where the run wrote
  and read (`run.out`, `data.source`), how often it logged and saved, and its preview grids;
- the packed images themselves (the fingerprint of their manifest: file digests, labels, shape);
- how it was sampled and scored (samples, sampler, weights, scoring size);
- the real statistics it was scored against (features' mean and covariance, HF energy, count);
- the training code: no change since the revision that trained it (`training.revisions`) would
  have trained it otherwise (judged over its whole run from its checkpoint).

The taken result is written into this grid's own cell folder under this grid's name and labels,
with `reused_from` naming the cell folder it came from; its sample grid is copied beside it.
Nothing in the other folder is written.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pixeljit.checkpoints.run import load_checkpoint
from pixeljit.data.packed import PackedDataset
from pixeljit.experiments.evidence import (
    GRID_NAME,
    RESULT_NAME,
    REUSED_KEY,
    Cell,
    Measure,
    RealReference,
    grid_readable,
    read_json,
    write_json,
)
from pixeljit.files.atomic import atomic_write
from pixeljit.training import distributed
from pixeljit.training.config import TrainConfig
from pixeljit.training.config_io import plain_json, to_dict
from pixeljit.training.resume import (
    LENGTH_FIELDS,
    LOGISTICAL,
    LOGISTICAL_SECTIONS,
    RESOLVED,
    data_fingerprint,
    with_added_fields,
)
from pixeljit.training.revisions import (
    REVISION_KEY,
    TRAINING_REVISION,
    checkpoint_revision,
    revision_changes,
)
from pixeljit.training.setup import resolve_config

CELLS_FOLDER = "cells"
REFERENCE_NAME = "real-reference.npz"
# what resuming may change freely but the run's length, and where the data was read: not what
# the cell computed (the preview sections draw from their own seeds)
DEVICE_KEY = "run.device"
NOT_RESULTS = (LOGISTICAL - {f"optim.{name}" for name in LENGTH_FIELDS}) | {"data.source"}


def _flat(config: dict) -> dict:
    return {f"{section}.{name}": value for section, fields in config.items()
            if isinstance(fields, dict) for name, value in fields.items()}  # fmt: skip


_DEFAULTS = _flat(to_dict(TrainConfig()))


def recipe(config: dict) -> dict:
    """What of a saved training config decides the cell's numbers, flat ("section.field").
    A field added to the config after the cell was trained reads as the value that means what
    the code did before (`ADDED_FIELDS`; execution choices such as `run.bf16_residual`: their
    defaults, which are the old behaviour)."""
    flat = _flat(with_added_fields(config))
    for key in RESOLVED:
        flat.setdefault(key, _DEFAULTS.get(key))
    if isinstance(flat.get(DEVICE_KEY), str):  # 'auto' and 'cpu' ran alike on a CPU machine
        flat[DEVICE_KEY] = distributed.device_kind(flat[DEVICE_KEY])
    return {k: v for k, v in flat.items()
            if k not in NOT_RESULTS and not k.startswith(LOGISTICAL_SECTIONS)}  # fmt: skip


def measure_facts(measure: dict, size: int) -> dict:
    """How a cell was sampled and scored (its result's `measure`), the scoring size spelled out
    (None: the cell's own `size`)."""
    return plain_json({**measure, "score_size": measure.get("score_size") or size})


def _fingerprint(source: str, cache: dict[str, str | None]) -> str | None:
    """The fingerprint of a donor's packed images (None: moved or unreadable)."""
    if source not in cache:
        try:
            cache[source] = data_fingerprint(PackedDataset(source))
        except (OSError, ValueError):
            cache[source] = None
    return cache[source]


@dataclass(frozen=True)
class Donor:
    """A finished cell of another results folder."""

    folder: Path
    result: dict
    recipe: dict
    data: str | None  # fingerprint of its packed images
    real: RealReference
    code: str | None = None  # how the training code changed since it trained it (None: not)

    @property
    def origin(self) -> str:
        """The cell that trained it: a cell that was itself taken names its own source."""
        return str(self.result.get(REUSED_KEY) or self.folder)


def same_real(a: RealReference, b: RealReference, size: int) -> bool:
    return (a.count == b.count and a.hf_by_size.get(size) == b.hf_by_size.get(size)
            and np.array_equal(a.mu, b.mu) and np.array_equal(a.sigma, b.sigma))  # fmt: skip


def find_donors(folders, stats_name: str) -> tuple[list[Donor], list[str]]:
    """Every finished cell of `folders` (results folders of any grid, cells they took from
    others included) whose real statistics were taken with the extractor `stats_name`; and, for
    each folder that offers none, why."""
    donors, prints, empty = [], {}, []
    for folder in map(Path, folders):
        try:
            real, _ = RealReference.load(folder / REFERENCE_NAME, stats_name)
        except (OSError, ValueError) as err:
            empty.append(f"{folder}: no real statistics of {stats_name} ({err})")
            continue
        found = len(donors)
        cells = folder / CELLS_FOLDER
        for cell in sorted(cells.iterdir()) if cells.is_dir() else ():
            if not (cell / RESULT_NAME).is_file():
                continue
            result = read_json(cell / RESULT_NAME)
            config = result.get("config")
            if not isinstance(config, dict):
                continue
            source = config.get("data", {}).get("source", "")
            data = _fingerprint(str(source), prints) if source else None
            donor = Donor(cell, result, recipe(config), data, real)
            donors.append(dataclasses.replace(donor, code=code_change(donor)))
        if len(donors) == found:
            empty.append(f"{folder}: no finished cells")
    return donors, empty


def code_change(donor: Donor) -> str | None:
    """How the training code changed since it trained `donor`'s cell, in a way that would have
    trained that cell otherwise (`revisions.revision_changes` over its whole run, read from the
    checkpoint of the cell that trained it); None when nothing would be different. A result
    recording this code's revision needs no checkpoint; otherwise a missing one is a reason."""
    if donor.result.get(REVISION_KEY) == TRAINING_REVISION:
        return None
    try:
        saved = load_checkpoint(donor.origin, flag=None, tensors=False)
        was = checkpoint_revision(saved)
    except (OSError, ValueError) as err:
        recorded = donor.result.get(REVISION_KEY)
        if recorded is None:
            return f"the training code (no checkpoint tells which revision trained it: {err})"
        return (f"the training code (training revision {recorded} trained it, this code trains "
                f"{TRAINING_REVISION}; its checkpoint, which tells whether the changes since "
                f"touch it, is unreadable: {err})")  # fmt: skip
    start = {**saved, "step": 0, "loader": {**(saved.get("loader") or {}), "epoch": 0,
                                             "position": 0}}  # fmt: skip
    changed = revision_changes(start, None, total_steps=saved.get("step"))
    if not changed:
        return None
    return (f"the training code (training revision {was} trained it, this code trains "
            f"{TRAINING_REVISION}: {changed[0]})")  # fmt: skip


def differences(donor: Donor, wanted: dict, data: str, facts: dict, real, size: int) -> list[str]:
    """What keeps `donor` from standing for a cell: each differing recipe field (its value
    there and here), and the packed images, the measure or the real statistics."""
    found = [f"{key} {donor.recipe.get(key)!r} there, {wanted.get(key)!r} here"
             for key in sorted(set(wanted) | set(donor.recipe))
             if donor.recipe.get(key) != wanted.get(key)]  # fmt: skip
    if donor.data is None or donor.data != data:
        found.append("the packed images (moved, or other images)")
    measured = donor.result.get("measure")
    if not isinstance(measured, dict) or measure_facts(measured, size) != facts:
        found.append("how the cells are sampled and scored (samples, sampler, weights)")
    if not same_real(donor.real, real, size):
        found.append("the real reference (its images or count)")
    if not grid_readable(donor.folder / GRID_NAME):
        found.append(f"its sample grid ({GRID_NAME}: missing or not an image)")
    if donor.code is not None:
        found.append(donor.code)
    return found


@dataclass(frozen=True)
class Taken:
    """What `take_finished` did: cell name → the cell its result came from; how many cells
    were unfinished; for those not taken, what their nearest finished cells differ in."""

    cells: dict[str, str]
    unfinished: int
    nearest: list[str]


def take_finished(
    cells: list[Cell],
    measure: Measure,
    real: RealReference,
    donors: list[Donor],
    datasets: dict[str, PackedDataset],
) -> Taken:
    """Write the result of a matching donor into every unfinished cell that has one (`datasets`:
    the grid's packed images, by folder)."""
    unfinished = [c for c in cells if not (Path(c.config.run.out) / RESULT_NAME).is_file()]
    taken: dict[str, str] = {}
    nearest: list[str] = []
    single = distributed.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    for cell in unfinished if donors else ():
        dataset = datasets[cell.config.data.source]
        try:  # the config as the engine will resolve it (classes, noise scale)
            resolved, _ = resolve_config(cell.config, dataset, single)
        except ValueError:  # training the cell will say what is wrong
            continue
        wanted = recipe(to_dict(resolved))
        data = data_fingerprint(dataset)
        size = cell.config.model.image_size
        facts = measure_facts(measure.record(), size)
        found = [differences(d, wanted, data, facts, real, size) for d in donors]
        best = min(range(len(donors)), key=lambda k: len(found[k]))
        if found[best]:
            shown = "; ".join(found[best][:MAX_SHOWN])
            more = len(found[best]) - MAX_SHOWN
            nearest.append(shown + (f"; and {more} more" if more > 0 else ""))
            continue
        adopt(cell, donors[best])
        taken[cell.name] = donors[best].origin
    return Taken(taken, len(unfinished), nearest)


MAX_SHOWN = 3  # differences named for a cell not taken; distinct reasons in the report


def reuse_report(taken: Taken, empty: list[str]) -> str:
    """The lines a grid prints after `--reuse`: the cells taken (and from where), and why the
    others were not: what their nearest finished cells differ in, or that a folder offered
    nothing."""
    lines = [f"taken from --reuse: {len(taken.cells)} of the {taken.unfinished} unfinished "
             "cell(s)"]  # fmt: skip
    lines += [f"  {name} ← {source}" for name, source in taken.cells.items()]
    if taken.nearest:
        reasons = Counter(taken.nearest).most_common()
        lines.append(f"  not taken: {len(taken.nearest)} cell(s); the nearest finished cell "
                     "differs in:")  # fmt: skip
        lines += [f"    {reason}" + (f" ({n} cells)" if n > 1 else "")
                  for reason, n in reasons[:MAX_SHOWN]]  # fmt: skip
        if len(reasons) > MAX_SHOWN:
            lines.append(f"    … and {len(reasons) - MAX_SHOWN} other difference(s)")
    lines += [f"  --reuse {line}" for line in empty]
    return "\n".join(lines)


def adopt(cell: Cell, donor: Donor) -> None:
    """The donor's result under this cell's name, labels and config, and its sample grid."""
    folder = Path(cell.config.run.out)
    folder.mkdir(parents=True, exist_ok=True)
    # its own grid, never a path its result names; whole or not at all (a full disk)
    atomic_write(folder / GRID_NAME, lambda tmp: shutil.copyfile(donor.folder / GRID_NAME, tmp))
    config = donor.result["config"]
    config = {**config, "run": {**config.get("run", {}), "out": str(folder)},
              "data": {**config.get("data", {}), "source": cell.config.data.source}}  # fmt: skip
    result = {**donor.result, "name": cell.name, "labels": plain_json(cell.labels),
              "config": config, "grid": GRID_NAME, REUSED_KEY: donor.origin}  # fmt: skip
    write_json(folder / RESULT_NAME, result)  # last: its presence marks the cell finished
