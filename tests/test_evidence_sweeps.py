"""`reproduce resolution / bottleneck / noise` (experiments/grid.py + sweep_report.py): each
grid reduced (tiny network, 2 steps, a 32-image emoji subset, a pooling extractor instead of
EffNet) and run end to end through the training engine; the per-cell configs each experiment
promises, resume, refusal of changed configs and foreign folders, the table and plot files."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from extractors import PoolExtractor, Recorder, bottleneck_reusing_nothing
from pixeljit.cli import main
from pixeljit.cli.reproduce_grid import grid_config
from pixeljit.experiments import bottleneck, noise, resolution
from pixeljit.experiments.evidence import RESULT_NAME, resize_uint8
from pixeljit.experiments.grid import CELLS_FOLDER, GPU_VALUES, config_name
from pixeljit.experiments.sweep_report import output_names, table_markdown, write_outputs
from pixeljit.training.loop import train

TINY = dict(
    width=32, depth=1, heads=2, steps=2, batch=8, num_samples=8, sampler_steps=2,
    weights="model", real_count=16, data_limit=32, device="cpu", ckpt_every=1,
)  # fmt: skip
CONFIGS = {
    "resolution": resolution.ResolutionConfig(sizes=(8, 16), tokens=4, **TINY),
    "bottleneck": bottleneck.BottleneckConfig(size=16, patch=4, dims=(4, None), **TINY),
    "noise": noise.NoiseConfig(
        size=16, patch=4, p_means=(0.0, -0.8), predictions=("x", "eps"), **TINY
    ),  # fmt: skip
}
MODULES = {"resolution": resolution, "bottleneck": bottleneck, "noise": noise}
RUNS = {
    "resolution": resolution.run_resolution,
    "bottleneck": bottleneck.run_bottleneck,
    "noise": noise.run_noise,
}


class SizeRecorder(PoolExtractor):
    """The pooling extractor, remembering the image sizes it was given."""

    def __init__(self):
        self.sizes: set[int] = set()

    def extract(self, images):
        self.sizes.add(int(images.shape[-1]))
        return super().extract(images)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each reduced grid run once, its outputs written."""
    torch.set_num_threads(1)
    found = {}
    for name, config in CONFIGS.items():
        out = tmp_path_factory.mktemp(name)
        extractor = SizeRecorder()
        report = RUNS[name](config, out, extractor=extractor, train_fn=Recorder())
        paths = write_outputs(report, MODULES[name].layout(report), out)
        found[name] = (config, out, report, paths, extractor)
    return found


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["cells"]}


@pytest.mark.slow
def test_resolution_cells_keep_the_token_grid_and_scale_the_noise(runs):
    config, out, report, _, extractor = runs["resolution"]
    # the smallest size's two variants are one run: 2 predictions at 8 px, 2 × 2 at 16 px
    assert len(report["cells"]) == 6
    seen = set()
    for cell in report["cells"]:
        labels, model = cell["labels"], cell["config"]["model"]
        size = labels["image_size"]
        assert model["image_size"] // model["patch_size"] == 4  # one token grid at every size
        assert cell["config"]["objective"]["loss"] == "v"
        for variant in labels["variants"]:
            wanted = size / 256 if variant == "scaled" else 8 / 256  # smallest size's s
            assert cell["config"]["objective"]["noise_scale"] == pytest.approx(wanted)
            seen.add((size, labels["prediction"], variant))
        assert (out / CELLS_FOLDER / cell["name"] / "latest.pt").is_file()
        assert cell["measure"]["score_size"] == 16
    assert seen == {(s, p, v) for s in (8, 16) for p in ("x", "v") for v in ("scaled", "fixed")}
    small = [c for c in report["cells"] if c["labels"]["image_size"] == 8]
    assert all(c["labels"]["variants"] == ["scaled", "fixed"] for c in small)
    # the networks differ only in image and patch size
    models = {c["labels"]["image_size"]: c["config"]["model"] for c in report["cells"]}
    strip = ("image_size", "patch_size")
    assert {k: v for k, v in models[8].items() if k not in strip} == {
        k: v for k, v in models[16].items() if k not in strip
    }
    # every image the extractor saw (samples and real images) was at the common size
    assert extractor.sizes == {16}
    # the 8-px real images resized to 16 px score worse than the 16-px reference itself
    assert report["fd_floor"]["8"] > report["fd_floor"]["16"] >= -1e-6


