"""`reproduce table2` and its shared machinery (experiments/evidence.py): a reduced grid trained
end to end through the training engine (tiny network, a few steps, a 32-image emoji subset, a
pooling extractor instead of EffNet so the file stays within seconds), resume at both levels,
the outputs, the tables' layout, the results folder guard, and the HF measure."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from extractors import CountingExtractor, PoolExtractor, Recorder
from pixeljit.cli import main
from pixeljit.experiments.evidence import RESULT_NAME, hf_energy, run_cell
from pixeljit.experiments.table2 import CELLS_FOLDER, Table2Config, build_cells, run_table2
from pixeljit.experiments.table2_report import (
    FIGURE_NAME,
    JSON_NAME,
    MARKDOWN_NAME,
    table_markdown,
    write_outputs,
)


def tiny_config(**overrides) -> Table2Config:
    values = dict(
        predictions=("x", "v"), losses=("v", "x"), big_size=16, big_patch=4, small_size=8,
        small_patch=2, width=32, depth=1, heads=2, steps=2, batch=8, num_samples=8,
        sampler_steps=2, weights="model", real_count=16, data_limit=32, device="cpu",
        ckpt_every=1,
    )  # fmt: skip
    values.update(overrides)
    return Table2Config(**values)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The reduced grid run once: 2 settings × 2 losses × 2 predictions, 2 steps each."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("table2")
    config = tiny_config()
    report = run_table2(config, out, extractor=PoolExtractor(), train_fn=Recorder())
    paths = write_outputs(report, out)
    return config, out, report, paths


def test_every_cell_trained_sampled_scored_and_written(grid):
    config, out, report, paths = grid
    assert len(report["cells"]) == 8
    for cell in report["cells"]:
        folder = out / CELLS_FOLDER / cell["name"]
        assert (folder / RESULT_NAME).is_file() and (folder / "grid.png").is_file()
        assert (folder / "latest.pt").is_file()  # a normal training run of the engine
        assert cell["steps"] == config.steps and not cell["resumed"]
        size = cell["labels"]["image_size"]
        # the project's resolution rule for the noise scale: image_size / 256
        assert cell["config"]["objective"]["noise_scale"] == pytest.approx(size / 256)
        assert cell["config"]["model"]["bottleneck_dim"] is None
        assert cell["config"]["model"]["rope"] is False
        # the ratio is the samples' HF energy over the real images' at the cell's size
        assert cell["hf"] > 0
        assert cell["hf_ratio"] == pytest.approx(cell["hf"] / report["real_hf"][str(size)])
    fds = [cell["fd"] for cell in report["cells"]]  # each cell's own samples, scored
    assert all(math.isfinite(fd) and fd > 0 for fd in fds) and len(set(fds)) == len(fds)
    # both settings share the token grid and everything but image and patch size
    models = {c["labels"]["setting"]: c["config"]["model"] for c in report["cells"]}
    a, b = models["bottlenecked"], models["plain"]
    assert a["image_size"] // a["patch_size"] == b["image_size"] // b["patch_size"]
    assert {k: v for k, v in a.items() if k not in ("image_size", "patch_size")} == {
        k: v for k, v in b.items() if k not in ("image_size", "patch_size")
    }
    assert 4 * 4 * 3 >= a["hidden_size"] > 2 * 2 * 3  # bottlenecked vs not
    # the real images of the small setting score worse than the reference itself
    assert report["fd_floor"]["plain"] > report["fd_floor"]["bottlenecked"]
    for name in (JSON_NAME, MARKDOWN_NAME, FIGURE_NAME):
        assert (out / name).is_file()


def test_json_round_trip(grid):
    _, out, report, _ = grid
    assert json.loads((out / JSON_NAME).read_text()) == report


def test_table_layout_rows_loss_columns_prediction(grid):
    config, out, report, _ = grid
    text = (out / MARKDOWN_NAME).read_text()
    assert text == table_markdown(report)
    first = text.split("### (b)")[0]
    header = next(line for line in first.splitlines() if line.startswith("| loss"))
    assert header == "| loss \\ prediction | x-pred | v-pred |"
    rows = [line for line in first.splitlines() if line.startswith("| ") and "-loss" in line]
    assert [r.split(" |")[0] for r in rows[:2]] == ["| v-loss", "| x-loss"]
    fd = {(c["labels"]["loss"], c["labels"]["prediction"]): c["fd"] for c in report["cells"]
          if c["labels"]["setting"] == "bottlenecked"}  # fmt: skip
    assert rows[0] == f"| v-loss | {fd[('v', 'x')]:.1f} | {fd[('v', 'v')]:.1f} |"


def test_tables_show_mean_and_std_over_seeds(grid):
    _, _, report, _ = grid
    twin = json.loads(json.dumps(report))
    extra = []
    for cell in twin["cells"]:
        other = dict(cell, labels=dict(cell["labels"], seed=1), fd=cell["fd"] + 2.0)
        extra.append(other)
    twin["cells"] += extra
    twin["config"]["seeds"] = [0, 1]
    cell = next(c for c in report["cells"] if c["labels"]["setting"] == "bottlenecked")
    mean = cell["fd"] + 1.0
    assert f"{mean:.1f} ± 1.4" in table_markdown(twin)  # std of (a, a + 2) = √2


def test_rerun_keeps_finished_cells(grid):
    config, out, report, _ = grid
    before = {c["name"]: (out / CELLS_FOLDER / c["name"] / RESULT_NAME).stat().st_mtime_ns
              for c in report["cells"]}  # fmt: skip
    counting = CountingExtractor()
    again = run_table2(config, out, extractor=counting, train_fn=Recorder(allowed=False))
    assert counting.images == 0  # nor are the real images' statistics computed again
    assert again["fd_floor"] == report["fd_floor"]
    assert [c["fd"] for c in again["cells"]] == [c["fd"] for c in report["cells"]]
    after = {c["name"]: (out / CELLS_FOLDER / c["name"] / RESULT_NAME).stat().st_mtime_ns
             for c in report["cells"]}  # fmt: skip
    assert after == before


def test_rerun_with_another_config_is_refused(grid):
    config, out, _, _ = grid
    with pytest.raises(ValueError, match="another config.*steps"):
        run_table2(dataclasses.replace(config, steps=3), out, extractor=PoolExtractor())


def test_a_device_named_by_its_kind_is_the_same_grid(grid):
    """`--device auto` and `--device cpu` on a machine without CUDA ran the same grid: naming
    it the other way resumed nothing (refused as "differs in device")."""
    from pixeljit.experiments.grid import check_results_folder

    config, out, _, _ = grid
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert config.device == "cpu"  # the grid was run naming its device
    if here == "cpu":
        assert check_results_folder(dataclasses.replace(config, device="auto"), out, "table2") == []
    other = "cuda" if here == "cpu" else "meta"
    with pytest.raises(ValueError, match="differs in device"):
        check_results_folder(dataclasses.replace(config, device=other), out, "table2")


def test_unfinished_cell_continues_from_its_checkpoint(grid, tmp_path):
    config, out, report, _ = grid
    from pixeljit.experiments.table2 import real_reference, setting_data

    data = setting_data(config, out)
    extractor = PoolExtractor()
    real, _ = real_reference(config, data, extractor)
    sources = {s: str(data[config.size_patch(s)[0]].folder) for s in config.settings}
    cell = build_cells(config, tmp_path, sources)[0]
    short = dataclasses.replace(
        cell, config=dataclasses.replace(
            cell.config, optim=dataclasses.replace(cell.config.optim, steps=1)
        )
    )  # fmt: skip
    first, _ = run_cell(short, config.measure(), extractor, real)
    assert first["steps"] == 1
    folder = tmp_path / CELLS_FOLDER / cell.name
    (folder / RESULT_NAME).unlink()  # interrupted after its checkpoint, before its result
    recorder = Recorder()
    result, kept = run_cell(cell, config.measure(), extractor, real, recorder)
    assert not kept and result["resumed"] and result["steps"] == config.steps
    assert recorder.calls == [(str(folder), str(folder))]
    log = (folder / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in log]
    assert steps == [1, 2]  # continued at step 2, not restarted
    # resumed = the straight run of the same cell in the grid (the engine is exactly resumable)
    straight = next(c for c in report["cells"] if c["name"] == cell.name)
    assert result["fd"] == pytest.approx(straight["fd"], rel=1e-5)


def _refuse(cfg, resume=None, progress=False):
    """A train function for worker processes (picklable: module level) that always fails."""
    raise ValueError("refused on purpose")


@pytest.mark.slow
def test_cells_in_worker_processes_give_the_grids_results(grid, tmp_path):
    """jobs=2: the same cells, trained two at a time in spawned processes (each with this
    process's one torch thread), give the sequential grid's measures, in the grid's order."""
    config, _, report, _ = grid
    lines, finished_at_report = [], []

    def progress(line: str) -> None:
        lines.append(line)
        finished_at_report.append(len(list(tmp_path.glob(f"{CELLS_FOLDER}/*/{RESULT_NAME}"))))

    parallel = run_table2(config, tmp_path, extractor=PoolExtractor(), progress=progress, jobs=2)
    assert [c["name"] for c in parallel["cells"]] == [c["name"] for c in report["cells"]]
    for got, want in zip(parallel["cells"], report["cells"], strict=True):
        assert got["fd"] == pytest.approx(want["fd"], rel=1e-6, abs=1e-9)
        assert got["hf_ratio"] == pytest.approx(want["hf_ratio"], rel=1e-6)
        assert got["steps"] == config.steps and (tmp_path / CELLS_FOLDER / got["name"]).is_dir()
    assert sum("s train" in line for line in lines) == len(report["cells"])
    # each cell is reported as it ends, not all at the end
    first = next(k for k, line in enumerate(lines) if "s train" in line)  # the data's come first
    assert finished_at_report[first] < len(report["cells"])


def test_a_failed_cell_in_a_worker_stops_the_grid_naming_it(tmp_path):
    config = tiny_config(predictions=("x",), losses=("v",))  # 2 cells, one per setting
    with pytest.raises(RuntimeError, match=r"cell \S+-xpred-vloss-seed0 failed: refused on"):
        run_table2(config, tmp_path, extractor=PoolExtractor(), train_fn=_refuse, jobs=2)
    assert not list(tmp_path.glob(f"{CELLS_FOLDER}/*/{RESULT_NAME}"))


def test_cli_refuses_a_foreign_results_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["reproduce", "table2", "--quick", "--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "not empty" in err and str(tmp_path) in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_hf_energy_measures_fine_detail():
    smooth = torch.linspace(0, 255, 16).round().to(torch.uint8).expand(2, 3, 16, 16).contiguous()
    noisy = torch.randint(0, 256, (2, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    flat = torch.full((2, 3, 16, 16), 128, dtype=torch.uint8)
    assert hf_energy(flat) == 0.0
    assert hf_energy(noisy.to(torch.uint8)) > 50 * hf_energy(smooth)
    with pytest.raises(ValueError, match="even"):
        hf_energy(flat[..., :15, :15])


# The claim at CPU scale, measured with the HF energy ratio (the FD-EffNetLite0 of 64 samples
# did not rank the failures: see docs/evidence.md). This exact config measured x 0.84 / 0.68,
# v 2.55 / 2.42, ε 44.0 / 45.0 (seeds 0 / 1); CLAIM_RATIO sits below the smallest v / x (3.0).
CLAIM_RATIO = 2.0


@pytest.mark.slow
def test_bottlenecked_x_prediction_has_no_residual_noise(tmp_path):
    torch.set_num_threads(1)
    config = Table2Config(
        settings=("bottlenecked",), losses=("v",), steps=200, batch=32, lr=1e-3,
        ema_decays=(0.99,), num_samples=64, sampler_steps=10, real_count=256, device="cpu",
    )  # fmt: skip
    report = run_table2(config, tmp_path, extractor=PoolExtractor())
    hf = {c["labels"]["prediction"]: c["hf_ratio"] for c in report["cells"]}
    assert hf["eps"] > CLAIM_RATIO * hf["x"] and hf["v"] > CLAIM_RATIO * hf["x"]
    assert hf["x"] < CLAIM_RATIO  # near the data's own high-frequency energy
