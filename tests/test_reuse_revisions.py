"""`--reuse` takes a finished cell only when the training code that trained it would train it the
same today: a cell of an older training revision whose changes since touch its run (or of a
newer, unknown one) is not taken, and the report says why; one whose revision changes do not
touch it is taken. A result records the revision that trained it, so a donor whose checkpoint
was removed is still judged. Before, --reuse compared recipes only, and a cell trained under
older code could be taken into a newer grid."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from extractors import PoolExtractor, Recorder, bottleneck_reusing_nothing, one_cell_noise_grid
from pixeljit.checkpoints.checksums import CHECKSUM_KEY, checksums
from pixeljit.experiments import bottleneck
from pixeljit.experiments.evidence import RESULT_NAME
from pixeljit.experiments.grid import CELLS_FOLDER
from pixeljit.training.revisions import REVISION_KEY, TRAINING_REVISION
from test_grid_cell_files import NOISE, PLAIN


@pytest.fixture(scope="module")
def donor(tmp_path_factory):
    """NOISE run once: (results folder, its one cell folder)."""
    return one_cell_noise_grid(tmp_path_factory.mktemp("noise"), NOISE)


def copy_of(donor, tmp_path, revision: int | None, record: bool):
    """A copy of the donor folder whose cell's checkpoint says it was written at `revision`
    (None: before revisions were recorded), its result recording it only if `record`."""
    out, folder = donor
    shutil.copytree(out, tmp_path / "copy")
    cell = tmp_path / "copy" / CELLS_FOLDER / folder.name
    path = cell / "latest.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    state.pop(REVISION_KEY, None)
    if revision is not None:
        state[REVISION_KEY] = revision
    del state[CHECKSUM_KEY]
    state[CHECKSUM_KEY] = checksums(state)
    path.unlink()
    torch.save(state, path)
    result = json.loads((cell / RESULT_NAME).read_text())
    result.pop(REVISION_KEY, None)
    if record and revision is not None:
        result[REVISION_KEY] = revision
    (cell / RESULT_NAME).write_text(json.dumps(result))
    return tmp_path / "copy", cell


def taken(out, tmp_path) -> dict:
    report = bottleneck.run_bottleneck(PLAIN, tmp_path / "b", reuse=[out],
                                       extractor=PoolExtractor(),
                                       train_fn=Recorder(allowed=False))  # fmt: skip
    (cell,) = report["cells"]
    return cell


def test_a_result_records_the_revision_that_trained_it(donor):
    _, folder = donor
    assert json.loads((folder / RESULT_NAME).read_text())[REVISION_KEY] == TRAINING_REVISION


def test_a_cell_of_a_newer_training_code_is_not_taken(donor, tmp_path):
    out, _ = copy_of(donor, tmp_path, TRAINING_REVISION + 1, record=False)
    said = bottleneck_reusing_nothing(PLAIN, tmp_path / "b", [out])
    assert (
        f"the training code (training revision {TRAINING_REVISION + 1} trained it, this code "
        f"trains {TRAINING_REVISION}: the checkpoint was written by a newer pixeljit" in said
    ), said


def test_a_cell_of_revision_3_untouched_by_revision_4_is_taken(donor, tmp_path):
    """Revision 4 changed the epoch cut of accumulating runs; this cell does not accumulate."""
    out, cell = copy_of(donor, tmp_path, 3, record=False)
    assert taken(out, tmp_path)["reused_from"] == str(cell)


def test_a_cell_of_revision_1_trained_inside_its_warm_up_is_not_taken(donor, tmp_path):
    """Revision 2 moved the warm-up's rate (step k at base·k/W): the donor's run began inside its
    warm-up (optim.warmup_epochs 0.2, a step), so today's code would train it otherwise."""
    out, _ = copy_of(donor, tmp_path, None, record=False)  # no revision: written at revision 1
    said = bottleneck_reusing_nothing(PLAIN, tmp_path / "b", [out])
    assert (
        f"the training code (training revision 1 trained it, this code trains "
        f"{TRAINING_REVISION}: training revision 1 → 2 (e7c8584, 2 Dec 2026): the learning-rate "
        "warm-up trains step k at base·k/W (it was base·(k+1)/W), and the checkpoint's step 0 "
        "lies inside its warm-up of 1 steps" in said
    ), said


def test_a_donor_without_checkpoint_is_judged_by_its_result(donor, tmp_path):
    out, cell = copy_of(donor, tmp_path, TRAINING_REVISION, record=True)
    (cell / "latest.pt").unlink()
    assert taken(out, tmp_path)["reused_from"] == str(cell)  # the result says: this code's

    out, cell = copy_of(donor, tmp_path / "unrecorded", 3, record=False)
    (cell / "latest.pt").unlink()
    said = bottleneck_reusing_nothing(PLAIN, tmp_path / "c", [out])
    assert "the training code (no checkpoint tells which revision trained it" in said, said

    out, cell = copy_of(donor, tmp_path / "recorded", 3, record=True)
    (cell / "latest.pt").unlink()
    said = bottleneck_reusing_nothing(PLAIN, tmp_path / "d", [out])
    assert (
        f"the training code (training revision 3 trained it, this code trains "
        f"{TRAINING_REVISION}; its checkpoint, which tells whether the changes since touch it, "
        "is unreadable" in said
    ), said