def test_resolution_fd_is_that_of_the_resized_samples(runs, tmp_path):
    """A cell's FD equals an independent computation on its samples resized to 16 px."""
    from pixeljit.experiments.evidence import RealReference, feature_stats, sample_cell

    config, out, report, _, _ = runs["resolution"]
    cell = next(c for c in report["cells"] if c["labels"]["image_size"] == 8)
    real, _ = RealReference.load(out / "real-reference.npz", PoolExtractor.name)
    samples = sample_cell(out / CELLS_FOLDER / cell["name"], config.measure(16),
                          config.seeds[0], "cpu")  # fmt: skip
    assert samples.shape[-1] == 8
    big = resize_uint8(samples, 16)
    assert big.shape[-2:] == (16, 16)
    assert cell["fd"] == pytest.approx(real.fd(feature_stats(PoolExtractor(), big)), rel=1e-6)


def test_resize_uint8_keeps_flat_images_and_sizes():
    flat = torch.full((2, 3, 8, 8), 77, dtype=torch.uint8)
    assert torch.equal(resize_uint8(flat, 32), torch.full((2, 3, 32, 32), 77, dtype=torch.uint8))
    assert resize_uint8(flat, 8) is flat
    ramp = torch.arange(16, dtype=torch.uint8).mul(16).expand(1, 3, 16, 16).contiguous()
    assert resize_uint8(ramp, 4).shape == (1, 3, 4, 4)


def test_bottleneck_cells_are_x_prediction_with_each_dim(runs):
    config, out, report, _, _ = runs["bottleneck"]
    dims = [c["config"]["model"]["bottleneck_dim"] for c in report["cells"]]
    assert dims == [4, None]
    for cell in report["cells"]:
        objective = cell["config"]["objective"]
        assert (objective["prediction"], objective["loss"]) == ("x", "v")
        assert cell["config"]["model"]["image_size"] == 16
        assert cell["config"]["model"]["patch_size"] == 4
    # the bottleneck is in the trained network: p²·C → 4 → width has fewer weights
    sizes = {}
    for cell in report["cells"]:
        ckpt = torch.load(out / CELLS_FOLDER / cell["name"] / "latest.pt", weights_only=False)
        state = ckpt["model"] if "model" in ckpt else ckpt
        sizes[cell["labels"]["bottleneck_dim"]] = sum(
            v.numel() for k, v in state.items() if "x_embedder" in k
        )
    patch_dim, width = 4 * 4 * 3, 32
    assert sizes[None] == patch_dim * width + width  # one linear layer (with bias)
    assert sizes[4] < sizes[None]


def test_noise_cells_have_each_mu_and_prediction(runs):
    config, out, report, _, _ = runs["noise"]
    got = {(c["config"]["objective"]["p_mean"], c["config"]["objective"]["prediction"])
           for c in report["cells"]}  # fmt: skip
    assert got == {(mu, p) for mu in (0.0, -0.8) for p in ("x", "eps")}
    for cell in report["cells"]:
        assert cell["config"]["objective"]["loss"] == "v"
        assert cell["config"]["model"]["bottleneck_dim"] is None  # Tab. 3 uses the plain embed
        assert cell["labels"]["p_mean"] == cell["config"]["objective"]["p_mean"]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_outputs_written_and_json_round_trips(runs, name):
    _, out, report, paths, _ = runs[name]
    for file in output_names(name):
        assert (out / file).is_file()
    assert json.loads((out / f"{name}.json").read_text()) == report
    assert (out / f"{name}.md").read_text() == table_markdown(report, MODULES[name].layout(report))
    for key in ("plot", "figure"):
        with Image.open(paths[key]) as image:
            assert image.size[0] > 200 and image.size[1] > 100


def test_resolution_table_rows_are_variants_with_a_floor_row(runs):
    _, out, report, _, _ = runs["resolution"]
    text = (out / "resolution.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| variant"))
    assert header == "| variant \\ image size / patch | 8/2 | 16/4 |"
    fd = {(c["labels"]["prediction"], c["labels"]["image_size"], v): c["fd"]
          for c in report["cells"] for v in c["labels"]["variants"]}  # fmt: skip
    row = f"| x-pred, s = size/256 | {fd[('x', 8, 'scaled')]:.1f} | {fd[('x', 16, 'scaled')]:.1f} |"
    assert row in text
    fixed = (
        f"| v-pred, s = 8/256 fixed | {fd[('v', 8, 'fixed')]:.1f} | {fd[('v', 16, 'fixed')]:.1f} |"
    )
    assert fixed in text
    assert "| real images (floor) |" in text


