"""The toy experiment (§3.3 / Fig. 2): its pieces, its determinism, its CLI and the paper's claim.

The claim test trains the `--quick` grid (D ∈ {2, 512}, 200 steps, ~30–45 s on 2 shared cores);
the full paper grid (D ∈ {2, 8, 16, 512}, 1500 steps, ~6 min) is marked slow.
Thresholds come from measured runs (seeds 0–3, see docs/toy.md) with a wide margin.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from pixeljit.cli import main
from pixeljit.diffusion.guidance import GuidedField
from pixeljit.diffusion.objective import ObjectiveConfig, flow_matching_loss_at
from pixeljit.diffusion.solvers import heun, time_grid
from pixeljit.experiments import ToyConfig, measure, run_toy
from pixeljit.experiments.toy import (
    ToyMLP,
    off_manifold,
    random_embedding,
    swiss_roll,
)
from pixeljit.experiments.toy_report import energy_distance, gaussian_mmd2

TINY = {"steps": 3, "batch_size": 32, "num_samples": 64, "sample_steps": 3}


def _rows(rows: list[dict]) -> dict[tuple[int, str], dict]:
    return {(r["dim"], r["prediction"]): r for r in rows}


# ---------------------------------------------------------------------------------- pieces


def test_data_and_embedding():
    gen = torch.Generator().manual_seed(0)
    x = swiss_roll(20_000, gen)  # (N, 2)
    assert x.shape == (20_000, 2)
    assert ((x.std(dim=0) - 1).abs() < 0.15).all()  # "roughly unit variance" per coordinate
    for dim in (2, 9, 512):
        p = random_embedding(dim, gen)  # (D, 2)
        assert p.shape == (dim, 2)
        torch.testing.assert_close(p.T @ p, torch.eye(2), atol=1e-5, rtol=0)
    # off-manifold energy: exactly the part orthogonal to the plane
    p = random_embedding(9, gen)
    a, g = torch.randn(5, 2, generator=gen), torch.randn(5, 9, generator=gen)
    w = g - (g @ p) @ p.T  # (5, 9), orthogonal to the columns of P
    torch.testing.assert_close(off_manifold(a @ p.T + w, p), w.norm(dim=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(off_manifold(a @ p.T, p), torch.zeros(5), atol=1e-5, rtol=0)


def test_distances_analytic():
    c = torch.tensor([[3.0, 4.0]])  # at distance 5 from the origin
    zeros, shifted = torch.zeros(50, 2), torch.zeros(50, 2) + c
    # point masses: within terms 0, cross term |c| -> energy distance 2|c|
    assert energy_distance(zeros, shifted) == pytest.approx(10.0)
    assert energy_distance(zeros, zeros) == pytest.approx(0.0)
    # Gaussian MMD² of point masses: 2 − 2·exp(−|c|² / (2σ²))
    assert gaussian_mmd2(zeros, shifted, 5.0) == pytest.approx(2 - 2 * math.exp(-0.5))
    gen = torch.Generator().manual_seed(1)
    a, b = swiss_roll(1000, gen), swiss_roll(1000, gen)
    assert abs(gaussian_mmd2(a, b)) < 2e-3 and abs(energy_distance(a, b)) < 5e-3
    with pytest.raises(ValueError, match="bandwidth"):
        gaussian_mmd2(a, b, 0.0)


def test_mlp_is_the_papers_generator():
    net = ToyMLP(7)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 5 and [m.out_features for m in linears] == [256] * 4 + [7]
    assert linears[0].in_features == 8  # [z_t, t]
    assert sum(isinstance(m, torch.nn.ReLU) for m in net.modules()) == 4
    assert net(torch.randn(3, 7), torch.rand(3)).shape == (3, 7)


@pytest.mark.parametrize("prediction", ["x", "eps", "v"])
def test_objective_on_vectors_matches_images(prediction):
    """The project's loss on (N, D) vectors equals the loss on the same data as (N, D, 1, 1)."""
    gen = torch.Generator().manual_seed(2)
    x, noise, t = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen), torch.rand(6)
    weight = torch.randn(5, 5, generator=gen)

    def denoiser(z, tt, y):  # a fixed linear map, shape-agnostic
        flat = z.reshape(z.shape[0], -1) @ weight + tt[:, None]
        return flat.reshape(z.shape)

    cfg = ObjectiveConfig(prediction=prediction, t_sampler="uniform", noise_scale=1.0)
    vec = flow_matching_loss_at(denoiser, x, noise, t, None, cfg)
    img = flow_matching_loss_at(denoiser, x[..., None, None], noise[..., None, None], t, None, cfg)
    torch.testing.assert_close(vec, img)


# ------------------------------------------------------------------------------ run and CLI


def test_run_is_deterministic_by_seed():
    cfg = ToyConfig(dims=(3,), predictions=("x", "eps"), seed=4, **TINY)
    a, b = run_toy(cfg), run_toy(cfg)
    other = run_toy(ToyConfig(dims=(3,), predictions=("x", "eps"), seed=5, **TINY))
    for ra, rb, ro in zip(a.runs, b.runs, other.runs, strict=True):
        assert torch.equal(ra.samples, rb.samples) and ra.final_loss == rb.final_loss
        assert not torch.equal(ra.samples, ro.samples)
    assert torch.equal(a.embeddings[3], b.embeddings[3])
    assert torch.equal(a.truth, b.truth) and not torch.equal(a.truth, a.truth_check)
    assert a.runs[0].samples.shape == (64, 3) and a.runs[0].projected.shape == (64, 2)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("dims", (1,), "dims"), ("dims", (2, 2), "repeat"), ("predictions", ("z",), "predictions"),
     ("steps", 0, "steps"), ("lr", 0.0, "lr"), ("clamp", 0.0, "t_eps")],
)  # fmt: skip
def test_config_errors(field, value, match):
    with pytest.raises(ValueError, match=match):
        ToyConfig(**{field: value})


