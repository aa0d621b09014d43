"""`pixeljit reproduce nfe`: the plan, the NFE and row accounting, matched seeds, resuming,
the outputs, on a tiny trained run with a cheap extractor (and the CLI with the real one)."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from analytic import AnalyticNet, Gaussian, noise
from conftest import FMNIST_TEST_SIZE, SAMPLED_RUN, check_samples_vary, noise_pngs, tiny_run
from extractors import GreyPoolExtractor as PoolExtractor
from pixeljit.checkpoints.load import load_trained
from pixeljit.cli import main
from pixeljit.diffusion.solvers import GRIDS, METHODS, evaluations
from pixeljit.evaluation import GenerationSpec, dataset_stats_for, evaluate
from pixeljit.experiments.nfe import (
    RESULTS_NAME,
    NfeConfig,
    few_step_verdict,
    plan,
    rows_per_image,
    run_nfe,
    sorted_rows,
)
from pixeljit.experiments.nfe_report import (
    NFE_NOTE,
    UNGUIDED_NOTE,
    nfe_ticks,
    table_markdown,
    write_figure,
    write_outputs,
)
from pixeljit.metrics import DatasetStats, create_extractor, save_dataset_stats
from pixeljit.training.loop import train

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

DESCRIBE = {"checkpoint": "tiny", "weights": "default", "ref": "fmnist16"}


@pytest.fixture(scope="module")
def setup(fmnist16, tmp_path_factory):
    """A 2-step tiny run, the pooled extractor and its statistics of 64 real images."""
    data = fmnist16(64)
    run = tmp_path_factory.mktemp("nfe") / "run"
    train(tiny_run(data, run, **SAMPLED_RUN), progress=False)
    check_samples_vary(load_trained(run))
    extractor = PoolExtractor()
    ref = dataset_stats_for(str(data), extractor, FMNIST_TEST_SIZE, 1)
    return {"data": data, "run": run, "model": load_trained(run), "extractor": extractor,
            "ref": ref}  # fmt: skip


# ------------------------------------------------------------------------------ the plan


def test_plan_fits_each_budget_without_repeats():
    config = NfeConfig(budgets=(3, 4, 5, 10))
    cells = plan(config)
    assert len({c.key for c in cells}) == len(cells)
    for method in METHODS:
        for grid in GRIDS:
            nfes = sorted(evaluations(c.method, c.steps) for c in cells
                          if (c.method, c.grid) == (method, grid))  # fmt: skip
            # the most steps within each budget: Heun 2n − 1 ≤ budget, the others n ≤ budget
            assert nfes == ([3, 5, 9] if method == "heun" else [3, 4, 5, 10]), (method, grid)
    assert all(c.steps >= 2 for c in plan(NfeConfig(budgets=(1, 2))) if c.method == "heun")


def test_budgets_below_heuns_fewest_are_named_and_an_empty_study_refused():
    """Heun's budgets 1 and 2 were dropped without a word, and `--methods heun --budgets 2`
    finished at exit 0 with an empty table and plot."""
    config = NfeConfig(methods=("heun", "euler"), grids=("uniform",), budgets=(1, 2, 3))
    assert config.skipped() == [1, 2]
    cells = sorted((c.method, c.steps) for c in plan(config))
    assert cells == [("euler", 1), ("euler", 2), ("euler", 3), ("heun", 2)]
    assert NfeConfig(methods=("euler",), budgets=(1,)).skipped() == []
    with pytest.raises(ValueError, match="no row to run: Heun's fewest evaluations are 3"):
        NfeConfig(methods=("heun",), budgets=(1, 2))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("grid", ["uniform", "logsnr"])
def test_rows_per_image_counts_the_guided_rows_the_network_sees(method, grid):
    """The rows a counting network processes, per image, equal `rows_per_image`."""
    net = AnalyticNet(Gaussian())
    labels = [0, 1, 2, 0]
    for cfg in (1.0, 2.0):
        config = NfeConfig(cfg=cfg, interval=(0.1, 0.9))
        sampler = config.sampler(method, grid, 7)
        net.calls.clear()
        from pixeljit.diffusion.sampler import sample

        sample(net, labels, noise=noise(4).float(), **sampler.kwargs())
        assert sum(net.calls) / len(labels) == rows_per_image(sampler)
        assert len(net.calls) == evaluations(method, 7)
    # the uniform Euler-10 grid by hand: t = 0.0 … 0.9; guided where 0.1 < t < 0.9 (float32)
    euler = NfeConfig(cfg=2.0, interval=(0.1, 0.9)).sampler("euler", "uniform", 10)
    assert rows_per_image(euler) == 10 + 7


def test_few_step_verdict():
    row = lambda key, nfe, fd: {"key": key, "nfe": nfe, "fd": fd}  # noqa: E731
    rows = [row("a", 99, 10.0), row("b", 20, 10.4), row("c", 10, 12.0), row("d", 200, 1.0)]
    verdict = few_step_verdict(rows)
    assert verdict["best"] == "a" and verdict["best_few"] == "b"
    assert verdict["ratio"] == pytest.approx(1.04) and verdict["met"]
    assert not few_step_verdict([row("a", 99, 10.0), row("c", 10, 10.6)])["met"]
    # rows at ≤ 20 NFE alone cannot say: the best of them is within 5 % of itself
    assert few_step_verdict([row("a", 20, 10.0), row("c", 10, 12.0), row("d", 200, 1.0)]) == {}


def test_no_verdict_names_the_range_that_has_no_row():
    def row(key, nfe):
        return {"key": key, "nfe": nfe, "fd": float(nfe), "method": key, "grid": "uniform",
                "steps": nfe, "rows_per_image": nfe, "class_accuracy": None, "precision": None,
                "recall": None, "seconds": 1.0}  # fmt: skip

    header = {"settings": {"num": 8, "seed": 0, "cfg": 1.0}}
    few_only = table_markdown([row("a", 10), row("b", 200)], "FD", header)
    assert "no row lies between 20 and 100 NFE" in few_only
    assert "add budgets such as 50 100" in few_only
    many_only = table_markdown([row("a", 40), row("b", 99)], "FD", header)
    assert "no row lies at ≤ 20 NFE" in many_only and "between 20 and 100" not in many_only
    assert few_step_verdict([row("a", 40), row("b", 99)]) == {}
    assert "No verdict" not in table_markdown([row("a", 10), row("b", 50)], "FD", header)


def test_a_long_checkpoint_path_in_the_title_stays_inside_the_figure(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "close", shown.append)  # keep the figure to measure its title
    rows = [{"method": "euler", "grid": "uniform", "nfe": n, "fd": 1.0 / n} for n in (4, 8)]
    path = "/home/someone/" + "/".join(f"experiments-{k}" for k in range(12)) + "/latest.pt"
    write_figure(rows, "FD", tmp_path / "nfe.png", f"{path} (ema): 1000 images per row")
    (fig,) = shown
    fig.canvas.draw()
    box = fig.axes[0].title.get_window_extent(fig.canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
    assert path.replace("\n", "") in fig.axes[0].title.get_text().replace("\n", "")
    plt.close(fig)


# ------------------------------------------------------------------------------ the sweep


def test_sweep_rows_are_the_library_scores_at_matched_seeds(setup, tmp_path):
    config = NfeConfig.quick(methods=("euler", "dpm++2m", "dpm++3m"), grids=("uniform",),
                             budgets=(1, 5))  # fmt: skip
    model, extractor, ref = setup["model"], setup["extractor"], setup["ref"]
    # weights moved at random, so that x̂ depends on z_t and the solvers part (a 2-step model's
    # x̂ barely does, and where x̂ does not, every solver follows the straight path exactly);
    # 5 steps, because from t = 0 (λ = −∞) the multistep corrections vanish until the third
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    results = run_nfe(config, model, extractor, ref, tmp_path, DESCRIBE)
    rows = sorted_rows(results)
    assert [(r["method"], r["nfe"]) for r in rows] == [
        ("dpm++2m", 1), ("dpm++2m", 5), ("dpm++3m", 1), ("dpm++3m", 5), ("euler", 1), ("euler", 5)
    ]  # fmt: skip
    for r in rows:
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and r["fd"] > 0
        assert r["class_accuracy"] is None  # the pooled extractor has no classifier head
    # one step from t = 0 to 1 is x̂(z_0) for every solver: the same images, the same FD
    one = [r["fd"] for r in rows if r["nfe"] == 1]
    assert max(one) - min(one) < 1e-4 * one[0], one
    five = [r["fd"] for r in rows if r["nfe"] == 5]  # where the solvers differ, the FDs do
    assert len({round(fd, 6) for fd in five}) == 3, five
    # a row's FD is `evaluate`'s, computed independently
    r = rows[-1]
    spec = GenerationSpec(num=config.num, sampler=config.sampler(r["method"], r["grid"],
                          r["steps"]), seed=config.seed, batch_size=5)  # fmt: skip
    alone = evaluate(model, spec, extractor, ref, ("fd",))
    assert r["fd"] == pytest.approx(alone["FD-pool4"], rel=1e-6)
    reseeded = evaluate(model, dataclasses.replace(spec, seed=config.seed + 1), extractor, ref,
                        ("fd",))  # fmt: skip
    assert reseeded["FD-pool4"] != pytest.approx(r["fd"], rel=1e-6)  # the seed shows in FD


def test_resume_keeps_rows_and_refuses_other_settings(setup, tmp_path):
    model, extractor, ref = setup["model"], setup["extractor"], setup["ref"]
    config = NfeConfig.quick(methods=("euler",), grids=("uniform", "edm"), budgets=(2,))
    first = run_nfe(config, model, extractor, ref, tmp_path, DESCRIBE)
    assert len(first["rows"]) == 2
    calls = extractor.calls
    again = run_nfe(config, model, extractor, ref, tmp_path, DESCRIBE)
    assert again["rows"] == first["rows"] and extractor.calls == calls  # nothing re-run
    wider = NfeConfig.quick(methods=("euler",), grids=("uniform", "edm"), budgets=(2, 3))
    more = run_nfe(wider, model, extractor, ref, tmp_path, DESCRIBE)
    assert more["rows"][:2] == first["rows"] and len(more["rows"]) == 4
    other = NfeConfig.quick(methods=("euler",), grids=("uniform",), budgets=(2,), seed=1)
    with pytest.raises(ValueError, match="other settings \\(seed 0 → 1\\).*--overwrite"):
        run_nfe(other, model, extractor, ref, tmp_path, DESCRIBE)
    fresh = run_nfe(other, model, extractor, ref, tmp_path, DESCRIBE, overwrite=True)
    assert len(fresh["rows"]) == 1
    stranger = tmp_path / "other"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        run_nfe(config, model, extractor, ref, stranger, DESCRIBE)
    assert (stranger / "notes.txt").read_text() == "mine"


def test_outputs(setup, tmp_path):
    config = NfeConfig.quick(methods=("heun", "dpm++3m"), grids=("uniform",), budgets=(3, 4))
    results = run_nfe(config, setup["model"], setup["extractor"], setup["ref"], tmp_path,
                      DESCRIBE)  # fmt: skip
    rows = sorted_rows(results)
    paths = write_outputs(rows, "FD-pool4", results["header"], tmp_path)
    table = paths["table"].read_text()
    assert NFE_NOTE in table
    assert sum(line.startswith("| heun |") for line in table.splitlines()) == 1  # 3, 4 → 3 NFE
    assert sum(line.startswith("| dpm++3m |") for line in table.splitlines()) == 2
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / RESULTS_NAME).read_text())
    assert saved["rows"] == results["rows"] and saved["header"]["fd_label"] == "FD-pool4"
    # without guidance the table says so, and no longer speaks of two rows per evaluation
    header = {**results["header"], "settings": {**results["header"]["settings"], "cfg": 1.0}}
    table = table_markdown(rows, "FD-pool4", header)
    assert "no guidance" in table and UNGUIDED_NOTE in table and NFE_NOTE not in table
    assert "Every row has the same FD" not in table
    same = [{**r, "fd": rows[0]["fd"]} for r in rows]  # a model whose samples ignore the solver
    assert "Every row has the same FD" in table_markdown(same, "FD-pool4", header)


# -------------------------------------------------------------------------------- the CLI


def test_cli_study_against_a_raw_image_folder_packs_it_as_eval_does(setup, tmp_path, capsys):
    """--ref of a raw source (an image folder, or a built-in name) is packed into the cache
    first; the study crashed there with a TypeError and a traceback (a callback of the wrong
    shape), where a packed folder or a statistics file worked."""
    images = noise_pngs(tmp_path / "pngs", 12)
    argv = ["reproduce", "nfe", "--checkpoint", str(setup["run"]), "--ref", str(images),
            "--quick", "--methods", "euler", "--grids", "uniform", "--budgets", "2",
            "--out", str(tmp_path / "study"), "--num", "10"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "study" / RESULTS_NAME).read_text())
    assert len(saved["rows"]) == 1 and saved["header"]["ref"] == str(images)


def test_cli_quick_study_with_the_classifier(setup, tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["reproduce", "nfe", "--checkpoint", str(setup["run"]), "--ref", str(setup["data"]),
            "--quick", "--methods", "euler", "dpm++3m", "--grids", "uniform", "--out",
            str(out), "--num", "10"]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((out / RESULTS_NAME).read_text())
    assert len(saved["rows"]) == 4 and saved["header"]["fd_label"] == "FD-FMNIST"
    assert all(0 <= r["class_accuracy"] <= 1 for r in saved["rows"])
    printed = capsys.readouterr().out  # --quick's budgets (2, 4) lie below 20 NFE
    assert "Within 5%" not in printed and "No verdict on the few-step goal" in printed
    assert (out / "nfe.png").is_file() and (out / "nfe.md").is_file()
    assert main([*argv[:-2], "--num", "12"]) == 2  # other settings, no --overwrite
    assert "other settings (num 10 → 12)" in capsys.readouterr().err
    assert json.loads((out / RESULTS_NAME).read_text()) == saved  # nothing overwritten
    # the checkpoint spelt otherwise (the same weights) continues the study; another reference
    # split is another study (a kept row scored against the train split was reported as test)
    assert main([*argv[:3], str(setup["run"] / "latest.pt"), *argv[4:]]) == 0
    assert "done earlier" in capsys.readouterr().out
    assert main([*argv, "--ref-split", "test"]) == 2
    assert "other settings (ref_split None → 'test')" in capsys.readouterr().err
    assert main([*argv, "--cfg", "1.0", "--budgets", "0"]) == 2
    assert "--budgets must be ≥ 1" in capsys.readouterr().err


def test_cli_refuses_too_few_images_before_loading_and_a_reference_of_another_size(
    setup, tmp_path, capsys, monkeypatch
):
    """--num below what precision / recall need, and --shift without the shifted grid, are
    refused before the checkpoint is read; a statistics file of other-sized images is refused
    (the FD would measure the resize)."""
    out = tmp_path / "study"
    argv = ["reproduce", "nfe", "--checkpoint", str(setup["run"]), "--quick", "--methods",
            "euler", "--grids", "uniform", "--budgets", "2", "--out", str(out)]  # fmt: skip
    with monkeypatch.context() as m:
        m.setattr("pixeljit.checkpoints.load.load_trained", _never_loaded)
        assert main([*argv, "--ref", str(setup["data"]), "--num", "3"]) == 2
        err = capsys.readouterr().err
        assert "pr needs at least 4 images" in err and "raise --num to 4" in err
        assert main([*argv, "--ref", str(setup["data"]), "--shift", "2"]) == 2
        assert "--shift has no effect without the shifted grid" in capsys.readouterr().err
    assert not out.exists()
    stats = tmp_path / "ref28.npz"
    classifier = create_extractor("fmnist-cnn")  # what the CLI picks for this 1-channel model
    d = classifier.dim
    save_dataset_stats(stats, DatasetStats(np.zeros(d), np.eye(d), 100, classifier.stats_name,
                                           features=np.zeros((8, d), np.float32),
                                           image_shape=(1, 28, 28)))  # fmt: skip
    assert main([*argv, "--ref", str(stats), "--num", "4"]) == 2
    err = capsys.readouterr().err
    assert "28×28" in err and "16×16" in err and not (out / RESULTS_NAME).exists()


def _never_loaded(*args, **kwargs):
    raise AssertionError("the checkpoint was loaded before --num was checked")


def test_nfe_config_refuses_too_few_images():
    with pytest.raises(ValueError, match="pr needs at least 4 images"):
        NfeConfig(num=3)


@pytest.mark.parametrize(
    "nfes, ticks",
    [([2, 3, 4], [2, 3, 4]), ([4, 6, 8, 10, 15, 20, 30, 50, 99], [5, 10, 20, 50, 100]),
     ([1, 2, 3], [1, 2, 3]), ([7], [7])],
)  # fmt: skip
def test_the_nfe_axis_labels_every_budget_of_a_short_study(nfes, ticks):
    """The log axis of nfe.png labelled only NFE 2 of a --quick study (2, 3, 4 NFE: one round
    tick in range); a paper-sized study keeps its round ticks."""
    assert nfe_ticks(nfes) == ticks


def test_cli_checks_the_extractor_before_loading_and_says_how_to_continue(
    setup, tmp_path, monkeypatch, capsys
):
    """`--extractor bogus` was refused only after the model had loaded; an interrupted study
    said "interrupted" without saying that re-running continues it."""
    import pixeljit.checkpoints.load as load
    import pixeljit.experiments.nfe as nfe

    out = tmp_path / "study"
    argv = ["reproduce", "nfe", "--checkpoint", str(setup["run"]), "--ref", str(setup["data"]),
            "--quick", "--out", str(out), "--num", "10"]  # fmt: skip
    real_load = load.load_trained
    monkeypatch.setattr(load, "load_trained", lambda *a, **k: pytest.fail("loaded the model"))
    assert main([*argv, "--extractor", "bogus"]) == 2
    assert "--extractor 'bogus' is not one of" in capsys.readouterr().err
    monkeypatch.setattr(load, "load_trained", real_load)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(nfe, "run_nfe", stopped)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"interrupted: the finished rows are kept in {out}; re-run the same command" in err
