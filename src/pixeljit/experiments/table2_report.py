"""The outputs of `reproduce table2`: table2.json (every config and measure), table2.md (per
setting and measure a 3×3 table in the paper's layout: rows loss space, columns prediction) and
table2_samples.png (the sample grid of every cell)."""

from __future__ import annotations

from pathlib import Path

from pixeljit.experiments.evidence import GRID_NAME, write_json
from pixeljit.experiments.grid_tables import MEASURES, closing_lines, entry
from pixeljit.files.atomic import atomic_write, atomic_write_text

JSON_NAME = "table2.json"
MARKDOWN_NAME = "table2.md"
FIGURE_NAME = "table2_samples.png"
NAMES = {"x": "x", "eps": "ε", "v": "v"}
SETTING_TITLES = {
    "bottlenecked": "(a) bottlenecked",
    "plain": "(b) not bottlenecked",
}


def output_names() -> tuple[str, ...]:
    return (JSON_NAME, MARKDOWN_NAME, FIGURE_NAME)


def cell_values(report: dict, setting: str, key: str) -> dict[tuple[str, str], list[float]]:
    """(loss, prediction) → the measure over seeds."""
    found: dict[tuple[str, str], list[float]] = {}
    for cell in report["cells"]:
        labels = cell["labels"]
        if labels["setting"] == setting:
            found.setdefault((labels["loss"], labels["prediction"]), []).append(cell[key])
    return found


def table_markdown(report: dict) -> str:
    """Both settings' tables of each measure, rows loss, columns prediction."""
    config = report["config"]
    preds, losses = config["predictions"], config["losses"]
    lines = []
    for setting in config["settings"]:
        size, patch = (
            (config["big_size"], config["big_patch"])
            if setting == "bottlenecked"
            else (config["small_size"], config["small_patch"])
        )
        dim = patch * patch * 3
        floor = report.get("fd_floor", {}).get(setting)
        lines.append(
            f"### {SETTING_TITLES[setting]}: {size} px, patch {patch} "
            f"({dim}-d patches into width {config['width']})\n"
        )
        for key, title, fmt in MEASURES:
            values = cell_values(report, setting, key)
            lines.append(f"{title}:\n")
            lines.append("| loss \\ prediction | " + " | ".join(f"{NAMES[p]}-pred" for p in preds)
                         + " |")  # fmt: skip
            lines.append("|---|" + "---|" * len(preds))
            for loss in losses:
                row = [entry(values.get((loss, p)), fmt) for p in preds]
                lines.append(f"| {NAMES[loss]}-loss | " + " | ".join(row) + " |")
            lines.append("")
        if floor is not None:
            lines.append(
                f"FD of the real {size}-px images themselves against the reference: "
                f"{max(floor, 0.0):.1f}"
                " (the floor of this setting).\n"
            )
    return "\n".join(lines + closing_lines(report)) + "\n"


def save_figure(report: dict, out: Path) -> Path:
    """One panel per cell (first seed): columns prediction within each setting, rows loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    config = report["config"]
    preds, losses, settings = config["predictions"], config["losses"], config["settings"]
    seed = config["seeds"][0]
    by_key = {
        (c["labels"]["setting"], c["labels"]["loss"], c["labels"]["prediction"]): c
        for c in report["cells"]
        if c["labels"]["seed"] == seed
    }
    cols = len(settings) * len(preds)
    fig, axes = plt.subplots(
        len(losses), cols, figsize=(2.2 * cols, 2.4 * len(losses)), squeeze=False
    )
    for j, setting in enumerate(settings):
        for i, loss in enumerate(losses):
            for k, pred in enumerate(preds):
                ax = axes[i][j * len(preds) + k]
                ax.axis("off")
                cell = by_key.get((setting, loss, pred))
                if cell is None:
                    continue
                with Image.open(out / "cells" / cell["name"] / GRID_NAME) as grid:
                    ax.imshow(grid.convert("RGB"))
                ax.set_title(
                    f"{SETTING_TITLES[setting].split(')')[0]}) {NAMES[pred]}-pred "
                    f"{NAMES[loss]}-loss\nFD {cell['fd']:.0f}",
                    fontsize=7,
                )
    fig.tight_layout()
    path = atomic_write(out / FIGURE_NAME, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def write_outputs(report: dict, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    return {
        "json": write_json(out / JSON_NAME, report),
        "table": atomic_write_text(out / MARKDOWN_NAME, table_markdown(report)),
        "figure": save_figure(report, out),
    }