def test_cli_writes_figure_and_tables(tmp_path, capsys):
    out = tmp_path / "toy"
    argv = ["reproduce", "toy", "--quick", "--steps", "3", "--dims", "2", "3", "--seed", "1",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((out / "toy_table.json").read_text())
    assert data["config"]["steps"] == 3 and data["config"]["dims"] == [2, 3]
    assert data["config"]["seed"] == 1 and data["config"]["num_samples"] == 1000
    rows = _rows(data["rows"])
    assert set(rows) == {(d, p) for d in (2, 3) for p in ("truth", "x", "eps", "v")}
    # in D = 2 the data's plane is the whole space; in D = 3 a 3-step network leaves it
    assert all(rows[(2, p)]["off_manifold"] < 1e-5 for p in ("truth", "x", "eps", "v"))
    assert rows[(3, "truth")]["off_manifold"] == 0.0
    assert all(rows[(3, p)]["off_manifold"] > 1e-4 for p in ("x", "eps", "v"))
    table = (out / "toy_table.md").read_text()
    assert table.count("\n") == 2 + 8 and "ε-pred" in table
    with Image.open(out / "toy_fig2.png") as im:  # 4 rows × 2 columns of panels
        assert im.height > im.width > 200
    assert not list(out.glob(".*"))  # no temporary files left
    assert "toy_fig2.png" in capsys.readouterr().out
    # a second run into the same folder would replace these results: refused without --overwrite
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "toy_table.json" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main([*argv, "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--dims", "1"], "--dims must be ≥ 2"),  # the data's 2 dimensions: the flag named
        (["--steps", "0"], "--steps must be ≥ 1"),
        (["--threads", "0"], "--threads must be ≥ 1"),
    ],
)
def test_cli_errors(tmp_path, capsys, args, match):
    assert main(["reproduce", "toy", "--out", str(tmp_path), *args]) == 2
    assert match in capsys.readouterr().err


def test_cli_out_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["reproduce", "toy", "--quick", "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_cli_needs_an_experiment(capsys):
    with pytest.raises(SystemExit) as info:
        main(["reproduce"])
    assert info.value.code == 2


# ---------------------------------------------------------------------------------- the claim


def clamp_residue(config: ToyConfig) -> float:
    """The fraction of the initial noise that the sampler leaves when the denoiser predicts
    x̂ = 0 exactly: the 0.05 clamp of 1 − t stops the last steps from removing all of it."""
    field = GuidedField(lambda z, t, y: torch.zeros_like(z), None, t_eps=config.clamp)
    return float(heun(field.velocity, torch.ones(1, 1), time_grid(config.sample_steps)))


def assert_paper_claim(
    rows: dict[tuple[int, str], dict], low: int, high: int, config: ToyConfig
) -> None:
    """x-prediction survives D = high; ε and v collapse there; all three comparable at D = low."""
    x, eps, v = (rows[(high, p)] for p in ("x", "eps", "v"))
    # in ℝ^D (measured ratio ≥ 670×): ε and v leave most of the noise; x is near the floor
    assert x["energy_ambient"] < 0.05
    assert min(eps["energy_ambient"], v["energy_ambient"]) > 100 * x["energy_ambient"]
    # the noise left off the data plane (pure noise: ≈ √(D − 2.5) = 22.6 at D = 512) ...
    assert 10.0 < min(eps["off_manifold"], v["off_manifold"])
    # ... is for x-prediction the clamp residue of a perfect denoiser (measured within 0.5%)
    perfect = clamp_residue(config) * config.noise_scale * math.sqrt(high - 2.5)
    assert x["off_manifold"] == pytest.approx(perfect, rel=0.05)
    # in the 2-D view (measured ≥ 2.5× for v, ≥ 4× for ε)
    assert min(eps["mmd_2d"], v["mmd_2d"]) > 2 * x["mmd_2d"]
    # x-prediction does not degrade from D = low to D = high (measured ratio 0.9–1.0)
    assert x["mmd_2d"] < 2 * rows[(low, "x")]["mmd_2d"]
    # at D = low all three are close to the data (measured ≤ 0.011)
    assert all(rows[(low, p)]["energy_ambient"] < 0.05 for p in ("x", "eps", "v"))


@pytest.mark.slow
def test_quick_run_shows_the_claim():
    config = ToyConfig.quick(seed=0)
    result = run_toy(config)
    assert all(torch.isfinite(r.samples).all() for r in result.runs)
    assert_paper_claim(_rows(measure(result)), low=2, high=512, config=config)


@pytest.mark.slow
def test_full_grid_shows_the_claim():
    """The paper's grid: also ε and v "struggle at D = 16" (2-D MMD measured ≥ 9× x's)."""
    config = ToyConfig(seed=0)
    rows = _rows(measure(run_toy(config)))
    assert_paper_claim(rows, low=2, high=512, config=config)
    x16 = rows[(16, "x")]["mmd_2d"]
    assert min(rows[(16, "eps")]["mmd_2d"], rows[(16, "v")]["mmd_2d"]) > 3 * x16
