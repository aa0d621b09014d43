"""Every verb as a user runs it with bad values, bad paths and bad files: one line on stderr,
exit 2, nothing loaded or written first (the flags the messages name: test_cli_message_flags.py)."""

from __future__ import annotations

import argparse
import errno

import pytest
import torch

import pixeljit
from cli_errors import check_flags, cli_error
from conftest import TINY_NET
from pixeljit.checkpoints.run import LATEST, save_checkpoint
from pixeljit.cli import build_parser, main, reproduce_grid
from pixeljit.cli.reproduce_grid import MAX_JOBS

TINY = TINY_NET  # conftest: the network `tiny_file` holds


def _never_called(*args, **kwargs):
    raise AssertionError("the work ran before the check that should refuse it")


@pytest.fixture
def no_loading(monkeypatch):
    """Any checkpoint loading fails the test: the refusal must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the flags were checked")

    # the verb modules first: importing one binds whatever load_trained is at that moment
    monkeypatch.setattr("pixeljit.cli.sample.load_trained", refuse)
    monkeypatch.setattr("pixeljit.cli.convert.load_trained", refuse)
    monkeypatch.setattr("pixeljit.checkpoints.load.load_trained", refuse)


NAN, INF = "nan", "inf"
SAMPLE_BAD = [
    ("--num", ["0"]), ("--num", ["-3"]), ("--batch-size", ["0"]), ("--seed", ["-1"]),
    ("--seed", [str(2**63)]), ("--scale", ["0"]), ("--scale", ["100000"]), ("--ncols", ["0"]),
    ("--cfg", [NAN]), ("--cfg", [INF]), ("--cfg", ["-1"]), ("--steps", ["0"]),
    ("--shift", ["0"]), ("--shift", [NAN]), ("--interval", [NAN, "1"]),
    ("--interval", ["0.5", "2"]), ("--interval", ["0.9", "0.1"]), ("--t-eps", ["0"]),
    ("--t-eps", [INF]), ("--noise-scale", ["0"]), ("--noise-scale", [NAN]),
    ("--noise-scale", ["-inf"]), ("--in-context-start", ["-1"]), ("--labels", ["-1"]),
]  # fmt: skip


@pytest.mark.parametrize("flag, values", SAMPLE_BAD)
def test_sample_numbers_are_checked_before_loading(tiny_file, no_loading, capsys, flag, values):
    given = [f"{flag}={values[0]}"] if len(values) == 1 else [flag, *values]  # "=-inf"
    err = cli_error(capsys, ["sample", str(tiny_file), *given, "--device", "cpu"])
    assert flag in err


EVAL_BAD = [
    ("--num", ["0"]), ("--batch-size", ["-1"]), ("--seed", ["-5"]), ("--size", ["0"]),
    ("--channels", ["2"]), ("--in-context-start", ["-2"]), ("--cfg", [NAN]),
    ("--sweep-cfg", [NAN, "4", "0.1"]), ("--sweep-cfg", ["1", INF, "0.1"]),
    ("--sweep-cfg", ["1", "4", "0"]), ("--sweep-cfg", ["4", "1", "0.1"]),
    ("--sweep-cfg", ["-1", "4", "0.1"]), ("--sweep-cfg", ["0", "1000", "1e-4"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "extra, flag",
    [(["--cfg", "2"], "--cfg"), (["--metrics", "fd", "kid"], "--metrics"),
     (["--save-images", "pngs"], "--save-images")],
)  # fmt: skip
def test_eval_sweep_refuses_flags_it_would_ignore(tiny_file, no_loading, capsys, extra, flag):
    """--sweep-cfg scores FD at each scale of its range: a --cfg, --metrics or --save-images
    beside it would be ignored, so it is refused, naming the flag."""
    argv = ["eval", "--checkpoint", str(tiny_file), "--sweep-cfg", "1", "2", "1", "--ref", "r.npz"]
    err = cli_error(capsys, [*argv, *extra])
    assert f"{flag} has no effect with --sweep-cfg" in err


@pytest.mark.parametrize("flag, values", EVAL_BAD)
def test_eval_numbers_are_checked_before_loading(tiny_file, no_loading, capsys, flag, values):
    argv = ["eval", "--checkpoint", str(tiny_file), "--metrics", "is", "--device", "cpu"]
    err = cli_error(capsys, [*argv, flag, *values])
    assert flag in err


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--seed", "-1"], "--seed"), (["--steps", "0"], "--steps"),
        (["--threads", "0"], "--threads"), (["--dims", "0"], "--dims"),
    ],
)  # fmt: skip
def test_reproduce_numbers_are_checked(tmp_path, capsys, argv, flag):
    err = cli_error(capsys, ["reproduce", "toy", "--quick", "--out", str(tmp_path / "t"), *argv])
    assert flag in err and not (tmp_path / "t").exists()


@pytest.mark.parametrize("name", ["table2", "resolution", "bottleneck", "noise"])
@pytest.mark.parametrize("value", ["0", "-2", str(MAX_JOBS + 1)])
def test_grid_jobs_are_checked_before_anything_is_written(tmp_path, capsys, name, value):
    err = cli_error(capsys, ["reproduce", name, "--quick", "--out", str(tmp_path / "g"),
                          "--jobs", value])  # fmt: skip
    assert "--jobs" in err and not (tmp_path / "g").exists()


@pytest.mark.parametrize("name", ["table2", "resolution", "bottleneck", "noise"])
def test_grid_jobs_beyond_the_cores_are_refused_on_a_cpu(monkeypatch, tmp_path, capsys, name):
    """The help's rule, on a CPU jobs × threads ≤ the cores, is checked like --threads ≤ the
    cores: refused before anything is written, naming both flags and the --jobs that fits."""
    monkeypatch.setattr(reproduce_grid.os, "cpu_count", lambda: 4)

    def check(*flags):
        args = build_parser().parse_args(["reproduce", name, "--quick", *flags])
        reproduce_grid.check_grid_flags(args)

    check("--jobs", "4", "--device", "cpu")
    check("--jobs", "2", "--threads", "2", "--device", "cpu")
    devices = ("cpu",) if torch.cuda.is_available() else ("cpu", "auto")  # auto: the CPU here
    for device in devices:
        with pytest.raises(ValueError, match=r"--jobs 3 × --threads 2 = 6 CPU threads, more "
                           r"than the 4 cores: use --jobs 2 or fewer at --threads 2"):  # fmt: skip
            check("--jobs", "3", "--threads", "2", "--device", device)
        with pytest.raises(ValueError, match="use --jobs 4 or fewer at --threads 1"):
            check("--jobs", "5", "--device", device)
    out = tmp_path / "g"
    err = cli_error(capsys, ["reproduce", name, "--quick", "--out", str(out), "--jobs", "5",
                             "--device", "cpu"])  # fmt: skip
    assert "--jobs 5 × --threads 1" in err and not out.exists()
    # cells on a GPU share the card, not the cores
    assert reproduce_grid.oversubscription("cuda:1", 8, 1, 4) is None


def test_outputs_are_checked_before_loading(tiny_file, tmp_path, no_loading, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    (tmp_path / "dir.png").mkdir()
    cases = [
        (["sample", str(tiny_file), "--out", str(a_file / "grid.png")], "is a file, not a folder"),
        (["sample", str(tiny_file), "--out", str(a_file)], f"--out {a_file} is a file, not a "
         "folder: pass a folder"),
        (["sample", str(tiny_file), "--out", str(tmp_path / "dir.png")], "is a folder"),
        (["convert", str(tiny_file), str(a_file / "x.safetensors")], "is a file, not a folder"),
        (["eval", "--checkpoint", str(tiny_file), "--metrics", "is",
          "--out", str(a_file / "r.json")], "is a file, not a folder"),
        (["eval", "--checkpoint", str(tiny_file), "--metrics", "is",
          "--save-images", str(a_file)], "is a file, not a folder"),
    ]  # fmt: skip
    for argv, message in cases:
        assert message in cli_error(capsys, argv)
    assert a_file.read_text() == "keep me"


def test_existing_outputs_need_overwrite(tiny_file, tmp_path, no_loading, capsys):
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"precious")
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"precious")
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    (pngs / "000000.png").write_bytes(b"precious")
    results = tmp_path / "results.json"
    results.write_bytes(b"precious")
    for argv in (
        ["sample", str(tiny_file), "--out", str(grid)],
        ["sample", str(tiny_file), "--out", str(pngs)],
        ["convert", str(tiny_file), str(out)],
        ["eval", "--checkpoint", str(tiny_file), "--metrics", "is", "--out", str(results)],
    ):
        err = cli_error(capsys, argv)
        assert "already" in err and "--overwrite" in err
    assert grid.read_bytes() == out.read_bytes() == results.read_bytes() == b"precious"


def test_a_users_labels_csv_and_dangling_links_need_overwrite(
    tiny_file, tmp_path, no_loading, capsys
):
    """A folder holding only a labels.csv, and a symbolic link leading nowhere where a file or
    the run folder goes, were written over without --overwrite (the checks looked for PNGs, and
    followed the link to find nothing there)."""
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    (labelled / "labels.csv").write_text("my own labels")
    links = {name: tmp_path / name for name in ("grid.png", "w.safetensors", "r.json", "run")}
    for name, link in links.items():
        link.symlink_to(tmp_path / f"nowhere-{name}")
    cases = [
        (["sample", str(tiny_file), "--out", str(labelled)], "already holds labels.csv"),
        (["eval", "--checkpoint", str(tiny_file), "--metrics", "is", "--save-images",
          str(labelled)], "already holds labels.csv"),
        (["sample", str(tiny_file), "--out", str(links["grid.png"])], "is a symbolic link to"),
        (["convert", str(tiny_file), str(links["w.safetensors"])], "is a symbolic link to"),
        (["eval", "--checkpoint", str(tiny_file), "--metrics", "is", "--out",
          str(links["r.json"])], "is a symbolic link to"),
        (["train", "--preset", "fmnist-tiny", "--data", "fashion-mnist", "--out",
          str(links["run"])], "is a symbolic link to"),
    ]  # fmt: skip
    for argv, message in cases:
        err = cli_error(capsys, argv)
        assert message in err and ("--overwrite" in err or "create that folder" in err), err
    assert (labelled / "labels.csv").read_text() == "my own labels"
    assert sorted(p.name for p in labelled.iterdir()) == ["labels.csv"]
    assert all(link.is_symlink() and not link.exists() for link in links.values())


def test_eval_never_writes_its_results_over_an_input(tiny_file, tmp_path, no_loading, capsys):
    """`eval --checkpoint run --out run/latest.pt --overwrite` replaced the checkpoint it had just
    scored with 88 bytes of JSON: --out must be *.json, and never one of the command's inputs
    (a hub folder's config.json is one), --overwrite or not."""
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_bytes(b"precious")
    stats = tmp_path / "stats.npz"
    stats.write_bytes(b"precious")
    cases = [
        (["--checkpoint", str(tiny_file), "--out", str(tiny_file)], "*.json"),
        (["--checkpoint", str(hub), "--out", str(hub / "config.json")], "is an input"),
        (["--checkpoint", str(hub), "--out", str(hub / ".." / "hub" / "config.json")],
         "is an input"),
        (["--images", str(hub), "--size", "8", "--channels", "3", "--out", str(stats)], "*.json"),
    ]  # fmt: skip
    for argv, expected in cases:
        err = cli_error(capsys, ["eval", *argv, "--metrics", "is", "--overwrite"])
        assert expected in err, err
    assert tiny_file.stat().st_size > 1000
    assert (hub / "config.json").read_bytes() == stats.read_bytes() == b"precious"


@pytest.mark.parametrize("metric, fewest", [("fd", 2), ("kid", 2), ("pr", 4), ("is", 10)])
def test_eval_checks_each_metrics_fewest_images_before_generating(
    tiny_file, no_loading, capsys, metric, fewest
):
    """FD / KID / PR with too few images failed only after every image was generated."""
    argv = ["eval", "--checkpoint", str(tiny_file), "--ref", "x.npz", "--metrics", metric]
    err = cli_error(capsys, [*argv, "--num", str(fewest - 1)])
    # named in full: under torchrun, torchrun's own parser takes --num for its --numa-binding
    assert f"{metric} needs at least {fewest} images" in err and f"--num-images to {fewest}" in err


def test_eval_image_flags_are_refused_with_a_checkpoint(tiny_file, no_loading, capsys):
    """--size / --channels were silently ignored with --checkpoint (the model fixes both)."""
    for flag, value in (("--size", "8"), ("--channels", "3")):
        err = cli_error(capsys, ["eval", "--checkpoint", str(tiny_file), "--metrics", "is", flag,
                              value])  # fmt: skip
        assert f"{flag} has no effect with --checkpoint" in err


def test_overwrite_replaces(tiny_file, tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"old")
    assert main(["convert", str(tiny_file), str(out), "--overwrite"]) == 0
    assert pixeljit.load_safetensors(out).config == TINY


def test_read_only_folder_is_refused(tiny_file, tmp_path, no_loading, capsys, monkeypatch):
    """A folder the user cannot write in is refused before any work, by really trying to write
    there (mode bits alone mislead root). As root a chmod stops nothing, so the write is made to
    fail as it would for a user without permission."""
    import os
    from pathlib import Path

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if getattr(os, "geteuid", lambda: 1)() == 0:
        real_touch = Path.touch

        def denied(self, *args, **kwargs):
            if self.parent == ro:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return real_touch(self, *args, **kwargs)

        monkeypatch.setattr(Path, "touch", denied)
    try:
        err = cli_error(capsys, ["sample", str(tiny_file), "--out", str(ro / "g.png")])
        assert f"cannot write in {ro}" in err and "Permission denied" in err
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []  # nothing written, not even the probe


def test_os_errors_are_one_line(tiny_file, tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.safetensors"))

    monkeypatch.setattr("pixeljit.cli.convert.export_safetensors", full)
    err = cli_error(capsys, ["convert", str(tiny_file), str(tmp_path / "x.safetensors")])
    assert "No space left on device" in err and "x.safetensors" in err
    with pytest.raises(OSError):  # --debug shows the traceback, after the verb or before it
        main(["convert", str(tiny_file), str(tmp_path / "x.safetensors"), "--debug"])
    with pytest.raises(OSError):
        main(["--debug", "convert", str(tiny_file), str(tmp_path / "x.safetensors")])


def test_unreadable_checkpoint_is_one_line(tmp_path, capsys):
    folder = tmp_path / "weights.safetensors"
    folder.mkdir()  # a folder named like a file
    err = cli_error(capsys, ["sample", str(folder), "--out", str(tmp_path / "g.png")])
    assert "weights.safetensors" in err


# an empty value would mean the current folder (or, where code tests truth, no flag at all)
EMPTY_VALUES = [
    ("eval", ["--images", ""], "--images"), ("train", ["--out", ""], "--out"),
    ("train", ["--config", ""], "--config"), ("train", ["--data", ""], "--data"),
    ("train", ["--resume", ""], "--resume"), ("sample", [""], "checkpoint"),
    ("sample", ["{ckpt}", "--out", ""], "--out"), ("convert", ["{ckpt}", ""], "out"),
    ("prepare", ["fashion-mnist", "--size", "8", "--out", ""], "--out"),
    ("reproduce", ["toy", "--out", ""], "--out"),
]  # fmt: skip


@pytest.mark.parametrize("verb, argv, name", EMPTY_VALUES)
def test_empty_values_are_refused(tiny_file, tmp_path, monkeypatch, capsys, verb, argv, name):
    """`pixeljit train --out ''` trained into the current folder and `eval --images ''` raised a
    TypeError traceback: every flag and positional refuses an empty value, naming it."""
    monkeypatch.chdir(tmp_path)
    argv = [a.format(ckpt=tiny_file) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main([verb, *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{name} must not be empty" in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing written in the current folder


# a path no command could open: each is refused by the parser, naming the flag, before any
# work (`reproduce toy --out LOOP/x` trained its grid, then failed writing it)
UNOPENABLE = [
    ("{loop}/x.png", "leads back to itself"), ("{long}.png", "longer than the file system"),
    ("missing/{long}.png", "bytes long, over the"),
    ("{deep}x.png", "longer than the file system allows"), ("a\0b", "NUL"),
]  # fmt: skip
PATH_FLAGS = [
    ("train", ["--preset", "fmnist-small", "--data", "fashion-mnist", "--out", "{p}"], "--out"),
    ("train", ["--preset", "fmnist-small", "--config", "{p}"], "--config"),
    ("sample", ["{ckpt}", "--out", "{p}"], "--out"), ("sample", ["{p}"], "checkpoint"),
    ("convert", ["{ckpt}", "{p}"], "out"), ("convert", ["{ckpt}", "--hub", "{p}"], "--hub"),
    ("prepare", ["fashion-mnist", "--size", "8", "--out", "{p}"], "--out"),
    ("eval", ["--images", "{p}", "--ref", "fashion-mnist"], "--images"),
    ("demo", ["--out", "{p}"], "--out"), ("reproduce", ["toy", "--quick", "--out", "{p}"], "--out"),
]  # fmt: skip


@pytest.mark.parametrize("path, problem", UNOPENABLE)
@pytest.mark.parametrize("verb, argv, name", PATH_FLAGS)
def test_paths_no_command_could_open_are_refused_by_flag(
    tiny_file, tmp_path, monkeypatch, capsys, verb, argv, name, path, problem
):
    """A symbolic-link loop, a name part longer than the file system's limit, a path longer than
    the system's, a NUL: one line naming the flag and the problem, before anything runs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loop").symlink_to("loop")
    path = path.format(loop="loop", long="n" * 300, deep="d/" * 2100)
    argv = [a.format(ckpt=tiny_file, p=path) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main([verb, *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {name} " in err and problem in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop"]  # nothing written


@pytest.mark.parametrize("damage", ["truncated", "checksum"])
@pytest.mark.parametrize(
    "verb, argv",
    [("sample", ["{run}", "--out", "{tmp}/s.png"]), ("eval", ["--checkpoint", "{run}"]),
     ("convert", ["{run}", "{tmp}/o.safetensors"])],
)  # fmt: skip
def test_a_corrupt_latest_names_a_milestone_in_the_verbs_own_terms(
    tmp_path, capsys, verb, argv, damage
):
    """The hint to use a milestone instead must not send a `sample` user to `--resume` (a flag of
    `train` only)."""
    run = tmp_path / "run"
    run.mkdir()
    state = {"step": 3, "model": {"w": torch.zeros(2)}}
    save_checkpoint(state, run, 3, milestone=True)  # a hard link to the latest.pt of step 3
    save_checkpoint({**state, "step": 5}, run, 5, milestone=False)  # a new file: not damaged
    latest = run / LATEST
    if damage == "truncated":
        latest.write_bytes(latest.read_bytes()[:100])
    else:  # readable, but the step no longer matches the checksum written with it
        saved = torch.load(latest, weights_only=True)
        torch.save({**saved, "step": 6}, latest)
    args = [a.format(run=run, tmp=tmp_path) for a in argv]
    err = cli_error(capsys, [verb, *args])
    check_flags(verb, err)
    assert LATEST in err and f"pass {run / 'step-000000003.pt'} instead" in err


def test_an_error_quoting_a_huge_value_from_a_file_stays_short(tiny_file, tmp_path, capsys):
    """A 3 MB string in a hub config.json came back as a 3 MB error line."""
    import json

    from pixeljit.cli import MAX_ERROR_CHARS

    hub = tmp_path / "hub"
    assert main(["convert", str(tiny_file), "--hub", str(hub)]) == 0
    config = json.loads((hub / "config.json").read_text())
    config["objective"]["prediction"] = "x" * 3_000_000
    (hub / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    err = cli_error(capsys, ["sample", str(hub), "--out", str(tmp_path / "s.png")])
    assert "prediction must be one of" in err and "characters left out" in err
    assert len(err) < MAX_ERROR_CHARS + 200 and err.rstrip().endswith("shows the traceback)")


def test_sample_memory_is_checked_before_sampling(tiny_file, tmp_path, monkeypatch, capsys):
    """`sample --num 10000000 --batch-size 10000000` allocated 10 GB for the first batch (the
    flags are bounded only by 10M) until the allocator or the OOM killer stopped it."""
    from pixeljit.cli.sample import FLOAT32_BYTES, SAMPLER_STATE_COPIES

    pixels = TINY.in_channels * TINY.image_size**2
    one = pixels * FLOAT32_BYTES * SAMPLER_STATE_COPIES  # the sampler state of one image
    memory = one  # what the (patched) device has
    monkeypatch.setattr("pixeljit.training.setup.device_memory_bytes", lambda device: memory)
    argv = ["sample", str(tiny_file), "--steps", "1", "--num", "40"]
    with monkeypatch.context() as patch:  # refused before the sampler runs at all
        patch.setattr("pixeljit.cli.sample.sample", _never_called)
        err = cli_error(capsys, [*argv, "--batch-size", "2", "--out", str(tmp_path / "a")])
        assert "--batch-size 2 needs at least" in err and "lower --batch-size" in err
        assert 40 * pixels > memory  # one image's state fits; 40 kept uint8 images do not
        err = cli_error(capsys, [*argv, "--batch-size", "1", "--out", str(tmp_path / "b.npz")])
        assert "--num 40 images holds" in err and "write a folder of PNGs" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b.npz").exists()
    assert main([*argv, "--batch-size", "1", "--out", str(tmp_path / "c")]) == 0  # keeps none
    assert len(list((tmp_path / "c").glob("*.png"))) == 40


def test_eval_batch_memory_is_checked_before_generating(tiny_file, monkeypatch, capsys):
    from pixeljit.cli.sample import FLOAT32_BYTES, SAMPLER_STATE_COPIES

    one = TINY.in_channels * TINY.image_size**2 * FLOAT32_BYTES * SAMPLER_STATE_COPIES
    monkeypatch.setattr("pixeljit.training.setup.device_memory_bytes", lambda device: one)
    monkeypatch.setattr("pixeljit.evaluation.evaluate", _never_called)  # refused before it
    monkeypatch.setattr("pixeljit.evaluation.generate", _never_called)
    err = cli_error(capsys, ["eval", "--checkpoint", str(tiny_file), "--metrics", "is", "--num",
                          "10", "--batch-size", "2", "--device", "cpu"])  # fmt: skip
    assert "--batch-size 2 needs at least" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_a_grid_on_cuda_without_cuda_is_one_line_before_any_file(tmp_path, capsys):
    out = tmp_path / "t2"
    err = cli_error(capsys, ["reproduce", "table2", "--device", "cuda", "--out", str(out)])
    assert "--device 'cuda': CUDA is not available here; use 'cpu'" in err
    assert not out.exists()


def test_printed_commands_quote_paths_with_spaces(tmp_path):
    from pixeljit.cli.demo import resume_command

    args = argparse.Namespace(out=str(tmp_path / "demo 1"), steps=5, device="auto")
    assert resume_command(args) == f"pixeljit demo --resume --out '{tmp_path}/demo 1' --steps 5"


def test_overwrite_never_leaves_an_earlier_sample_set_mixed_in(tiny_file, tmp_path, capsys):
    """`sample --out DIR --overwrite` replaced only the new images' numbers: six old PNGs and two
    new ones made one folder of two sets, which `eval --images` then scored as one."""
    folder = tmp_path / "pngs"
    argv = ["sample", str(tiny_file), "--steps", "1", "--device", "cpu", "--labels", "0"]
    assert main([*argv, "--num", "6", "--out", str(folder)]) == 0
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    capsys.readouterr()  # (the progress bar)
    err = cli_error(capsys, [*argv, "--num", "2", "--out", str(folder), "--overwrite"])
    assert "holds 4 numbered PNGs beyond the 2 new ones (e.g. 000002.png)" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing touched
    assert main([*argv, "--num", "6", "--seed", "1", "--out", str(folder), "--overwrite"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(before)
    capsys.readouterr()
    assert main([*argv, "--num", "12", "--out", str(folder), "--overwrite"]) == 0
    capsys.readouterr()
    err = cli_error(capsys, ["eval", "--checkpoint", str(tiny_file), "--metrics", "is", "--num",
                          "10", "--save-images", str(folder), "--overwrite"])  # fmt: skip
    assert "--save-images" in err and "beyond the 10 new ones" in err


@pytest.mark.parametrize(
    "flags, message",
    [(["--out", "a", "--set", "run.out=b"], "--set run.out=b and --out a both set run.out"),
     (["--out", "a", "--epochs", "1", "--set", "optim.steps=3"], "--epochs 1.0 both set"),
     (["--out", "a", "--seed", "1", "--set", "run.seed=2"], "--seed 1 both set run.seed")],
)  # fmt: skip
def test_a_set_contradicting_a_flag_is_refused(flags, message, tmp_path, capsys):
    """`--set run.out=B` silently trained into B although --out A was given."""
    err = cli_error(capsys, ["train", "--preset", "fmnist-tiny", *flags])
    assert message in err and "pass one of them" in err


@pytest.mark.parametrize(
    ("argv", "flag"),
    [(["sample", "x", "--labels", "0", "--labels", "3"], "--labels"),
     (["eval", "--images", "x", "--metrics", "fd", "--metrics", "kid"], "--metrics"),
     (["sample", "x", "--cfg", "2", "--cfg=3"], "--cfg"),
     (["train", "--steps", "5", "--steps", "6"], "--steps")],
)  # fmt: skip
def test_a_flag_given_twice_is_refused(argv, flag, capsys):
    """argparse kept the last: `--labels 0 --labels 3` sampled class 3 alone, `--metrics fd
    --metrics kid` scored KID alone, without a word."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"{flag} given twice" in err and "give " + flag in err


def test_flags_meant_to_repeat_still_do(tiny_file, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.npz"
    argv = ["sample", str(tiny_file), "--steps", "1", "--num", "2", "--out", str(a), "--out"]
    assert main([*argv, str(b), "--overwrite", "--overwrite"]) == 0  # a switch twice is harmless
    assert a.is_file() and b.is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["bottleneck", "--dims", "none", "none"], "--dims lists none more than once"),
     (["noise", "--mus", "0", "0"], "--mus lists 0.0 more than once"),
     (["resolution", "--sizes", "32", "16"], "--sizes 32 16: give at least two sizes, increasing"),
     (["resolution", "--sizes", "16"], "--sizes 16: give at least two sizes"),
     (["table2", "--seeds", "0", "0"], "--seeds 0 0: give each seed once")],
)  # fmt: skip
def test_grid_axes_are_named_by_their_flags(argv, message, tmp_path, capsys):
    """The errors named the configs' fields (p_means, dims, sizes, seeds), not the flags; a
    single size made a 'transfer' study of one resolution."""
    err = cli_error(capsys, ["reproduce", *argv, "--out", str(tmp_path / "out")])
    assert message in err
    assert not (tmp_path / "out").exists()


def test_checkpoint_names_that_are_folders_or_foreign_files(tmp_path, capsys):
    """A folder whose latest.pt / checkpoint-last.pth is a folder was said to hold no checkpoint;
    a .pt that pixeljit did not write pointed a command-line user to the Python API only."""
    for name in ("latest.pt", "checkpoint-last.pth"):
        run = tmp_path / name.split(".")[0]
        (run / name).mkdir(parents=True)
        err = cli_error(capsys, ["convert", str(run), str(tmp_path / "w.safetensors")])
        assert f"{run / name} is a folder, not a checkpoint file: pass the checkpoint" in err
    other = tmp_path / "other.pt"
    torch.save({"a": 1}, other)
    err = cli_error(capsys, ["sample", str(other), "--out", str(tmp_path / "g.png")])
    assert "is not a pixeljit training checkpoint: an authors' checkpoint loads when named " in err
    assert "checkpoint-last.pth (or its folder) in sample / eval / convert" in err
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.safetensors"))