def test_noise_table_rows_are_mu_columns_prediction(runs):
    _, out, report, _, _ = runs["noise"]
    text = (out / "noise.md").read_text()
    assert "| μ | x-pred | ε-pred |" in text
    hf = {
        (c["labels"]["p_mean"], c["labels"]["prediction"]): c["hf_ratio"] for c in report["cells"]
    }
    assert f"| -0.8 | {hf[(-0.8, 'x')]:.2f} | {hf[(-0.8, 'eps')]:.2f} |" in text


def test_bottleneck_table_lists_none_last(runs):
    """`--dims none 8 4` listed its rows in the order typed: the table reads by width."""
    from pixeljit.experiments import bottleneck

    _, out, report, _, _ = runs["bottleneck"]
    rows = [line.split(" |")[0] for line in (out / "bottleneck.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| bottleneck dim")]  # fmt: skip
    assert rows[:2] == ["| 4", "| none"]
    typed = {**report, "config": {**report["config"], "dims": [None, 8, 4]}}
    assert bottleneck.layout(typed).xs == (4, 8, None)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_rerun_keeps_finished_cells(runs, name):
    config, out, report, _, _ = runs[name]
    before = {n: (out / CELLS_FOLDER / n / RESULT_NAME).stat().st_mtime_ns for n in by_name(report)}
    again = RUNS[name](config, out, extractor=PoolExtractor(), train_fn=Recorder(allowed=False))
    assert [c["fd"] for c in again["cells"]] == [c["fd"] for c in report["cells"]]
    after = {n: (out / CELLS_FOLDER / n / RESULT_NAME).stat().st_mtime_ns for n in by_name(report)}
    assert after == before


@pytest.mark.parametrize("name", list(CONFIGS))
def test_another_config_in_the_same_folder_is_refused(runs, name):
    config, out, _, _, _ = runs[name]
    with pytest.raises(ValueError, match="another config.*steps"):
        RUNS[name](dataclasses.replace(config, steps=3), out, extractor=PoolExtractor())


def test_a_foreign_folder_is_refused(runs, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        noise.run_noise(CONFIGS["noise"], tmp_path, extractor=PoolExtractor())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    # another experiment's results folder is not taken over either
    _, resolution_out, _, _, _ = runs["resolution"]
    with pytest.raises(ValueError, match=f"holds no {config_name('noise')}"):
        noise.run_noise(CONFIGS["noise"], resolution_out, extractor=PoolExtractor())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cli_refuses_a_foreign_results_folder(tmp_path, capsys, name):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["reproduce", name, "--quick", "--out", str(tmp_path)]) != 0
    captured = capsys.readouterr()
    assert "not empty" in captured.err and str(tmp_path) in captured.err
    assert captured.out == ""  # refused before the run starts
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_interrupted_grid_continues_where_it_stopped(tmp_path):
    """The second cell fails mid-grid; the re-run keeps the first and trains the rest."""
    config = dataclasses.replace(CONFIGS["noise"], p_means=(-0.8,))
    calls = []

    def failing(cfg, resume=None, progress=False):
        calls.append(cfg.run.out)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train(cfg, resume=resume, progress=progress)

    with pytest.raises(KeyboardInterrupt):
        noise.run_noise(config, tmp_path, extractor=PoolExtractor(), train_fn=failing)
    finished = sorted(p.parent.name for p in tmp_path.glob(f"{CELLS_FOLDER}/*/{RESULT_NAME}"))
    assert len(finished) == 1
    # the command line's interrupted line names what is kept and how to go on
    from pixeljit.cli.reproduce_grid import run_and_report

    def stopped(progress, said="cell b stopped after step 3"):
        raise KeyboardInterrupt(said)

    threads = torch.get_num_threads()  # run_and_report sets the thread count: keep this one
    with pytest.raises(KeyboardInterrupt) as err:
        run_and_report(threads, "grid", stopped, None, tmp_path)
    assert str(err.value) == (f"cell b stopped after step 3; 1 finished cell in "
                              f"{tmp_path / CELLS_FOLDER} kept: re-run the same command to "
                              "continue the grid")  # fmt: skip
    cell_said = "cell c stopped after step 2; re-run the same command to continue it"
    with pytest.raises(KeyboardInterrupt) as err:  # a message that says how already
        run_and_report(threads, "grid", lambda progress: stopped(progress, cell_said), None,
                       tmp_path)  # fmt: skip
    assert str(err.value).count("re-run the same command") == 1, err.value
    recorder = Recorder()
    report = noise.run_noise(config, tmp_path, extractor=PoolExtractor(), train_fn=recorder)
    assert len(report["cells"]) == 2
    assert [call[0].split("/")[-1] for call in recorder.calls] == [
        c["name"] for c in report["cells"] if c["name"] not in finished
    ]


