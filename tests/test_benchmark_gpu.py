"""benchmarks/gpu.py: its sampling ceiling, rows per image and its `--smoke` run on the CPU (what
CI can check of the GPU benchmark)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT
from pixeljit.diffusion.solvers import evaluations, time_grid
from pixeljit.model import forward_flops, model_config


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO_ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_heun_ceiling_is_84_img_s(gpu_bench):
    """The issue: Heun-50 with guidance on (0.1, 1] (187 rows per image) of B/16 (≈ 50.5 GFLOP
    per image forward, tests/test_flops.py) cannot exceed ≈ 84 img/s at 790 TFLOP/s."""
    flops = forward_flops(model_config("JiT-B/16"))
    rows = gpu_bench.rows_per_image(model_config("JiT-B/16"), gpu_bench.PAPER_SAMPLER)
    assert rows == 187
    ceiling = gpu_bench.H200_BF16_PEAK_TFLOPS * 1e12 / (rows * flops)
    assert ceiling == pytest.approx(84, abs=0.5)


def test_smoke_run_writes_every_row(gpu_bench, tmp_path, capsys):
    assert gpu_bench.main(["--smoke", "--device", "cpu", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_benchmark.json").read_text())
    assert report["smoke"] and report["errors"] == []
    assert report["environment"]["torch"] == torch.__version__
    rows = report["rows"]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["mode"] for r in train] == ["compiled", "eager", "compiled-ckpt", "compiled-bf16res"]
    smoke_flops = 3 * forward_flops(gpu_bench.SMOKE)
    for r in train:
        assert r["img_per_s"] > 0 and r["first_step_s"] > 0
        assert r["tflops"] == pytest.approx(r["img_per_s"] * smoke_flops / 1e12)
        assert r["mfu"] is None and r["peak_mem_gib"] is None  # no peak or CUDA memory on a CPU
    sampled = [r for r in rows if r["kind"] == "sample"]
    assert [(r["method"], r["mode"]) for r in sampled] == [
        ("heun", "eager"), ("heun", "default"), ("dpm++2m", "eager"), ("dpm++2m", "default"),
    ]  # fmt: skip
    # Heun-4 on (0.1, 1): 7 evaluations, 6 of them at t ∈ {.25, .5, .75} inside the interval
    grid = time_grid(4)
    times = [*grid[:3], *grid[1:4], grid[3]]
    guided = sum(0.1 < float(t) < 1.0 for t in times)
    assert sampled[0]["rows_per_image"] == evaluations("heun", 4) + guided == 13
    assert sampled[2]["rows_per_image"] == 2 + 1  # DPM++(2M)-2: t = 0 unguided, t = 0.5 guided
    printed = capsys.readouterr().out
    assert "train smoke b4" in printed and "gpu_benchmark.json" in printed


def test_training_rows_only(gpu_bench, tmp_path):
    argv = ["--smoke", "--device", "cpu", "--out", str(tmp_path), "--skip-sampling",
            "--train-modes", "eager-ckpt", "eager-bf16res"]  # fmt: skip
    assert gpu_bench.main(argv) == 0
    rows = json.loads((tmp_path / "gpu_benchmark.json").read_text())["rows"]
    assert [(r["kind"], r["mode"]) for r in rows] == [
        ("train", "eager-ckpt"), ("train", "eager-bf16res"), ("train", "compiled-ckpt"),
        ("train", "compiled-bf16res")]  # fmt: skip


@pytest.mark.slow
def test_gpu_suite_smoke_end_to_end(tmp_path):
    """benchmarks/gpu_suite.sh --smoke on this machine: the CUDA tests skip (no GPU on CI) and
    the benchmark's smoke run fills the output folder with every file the suite promises."""
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    script = REPO_ROOT / "benchmarks" / "gpu_suite.sh"
    done = subprocess.run(["bash", str(script), "--smoke", str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert files == {"environment.txt", "pytest.log", "pytest-junit.xml", "benchmark.log",
                     "gpu_benchmark.json", "summary.txt"}  # fmt: skip
    report = json.loads((tmp_path / "out" / "gpu_benchmark.json").read_text())
    assert report["smoke"] and len(report["rows"]) == 8 and not report["errors"]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "pytest -m gpu: exit 0" in summary and "benchmarks/gpu.py: exit 0" in summary
