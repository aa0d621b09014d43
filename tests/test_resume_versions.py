"""Runs written by older pixeljit versions resume as they should: a config field added since
(absent from their checkpoint and config.yaml alike) is no edit and no changed setting, and a
change of the training code without a config field (the training revision each checkpoint
records) is an inexact resume where it touches the run, and nothing where it does not.

An "old" run is one the current code trained, then edited the way an older version wrote it
(0805db9's layout): no `training_revision`, and no field added to the config or the execution
facts since."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import tiny_run
from pixeljit.checkpoints.checksums import CHECKSUM_KEY, checksums
from pixeljit.checkpoints.run import load_checkpoint
from pixeljit.cli import main
from pixeljit.training.config_io import yaml_text
from pixeljit.training.loop import train

# what 0805db9 did not write: fields added to the config, execution facts added since
NEWER_CONFIG = {
    "optim": ("ema_warmup_offset", "decay_1d"),
    "run": ("activation_checkpointing", "fsdp_bf16_params", "bf16_residual", "matmul_precision"),
}
NEWER_FACTS = ("checkpointed_graph", "fsdp_bf16_params", "bf16_residual", "matmul_precision")
REVISION = "training_revision"
ALLOW = "--allow-inexact-resume"
REV_1_TO_2 = "training revision 1 → 2 (e7c8584, 2 Dec 2026)"
BACK_TO_1 = (
    "resume it with the pixeljit that wrote it (training revision 1, before e7c8584, 2 Dec 2026)"
)
INEXACT = "resuming inexactly (the run will not match an uninterrupted one bit for bit): "


def make_old(folder: Path, config_yaml: bool = True) -> None:
    """Rewrite the run in `folder` as an older pixeljit wrote it: its latest.pt without the
    training revision and without the newer fields (its checksum recomputed, as that version
    computed it over what it wrote), and its config.yaml without them (`config_yaml` False:
    moved away, so that only the checkpoint is judged)."""
    path = folder / "latest.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    state.pop(REVISION, None)
    del state[CHECKSUM_KEY]
    for section, names in NEWER_CONFIG.items():
        for name in names:
            del state["config"][section][name]
    for name in NEWER_FACTS:
        del state["execution"][name]
    state[CHECKSUM_KEY] = checksums(state)
    path.unlink()
    torch.save(state, path)
    if config_yaml:
        (folder / "config.yaml").write_text(yaml_text(state["config"]))
    else:
        (folder / "config.yaml").unlink()


def same_weights(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first["step"] == second["step"]
    for key in ("model", "optimizer", "ema"):
        assert_equal(first[key], second[key], key)


def assert_equal(a, b, name: str) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), name
        for key in a:
            assert_equal(a[key], b[key], f"{name}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), name
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal(x, y, f"{name}.{i}")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), name
    else:
        assert a == b, name


def resume(run: Path, steps: int, *extra: str) -> int:
    return main(["train", "--resume", str(run), "--steps", str(steps), "--no-progress", *extra])


def test_checkpoints_record_the_training_revision(fmnist16, tmp_path):
    out = tmp_path / "run"
    train(tiny_run(fmnist16(64), out), progress=False)
    assert load_checkpoint(out).get(REVISION) == 4
    from pixeljit.training.revisions import TRAINING_REVISION

    assert TRAINING_REVISION == 4


def test_an_old_run_folder_resumes_untouched_exactly_and_names_no_added_field(
    fmnist16, tmp_path, capsys
):
    """0805db9's run, resumed with its own config.yaml in place: no edit found in the file, no
    field it lacks named as a changed setting, and (no revision change touches it: no warm-up,
    no dropout) the same weights as an uninterrupted run."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    train(tiny_run(fmnist16(64), run), progress=False)
    train(tiny_run(fmnist16(64), straight, **{"optim.steps": 3}), progress=False)
    make_old(run)
    capsys.readouterr()
    assert resume(run, 3) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    changed = [line for line in out.splitlines() if line.startswith("resumed with changed")]
    assert changed == ["resumed with changed settings: optim.steps 2 → 3"]
    assert "inexact" not in out
    same_weights(run, straight)
    assert load_checkpoint(run)[REVISION] == 4  # written by this code now


def test_an_old_runs_config_yaml_passed_with_config_applies(fmnist16, tmp_path, capsys):
    """The refusal's own advice, `--config RUN/config.yaml`, failed the same way."""
    run = tmp_path / "run"
    train(tiny_run(fmnist16(64), run), progress=False)
    make_old(run)
    config = run / "config.yaml"
    assert resume(run, 3, "--config", str(config)) == 0, capsys.readouterr().err
    assert load_checkpoint(run)["step"] == 3