def test_cli_flags_select_the_variant_and_axes(capsys, tmp_path):
    out = str(tmp_path / "out")
    quick = grid_config(resolution.ResolutionConfig, True, "cpu", [3], None, {"sizes": (8, 16)})
    assert quick.steps == 30 and quick.seeds == (3,) and quick.sizes == (8, 16)
    gpu = grid_config(noise.NoiseConfig, False, "cuda", None, 50, {})
    assert gpu.width == GPU_VALUES["width"] and gpu.steps == 50 and gpu.size == 128
    cpu = grid_config(bottleneck.BottleneckConfig, False, "auto", None, None, {})
    assert cpu.dims == (8, 16, 32, 64, 128, None) and cpu.size == 64
    assert np.isclose(resolution.ResolutionConfig().noise_scale(64, "scaled"), 0.25)
    assert np.isclose(resolution.ResolutionConfig().noise_scale(64, "fixed"), 16 / 256)
    with pytest.raises(SystemExit):  # argparse: a usage error
        main(["reproduce", "bottleneck", "--dims", "8", "zero", "--out", out])
    assert "'zero' is not a bottleneck dim" in capsys.readouterr().err
    # 64 px at patch 8: 192-d patches, which a 192-wide 'bottleneck' does not narrow
    assert main(["reproduce", "bottleneck", "--dims", "8", "192", "--out", out]) != 0
    assert "--dims) 192 are not below the 192-d patches" in capsys.readouterr().err
    assert main(["reproduce", "noise", "--mus", "nan", "--quick", "--out", out]) != 0
    assert "--mus must be a finite number" in capsys.readouterr().err
    assert main(["reproduce", "resolution", "--sizes", "12", "24", "--out", out]) != 0
    assert "multiple of the token grid" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_more_seeds_extend_a_finished_grid(tmp_path):
    """`--seeds 0 1` into the folder of a finished seed-0 grid trains the seed-1 cells only,
    keeps the seed-0 ones as they were and reports both; seeds that do not start with the
    earlier ones are refused with the fix."""
    config = dataclasses.replace(CONFIGS["bottleneck"], dims=(4,))
    first = bottleneck.run_bottleneck(config, tmp_path, extractor=PoolExtractor(),
                                      train_fn=Recorder())  # fmt: skip
    (cell,) = first["cells"]
    result = tmp_path / CELLS_FOLDER / cell["name"] / RESULT_NAME
    stamp = result.stat().st_mtime_ns
    recorder, lines = Recorder(), []
    more = dataclasses.replace(config, seeds=(0, 1))
    report = bottleneck.run_bottleneck(more, tmp_path, extractor=PoolExtractor(),
                                       train_fn=recorder, progress=lines.append)  # fmt: skip
    assert [c["name"] for c in report["cells"]] == [cell["name"], "bottleneck4-seed1"]
    assert [out.rsplit("/", 1)[-1] for out, _ in recorder.calls] == ["bottleneck4-seed1"]
    assert report["cells"][0]["fd"] == cell["fd"] and result.stat().st_mtime_ns == stamp
    assert any("adding seed(s) 1" in line for line in lines)
    saved = json.loads((tmp_path / config_name("bottleneck")).read_text())
    assert saved["seeds"] == [0, 1]
    # the extended grid now resumes as itself, without training anything
    again = bottleneck.run_bottleneck(more, tmp_path, extractor=PoolExtractor(),
                                      train_fn=Recorder(allowed=False))  # fmt: skip
    assert [c["fd"] for c in again["cells"]] == [c["fd"] for c in report["cells"]]
    for seeds in ((1, 0, 2), (0,), (2,)):  # reordered, fewer, or without the earlier ones
        with pytest.raises(ValueError, match=r"differs in seeds.*--seeds 0 1 …"):
            bottleneck.run_bottleneck(dataclasses.replace(config, seeds=seeds), tmp_path,
                                      extractor=PoolExtractor())  # fmt: skip


