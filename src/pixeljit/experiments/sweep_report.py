"""The outputs of the one-axis reproductions (`reproduce resolution / bottleneck / noise`):
NAME.json (every config and measure), NAME.md (a table per measure, mean ± std over seeds),
NAME_plot.png (each measure against the axis, one line per variant) and NAME_samples.png (the
sample grid of every cell).

Each experiment describes its axis and variants with a `Layout`; a cell's labels say which
(variant, x) points it stands for (one cell may stand for several, e.g. the smallest resolution
is the same run with and without the noise rescaling).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pixeljit.experiments.evidence import GRID_NAME, write_json
from pixeljit.experiments.grid import CELLS_FOLDER
from pixeljit.experiments.grid_tables import MEASURES, MISSING, closing_lines, entry
from pixeljit.files.atomic import atomic_write, atomic_write_text

PANEL_INCHES = 2.0
PLOT_DPI = 110


@dataclass(frozen=True)
class Layout:
    """How an experiment's cells map onto a table and a plot."""

    experiment: str
    x_label: str  # the axis, e.g. 'image size (px)'
    xs: tuple  # the axis values in order (as JSON reads them back)
    series: tuple[str, ...]  # the variants in order
    points: Callable[[dict], list[tuple[str, object]]]  # a cell's labels → its (variant, x)s
    x_text: Callable[[object], str] = str
    x_pos: Callable[[object], float] = float
    log_x: bool = False
    rows_are_x: bool = False  # the table's rows: the axis (else the variants)
    floor: dict | None = None  # x → the FD floor (real images), shown as a row and a line
    note: str = ""  # one line under the tables


def output_names(experiment: str) -> tuple[str, ...]:
    return (f"{experiment}.json", f"{experiment}.md", f"{experiment}_plot.png",
            f"{experiment}_samples.png")  # fmt: skip


def collect(report: dict, layout: Layout, key: str) -> dict[tuple[str, object], list[float]]:
    """(variant, x) → the measure over the cells (seeds) that stand for it."""
    found: dict[tuple[str, object], list[float]] = {}
    for cell in report["cells"]:
        for point in layout.points(cell["labels"]):
            found.setdefault(point, []).append(cell[key])
    return found


def table_markdown(report: dict, layout: Layout) -> str:
    lines = []
    for key, title, fmt in MEASURES:
        values = collect(report, layout, key)
        lines.append(f"{title}:\n")
        if layout.rows_are_x:
            lines.append(f"| {layout.x_label} | " + " | ".join(layout.series) + " |")
            lines.append("|---|" + "---|" * len(layout.series))
            for x in layout.xs:
                row = [entry(values.get((s, x)), fmt) for s in layout.series]
                lines.append(f"| {layout.x_text(x)} | " + " | ".join(row) + " |")
        else:
            lines.append(f"| variant \\ {layout.x_label} | "
                         + " | ".join(layout.x_text(x) for x in layout.xs) + " |")  # fmt: skip
            lines.append("|---|" + "---|" * len(layout.xs))
            for s in layout.series:
                row = [entry(values.get((s, x)), fmt) for x in layout.xs]
                lines.append(f"| {s} | " + " | ".join(row) + " |")
            if key == "fd" and layout.floor:
                row = [_floor_text(layout.floor.get(x)) for x in layout.xs]
                lines.append("| real images (floor) | " + " | ".join(row) + " |")
        lines.append("")
    if layout.note:
        lines.append(layout.note + "\n")
    return "\n".join(lines + closing_lines(report)) + "\n"


def _floor_text(value: float | None) -> str:
    return MISSING if value is None else f"{max(value, 0.0):.1f}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plot(report: dict, layout: Layout, out: Path) -> Path:
    """Each measure against the axis, one line per variant (mean and ± std over seeds)."""
    plt = _pyplot()
    from matplotlib.ticker import NullLocator

    fig, axes = plt.subplots(1, len(MEASURES), figsize=(5.0 * len(MEASURES), 3.6))
    for ax, (key, title, _) in zip(axes, MEASURES, strict=True):
        values = collect(report, layout, key)
        for s in layout.series:
            xs = [x for x in layout.xs if values.get((s, x))]
            if not xs:
                continue
            means = [statistics.mean(values[(s, x)]) for x in xs]
            stds = [statistics.stdev(values[(s, x)]) if len(values[(s, x)]) > 1 else 0.0
                    for x in xs]  # fmt: skip
            ax.errorbar([layout.x_pos(x) for x in xs], means, yerr=stds, marker="o",
                        capsize=3, label=s)  # fmt: skip
        if key == "fd" and layout.floor:
            xs = [x for x in layout.xs if x in layout.floor]
            ax.plot([layout.x_pos(x) for x in xs], [max(layout.floor[x], 0.0) for x in xs],
                    "k--", label="real images (floor)")  # fmt: skip
        if key == "hf_ratio":
            ax.axhline(1.0, color="grey", lw=0.8, ls=":")
            if all(v > 0 for vs in values.values() for v in vs):
                ax.set_yscale("log")
        if layout.log_x:
            ax.set_xscale("log")
        ax.set_xticks([layout.x_pos(x) for x in layout.xs])
        ax.set_xticklabels([layout.x_text(x) for x in layout.xs])
        ax.xaxis.set_minor_locator(NullLocator())  # only the axis values are ticked
        ax.set_xlabel(layout.x_label)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = atomic_write(out / output_names(layout.experiment)[2],
                        lambda tmp: fig.savefig(tmp, dpi=PLOT_DPI, format="png"))  # fmt: skip
    plt.close(fig)
    return path


def save_samples(report: dict, layout: Layout, out: Path) -> Path:
    """One panel per (variant, x) of the first seed: rows variants, columns the axis."""
    from PIL import Image

    plt = _pyplot()
    seed = report["config"]["seeds"][0]
    cells = {}
    for cell in report["cells"]:
        if cell["labels"]["seed"] == seed:
            for point in layout.points(cell["labels"]):
                cells[point] = cell
    rows, cols = len(layout.series), len(layout.xs)
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_INCHES * cols, 1.15 * PANEL_INCHES * rows),
                             squeeze=False)  # fmt: skip
    for i, s in enumerate(layout.series):
        for j, x in enumerate(layout.xs):
            ax = axes[i][j]
            ax.axis("off")
            cell = cells.get((s, x))
            if cell is None:
                continue
            with Image.open(out / CELLS_FOLDER / cell["name"] / GRID_NAME) as grid:
                ax.imshow(grid.convert("RGB"))
            fd = cell["fd"]
            ax.set_title(f"{s}\n{layout.x_label} {layout.x_text(x)}: FD "
                         f"{fd:.0f}" if math.isfinite(fd) else s, fontsize=7)  # fmt: skip
    fig.tight_layout()
    path = atomic_write(out / output_names(layout.experiment)[3],
                        lambda tmp: fig.savefig(tmp, dpi=PLOT_DPI, format="png"))  # fmt: skip
    plt.close(fig)
    return path


def write_outputs(report: dict, layout: Layout, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    names = output_names(layout.experiment)
    return {
        "json": write_json(out / names[0], report),
        "table": atomic_write_text(out / names[1], table_markdown(report, layout)),
        "plot": save_plot(report, layout, out),
        "figure": save_samples(report, layout, out),
    }