def test_an_edited_old_config_yaml_is_refused_naming_only_the_edit(fmnist16, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_run(fmnist16(64), run), progress=False)
    make_old(run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("  every: 0\n", "  every: 5\n"))
    edited = config.read_text()
    capsys.readouterr()
    assert resume(run, 3) == 2
    err = capsys.readouterr().err
    assert (
        f"{config} differs from the checkpoint's config (sample.every 0 in the checkpoint, 5 in "
        "the file): --resume continues" in err
    ), err
    assert config.read_text() == edited and load_checkpoint(run)["step"] == 2


def test_an_old_run_inside_its_warmup_is_an_inexact_resume(fmnist16, tmp_path, capsys):
    """Revision 2 moved the warm-up one step (base·k/W, was base·(k+1)/W): an old run resumed
    inside its warm-up would silently train otherwise. Refused, before the data is opened,
    naming why; allowed by the flag, said once; a run of this code resumes there in silence."""
    warm = {"optim.warmup_epochs": 1.0}  # 64 images at batch 16: a warm-up of 4 steps
    run, current, straight = tmp_path / "run", tmp_path / "current", tmp_path / "straight"
    for folder in (run, current):
        train(tiny_run(fmnist16(64), folder, **warm), progress=False)
    train(tiny_run(fmnist16(64), straight, **warm, **{"optim.steps": 4}), progress=False)
    make_old(run, config_yaml=False)
    capsys.readouterr()
    assert resume(run, 4) == 2
    captured = capsys.readouterr()
    why = (
        f"{REV_1_TO_2}: the learning-rate warm-up trains step k at base·k/W (it was "
        "base·(k+1)/W), and the checkpoint's step 2 lies inside its warm-up of 4 steps "
        "(optim.warmup_epochs 1.0)"
    )
    refusal = (
        f"error: resuming {run / 'latest.pt'} with a change would not continue the run "
        f"bit-exactly: {why}; {BACK_TO_1}, or pass {ALLOW} to continue anyway (--debug"
    )
    assert refusal in captured.err, captured.err
    assert load_checkpoint(run)["step"] == 2
    # known from the checkpoint alone: refused before the data is opened (or packed), even
    # when it could not be
    assert resume(run, 4, "--data", str(tmp_path / "not-there")) == 2
    assert f"bit-exactly: {why}; {BACK_TO_1}" in capsys.readouterr().err

    assert resume(run, 4, ALLOW) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "inexact" in line] == [INEXACT + why]
    assert "resumed with changed settings: optim.steps 2 → 4" in out.splitlines()
    assert load_checkpoint(run)[REVISION] == 4
    same_weights(run, straight)  # under this code's schedule from step 2 on

    assert resume(current, 4) == 0  # the same run written by this code: exact, nothing said
    out = capsys.readouterr().out
    assert "inexact" not in out and "revision" not in out
    same_weights(current, straight)


def test_an_old_run_at_the_end_of_its_warmup_resumes_exactly(fmnist16, tmp_path, capsys):
    """The warm-up's change touches steps k < W only: an old run checkpointed at step W (its
    warm-up trained whole) resumes at the base rate either way, without refusal; one step
    earlier, its last warm-up step is yet to train, and it is touched."""
    from pixeljit.training.revisions import revision_changes

    run = tmp_path / "run"  # 64 images at batch 16, warm-up 0.5 epochs: W = 2 = its steps
    train(tiny_run(fmnist16(64), run, **{"optim.warmup_epochs": 0.5}), progress=False)
    make_old(run, config_yaml=False)
    saved = load_checkpoint(run, tensors=False)
    assert saved["step"] == 2 and revision_changes(saved, None, total_steps=3) == []
    assert revision_changes({**saved, "step": 1}, None, total_steps=3) == [
        f"{REV_1_TO_2}: the learning-rate warm-up trains step k at base·k/W (it was "
        "base·(k+1)/W), and the checkpoint's step 1 lies inside its warm-up of 2 steps "
        "(optim.warmup_epochs 0.5)"
    ]
    capsys.readouterr()
    assert resume(run, 3) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "inexact" not in out and "revision" not in out
    assert load_checkpoint(run)["step"] == 3


