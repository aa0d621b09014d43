"""Measures, table and figure of the toy experiment (Fig. 2).

Measures per (prediction, D), all against fresh draws of the true distribution:
- `mmd_2d`: the squared maximum mean discrepancy (unbiased estimate, so it can dip slightly below
  0 when the distributions agree) between the 2-D views Pᵀx and the true x̂, with a Gaussian
  kernel of bandwidth MMD_BANDWIDTH = 0.2: four times the arm jitter and about a quarter of the
  gap between the spiral's arms, so it sees the spiral's shape (a blob of the right mean and
  spread scores badly). This is what the figure shows.
- `energy_ambient`: the energy distance 2·E‖X−Y‖ − E‖X−X′‖ − E‖Y−Y′‖ (Székely & Rizzo; zero iff
  the distributions agree; in units of length, not square-rooted; unbiased within-sample terms)
  in ℝ^D between the samples x and P·x̂: the toy is a D-dimensional generation problem, and this
  also counts what the 2-D view hides.
- `off_manifold`: mean ‖(I − PPᵀ)x‖, the energy left outside the data plane (0 for the data;
  about √(D−2)·s for pure noise).
A "ground truth" row compares a second independent draw of the data: the measures' noise floor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from pixeljit.experiments.toy import ToyResult, off_manifold
from pixeljit.files.atomic import atomic_write, atomic_write_text

Tensor = torch.Tensor

MMD_BANDWIDTH = 0.2
PLOT_LIMIT = 3.0  # axes of the figure: [−3, 3]², the data lies within about ±2.1
PLOT_POINT_SIZE = 0.6
CELL_INCHES = 2.0
FIGURE_DPI = 110
PREDICTION_NAMES = {"x": "x-pred", "eps": "ε-pred", "v": "v-pred"}
DISTANCES = ("mmd_2d", "energy_ambient", "off_manifold")


def energy_distance(a: Tensor, b: Tensor) -> float:
    """2·E‖X−Y‖ − E‖X−X′‖ − E‖Y−Y′‖ for samples a (N, k), b (M, k); within-sample terms are
    U-statistics (the zero diagonal excluded). Computed in float64."""
    a, b = a.double(), b.double()
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"energy distance needs ≥ 2 samples on each side, got {n} and {m}")
    cross = torch.cdist(a, b).mean()
    within_a = torch.cdist(a, a).sum() / (n * (n - 1))
    within_b = torch.cdist(b, b).sum() / (m * (m - 1))
    return float(2 * cross - within_a - within_b)


def gaussian_mmd2(a: Tensor, b: Tensor, bandwidth: float = MMD_BANDWIDTH) -> float:
    """Unbiased squared MMD of samples a (N, k), b (M, k) with the kernel
    exp(−‖u − v‖² / (2·bandwidth²)). Computed in float64."""
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    a, b = a.double(), b.double()
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"MMD needs ≥ 2 samples on each side, got {n} and {m}")
    scale = -0.5 / bandwidth**2

    def kernel(u: Tensor, v: Tensor) -> Tensor:
        return torch.exp(scale * torch.cdist(u, v).pow(2))

    k_aa = (kernel(a, a).sum() - n) / (n * (n - 1))  # the diagonal is exp(0) = 1
    k_bb = (kernel(b, b).sum() - m) / (m * (m - 1))
    return float(k_aa + k_bb - 2 * kernel(a, b).mean())


def measure(result: ToyResult) -> list[dict]:
    """One row per (prediction, D) with the measures of the module docstring, after one
    "truth" row per D (a second draw of the data against the first: the noise floor)."""
    floor = {
        "mmd_2d": gaussian_mmd2(result.truth_check, result.truth),
        "energy_ambient": energy_distance(result.truth_check, result.truth),  # P is an isometry
        "off_manifold": 0.0,
    }
    rows = [
        {"prediction": "truth", "dim": dim, "finite": True, **floor, "final_loss": None,
         "seconds": 0.0}
        for dim in result.config.dims
    ]  # fmt: skip
    for run in result.runs:
        embed = result.embeddings[run.dim]  # (D, 2)
        finite = bool(torch.isfinite(run.samples).all())
        row = {"prediction": run.prediction, "dim": run.dim, "finite": finite}
        if finite:
            row["mmd_2d"] = gaussian_mmd2(run.projected, result.truth)
            row["energy_ambient"] = energy_distance(run.samples, result.truth @ embed.T)
            row["off_manifold"] = float(off_manifold(run.samples, embed).mean())
        else:  # a diverged sampler: no distance is meaningful
            row.update(dict.fromkeys(DISTANCES))
        row["final_loss"] = run.final_loss
        row["seconds"] = run.seconds
        rows.append(row)
    order = {p: i for i, p in enumerate(("truth", *result.config.predictions))}
    return sorted(rows, key=lambda r: (r["dim"], order[r["prediction"]]))


def _atomic_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def _fmt(value: float | None) -> str:
    return "diverged" if value is None else f"{value:.3g}"


def table_markdown(rows: list[dict]) -> str:
    """The measures as a markdown table (one line per D × (truth, predictions))."""
    head = (
        "| D | prediction | MMD² 2-D (σ=0.2) ↓ | energy distance ℝ^D ↓ "
        "| off-manifold ‖(I−PPᵀ)x‖ ↓ | final v-loss |\n"
        "|---:|---|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        name = PREDICTION_NAMES.get(r["prediction"], "ground truth (2nd draw)")
        loss = "–" if r["final_loss"] is None else _fmt(r["final_loss"])
        cells = " | ".join(_fmt(r[k]) for k in DISTANCES)
        lines.append(f"| {r['dim']} | {name} | {cells} | {loss} |")
    return head + "\n".join(lines) + "\n"


FIGURE_NAME = "toy_fig2.png"
TABLE_STEM = "toy_table"


def toy_output_names() -> tuple[str, ...]:
    """The files `write_outputs` writes into its folder."""
    return (FIGURE_NAME, f"{TABLE_STEM}.md", f"{TABLE_STEM}.json")


def write_outputs(
    result: ToyResult, out_dir: str | os.PathLike, rows: list[dict] | None = None
) -> dict[str, Path]:
    """Figure, markdown table and JSON table of a run under out_dir (created if missing);
    `rows` are `measure(result)` if already computed. A folder at one of the names is refused
    before any file is written (not after the first ones)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is a file; pass a folder")
    for name in toy_output_names():
        if (out / name).is_dir():
            raise ValueError(
                f"{out / name} is a folder where write_outputs writes its file {name}: remove "
                "or rename it, or pass another out_dir"
            )
    write_table(result, out, TABLE_STEM, rows)
    return {
        "figure": write_figure(result, out / FIGURE_NAME),
        "table": out / f"{TABLE_STEM}.md",
        "json": out / f"{TABLE_STEM}.json",
    }