def test_reuse_takes_another_grids_finished_cell(runs, tmp_path):
    """`bottleneck`'s `none` cell is `noise`'s μ = −0.8 x-pred cell (same recipe, images,
    sampler, reference): with `reuse` it is taken, not trained, under bottleneck's own name and
    labels; the other folder is only read. With another recipe (3 steps) nothing is taken."""
    _, noise_out, noise_report, _, _ = runs["noise"]
    (donor,) = [c for c in noise_report["cells"]
                if c["labels"]["p_mean"] == -0.8 and c["labels"]["prediction"] == "x"]  # fmt: skip
    donor_file = noise_out / CELLS_FOLDER / donor["name"] / RESULT_NAME
    stamp = donor_file.stat().st_mtime_ns
    recorder, lines = Recorder(), []
    report = bottleneck.run_bottleneck(CONFIGS["bottleneck"], tmp_path / "b", reuse=[noise_out],
                                       extractor=PoolExtractor(), train_fn=recorder,
                                       progress=lines.append)  # fmt: skip
    (plain,) = [c for c in report["cells"] if c["labels"]["bottleneck_dim"] is None]
    trained = [out.rsplit("/", 1)[-1] for out, _ in recorder.calls]
    assert plain["name"] not in trained and len(trained) == 1  # only d′ = 4 trained
    assert plain["fd"] == donor["fd"] and plain["hf_ratio"] == donor["hf_ratio"]
    assert plain["reused_from"] == str(donor_file.parent)
    assert plain["name"].startswith("bottleneck") and "p_mean" not in plain["labels"]
    assert plain["config"]["run"]["out"] == str(tmp_path / "b" / CELLS_FOLDER / plain["name"])
    assert (tmp_path / "b" / CELLS_FOLDER / plain["name"] / "grid.png").is_file()
    assert any("taken from --reuse: 1 of the 2 unfinished cell(s)" in line for line in lines)
    assert donor_file.stat().st_mtime_ns == stamp
    # a cell that was itself taken is taken again, naming the cell that trained it
    recorder = Recorder(allowed=False)
    only_plain = dataclasses.replace(CONFIGS["bottleneck"], dims=(None,))
    chained = bottleneck.run_bottleneck(only_plain, tmp_path / "d", reuse=[tmp_path / "b"],
                                        extractor=PoolExtractor(), train_fn=recorder)  # fmt: skip
    assert chained["cells"][0]["reused_from"] == str(donor_file.parent)
    assert chained["cells"][0]["fd"] == donor["fd"]
    # another recipe (3 steps): nothing is taken, and the report says what differs
    other = dataclasses.replace(CONFIGS["bottleneck"], steps=3, dims=(None,))
    said = bottleneck_reusing_nothing(other, tmp_path / "c", [noise_out])
    steps = CONFIGS["bottleneck"].steps
    assert f"optim.steps {steps} there, 3 here" in said, said


def test_cli_reuse_must_name_a_results_folder(runs, tmp_path, capsys):
    out = str(tmp_path / "out")
    (tmp_path / "plain").mkdir()
    for bad, said in (
        (tmp_path / "missing", "missing does not exist: give the --out folder"),
        (tmp_path / "plain", "plain: not the results folder of a reproduction"),
    ):
        assert main(["reproduce", "noise", "--quick", "--out", out, "--reuse", str(bad)]) != 0
        assert said in capsys.readouterr().err
    _, noise_out, *_ = runs["noise"]
    args = ["reproduce", "noise", "--quick", "--out", str(noise_out), "--reuse", str(noise_out)]
    assert main(args) != 0
    assert "is --out itself" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_reuse_compares_what_decides_a_cells_numbers():
    """Where a run wrote, how often it logged or saved, and its previews do not count; a field
    added since a cell was trained reads as the old behaviour; the length and the recipe do."""
    from pixeljit.experiments.reuse import recipe
    from pixeljit.training.config_io import to_dict
    from pixeljit.training.presets import get_preset

    now = to_dict(get_preset("emoji-cpu"))
    older = json.loads(json.dumps(now))
    for section, name in (("run", "bf16_residual"), ("run", "activation_checkpointing"),
                          ("optim", "ema_warmup_offset"), ("optim", "cooldown")):  # fmt: skip
        del older[section][name]  # written before these fields existed
    older["run"].update(out="elsewhere", log_every=7, ckpt_every=9, tensorboard=False)
    older["data"]["source"] = "/other/copy/of/the/images"
    older["sample"]["steps"] = 3
    assert recipe(older) == recipe(now)
    # the device by the kind it stands for here: 'auto' ran on this machine's own kind
    here = "cuda" if torch.cuda.is_available() else "cpu"
    for named in ("auto", here, f"{here}:0" if here == "cuda" else here):
        older["run"]["device"] = named
        assert recipe(older) == recipe(now), named
    older["run"]["device"] = "meta"
    assert recipe(older) != recipe(now)
    for section, name, value in (("optim", "steps", 999), ("run", "seed", 5),
                                 ("model", "hidden_size", 64)):  # fmt: skip
        changed = json.loads(json.dumps(now))
        changed[section][name] = value
        assert recipe(changed) != recipe(now), name