def test_an_old_run_with_dropout_in_a_block_that_lost_it_is_an_inexact_resume(
    fmnist16, tmp_path, capsys
):
    """fmnist-tiny has depth 2: revision 1 put its dropout in block 0 (i < 3·depth//4), revision
    2 in none (i < depth//4·3), and attn_dropout acted in every block."""
    drop = {"model.dropout": 0.2, "model.attn_dropout": 0.1}
    run = tmp_path / "run"
    train(tiny_run(fmnist16(64), run, **drop), progress=False)
    make_old(run, config_yaml=False)
    capsys.readouterr()
    assert resume(run, 3) == 2
    err = capsys.readouterr().err
    whys = [
        f"{REV_1_TO_2}: model.dropout acts in no block of model.depth 2 by default (depth//4 ≤ "
        "i < depth//4·3; it acted in block 0, i < 3·depth//4), and this run has model.dropout "
        "0.2",
        f"{REV_1_TO_2}: model.attn_dropout acts only in the dropout blocks (no block of "
        "model.depth 2; it acted in every block), and this run has model.attn_dropout 0.1",
    ]
    assert f"bit-exactly: {'; '.join(whys)}; {BACK_TO_1}, or pass {ALLOW}" in err, err
    assert load_checkpoint(run)["step"] == 2


def test_a_revision_change_touches_only_the_runs_it_changes(fmnist16, tmp_path):
    """Each change of revision 2 against the run it touches, and the runs it leaves alone."""
    from pixeljit.training.revisions import revision_changes

    run = tmp_path / "run"
    train(tiny_run(fmnist16(64), run), progress=False)
    saved = load_checkpoint(run, tensors=False)
    assert revision_changes(saved) == []  # this code's own
    old = {k: v for k, v in saved.items() if k != REVISION}
    assert revision_changes(old) == []  # no warm-up, no dropout, sdpa attention

    def with_model(**fields) -> dict:
        config = {**old["config"], "model": {**old["config"]["model"], **fields}}
        return {**old, "config": config}

    # depth 8: the default range is blocks 2–5 either way; a range given is the same range
    assert revision_changes(with_model(depth=8, dropout=0.1)) == []
    assert revision_changes(with_model(dropout=0.1, dropout_blocks=[0, 1])) == []
    assert revision_changes(with_model(attn_dropout=0.1, dropout_blocks=[0, 2])) == []
    assert len(revision_changes(with_model(depth=6, dropout=0.1))) == 1  # blocks 1–3 → 1–2
    # fp32 attention in an fp32 run: head dimension 16 scales alike; 8's 1/√8 rounds
    assert revision_changes(with_model(attention="fp32")) == []
    assert revision_changes(with_model(attention="fp32", num_heads=4)) == [
        f"{REV_1_TO_2}: model.attention 'fp32' multiplies the attention weights by V under the "
        "ambient autocast and scales QKᵀ by ·(1/√d) (it multiplied in float32 and divided by "
        "√d), and this run's head dimension 8 is not a power of 4, so 1/√8 rounds and the two "
        "scalings differ"
    ]
    bf16 = {"precision": "bf16"}
    touched = revision_changes(with_model(attention="fp32"), {**saved["execution"], **bf16})
    assert [why.rsplit(", and ", 1)[1] for why in touched] == ["this run trains in bf16"]
    newer = {**saved, REVISION: 5}
    assert revision_changes(newer) == [
        "the checkpoint was written by a newer pixeljit, of training revision 5 (this one "
        "trains revision 4), whose changes are unknown here"
    ]


def test_a_seed_of_two_words_is_a_change_of_revision_3(fmnist16, tmp_path):
    """pixeljit.rng now derives the data order and the step noise of a run.seed ≥ 2³² otherwise:
    a revision-2 checkpoint of such a run resumes inexactly; one of a smaller seed, exactly."""
    from pixeljit.training.revisions import revision_changes, revision_fix

    run = tmp_path / "run"
    train(tiny_run(fmnist16(64), run), progress=False)
    saved = load_checkpoint(run, tensors=False)

    def revision_2(seed: int) -> dict:
        config = {**saved["config"], "run": {**saved["config"]["run"], "seed": seed}}
        return {**saved, "config": config, REVISION: 2}

    assert revision_changes(revision_2(2**32 - 1)) == []
    assert revision_changes({**revision_2(2**32), REVISION: 3}) == []  # revision 3 on
    assert revision_changes(revision_2(2**32)) == [
        "training revision 2 → 3 (the wide-seed fix of pixeljit.rng, 2 Dec 2026): the data "
        "order and the training noise derive from run.seed 4294967296 otherwise (a seed of 2³² "
        "or more was read as two smaller keys, and collided with other seeds)"
    ]
    assert "training revision 2, before the wide-seed fix" in revision_fix(revision_2(2**32))