def write_table(
    result: ToyResult,
    out_dir: str | os.PathLike,
    stem: str = TABLE_STEM,
    rows: list[dict] | None = None,
) -> dict:
    """Write `<stem>.md` and `<stem>.json` (config, measures, run time); returns the JSON dict."""
    out = Path(out_dir)
    rows = measure(result) if rows is None else rows
    cfg = result.config
    payload = {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cfg).items()},
        "seconds": result.seconds,
        "rows": rows,
    }
    _atomic_text(out / f"{stem}.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")
    _atomic_text(out / f"{stem}.md", table_markdown(rows))
    return payload


def write_figure(result: ToyResult, path: str | os.PathLike) -> Path:
    """The Fig. 2 grid: rows ground truth + one per prediction, columns D; 2-D views Pᵀx."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims, preds = result.config.dims, result.config.predictions
    fig, axes = plt.subplots(
        len(preds) + 1,
        len(dims),
        figsize=(CELL_INCHES * len(dims), CELL_INCHES * (len(preds) + 1)),
        dpi=FIGURE_DPI,
        squeeze=False,
    )
    truth = result.truth.numpy()
    for col, dim in enumerate(dims):
        panels = [("ground truth", truth, 0)]
        for pred in preds:
            run = result.run(dim, pred)
            outside = int((~(run.projected.abs() <= PLOT_LIMIT)).any(dim=1).sum())  # NaN too
            panels.append((PREDICTION_NAMES[pred], run.projected.numpy(), outside))
        for row, (name, points, outside) in enumerate(panels):
            ax = axes[row][col]
            ax.scatter(points[:, 0], points[:, 1], s=PLOT_POINT_SIZE, color="black", lw=0)
            ax.set_xlim(-PLOT_LIMIT, PLOT_LIMIT)
            ax.set_ylim(-PLOT_LIMIT, PLOT_LIMIT)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"D = {dim}", fontsize=10)
            if col == 0:
                ax.set_ylabel(name, fontsize=10)
            if outside:
                ax.text(0.03, 0.03, f"{outside} of {len(points)} outside", fontsize=6,
                        transform=ax.transAxes, color="tab:red")  # fmt: skip
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path
