"""The NFE study's report: a Markdown table, the FD-vs-NFE figure, and the few-step verdict."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from pixeljit.experiments.nfe import (
    FD_TOLERANCE,
    FEW_NFE,
    MANY_NFE,
    few_step_verdict,
    no_verdict_reason,
)
from pixeljit.files.atomic import atomic_write, atomic_write_text

TABLE_NAME, FIGURE_NAME = "nfe.md", "nfe.png"
SAME_FD = 1e-6  # relative spread below which the rows' FDs count as one
FIGURE_INCHES = (7.5, 4.8)
FIGURE_DPI = 120
TITLE_CHARS = 88  # a title line's most characters at 9 pt across FIGURE_INCHES (paths break)
TICK_REACH = 1.1  # a round tick just past the largest NFE (100 for Heun-50's 99) is drawn
MIN_TICKS = 3  # fewer round labels in the rows' range: the rows' own NFEs are labelled
NFE_TICKS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)
LINE_STYLES = {"uniform": "-", "shifted": "--", "edm": ":", "logsnr": "-."}
METHOD_COLOURS = {"euler": "tab:gray", "heun": "tab:blue", "dpm++2m": "tab:orange",
                  "dpm++3m": "tab:green"}  # fmt: skip
NFE_NOTE = (
    "NFE = network evaluations per image; inside the CFG interval each is one batched pass "
    "over two rows (conditional + unconditional): rows/image in the table"
)

UNGUIDED_NOTE = "NFE = network evaluations per image (no guidance: one row each)"


def nfe_note(settings: dict) -> str:
    """What NFE counts in a study of these settings (guided rows are counted as passes)."""
    return UNGUIDED_NOTE if settings.get("cfg") == 1 else NFE_NOTE


def _guidance(settings: dict) -> str:
    if settings.get("cfg") == 1:
        return "no guidance"
    return f"CFG {settings.get('cfg')} on {tuple(settings.get('interval', ()))}"


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table_markdown(rows: list[dict], fd_label: str, header: dict) -> str:
    """One line per row, grouped by solver and grid, NFE ascending; the verdict below."""
    s = header.get("settings", {})
    lines = [
        f"NFE study of `{header.get('checkpoint')}` ({header.get('weights')}), {s.get('num')} "
        f"images per row, seed {s.get('seed')}, {_guidance(s)}, "
        f"{fd_label} against `{header.get('ref')}`.",
        "",
        f"{nfe_note(s)}.",
        "",
        f"| solver | grid | steps | NFE | rows/image | {fd_label} | class acc. | precision | "
        "recall | seconds |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['grid']} | {r['steps']} | {r['nfe']} | {r['rows_per_image']} "
            f"| {_fmt(r['fd'])} | {_fmt(r['class_accuracy'])} | {_fmt(r['precision'])} | "
            f"{_fmt(r['recall'])} | {r['seconds']:.0f} |"
        )
    verdict = few_step_verdict(rows)
    if verdict:
        met = "yes" if verdict["met"] else "no"
        lines += [
            "",
            f"Best FD at ≤ {MANY_NFE} NFE: {verdict['best']} ({verdict['best_fd']:.3f}); best at "
            f"≤ {FEW_NFE} NFE: {verdict['best_few']} ({verdict['best_few_fd']:.3f}), "
            f"ratio {verdict['ratio']:.3f}. Within {FD_TOLERANCE:.0%}: {met}.",
        ]
    elif rows:
        lines += ["", f"No verdict on the few-step goal: it compares the best FD at ≤ {FEW_NFE} "
                  f"NFE with the best at ≤ {MANY_NFE}, and {no_verdict_reason(rows)}."]  # fmt: skip
    fds = [r["fd"] for r in rows]
    if len(rows) > 1 and max(fds) - min(fds) <= SAME_FD * max(fds):
        lines += ["", "Every row has the same FD: the samples do not depend on the solver or the "
                  "steps (a barely trained model?), so the rows compare nothing."]  # fmt: skip
    return "\n".join(lines) + "\n"


def nfe_ticks(nfes: list[int]) -> list[int]:
    """The x-axis labels: the round NFE_TICKS the rows span, or the rows' own NFEs where fewer
    than MIN_TICKS round ones fall in their range (a --quick study's 2–4 NFE got one label)."""
    ticks = [v for v in NFE_TICKS if min(nfes) <= v <= TICK_REACH * max(nfes)]
    return ticks if len(ticks) >= MIN_TICKS else sorted(set(ticks) | set(nfes))


def write_figure(
    rows: list[dict],
    fd_label: str,
    path: str | os.PathLike,
    title: str | None = None,
    note: str = NFE_NOTE,
) -> Path:
    """FD against NFE (log x), one line per solver × grid; the goal's band drawn in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=FIGURE_INCHES, dpi=FIGURE_DPI)
    lines: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        lines.setdefault((r["method"], r["grid"]), []).append(r)
    for (method, grid), points in sorted(lines.items()):
        points.sort(key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in points], [r["fd"] for r in points], marker="o",
                markersize=3, lw=1.2, ls=LINE_STYLES.get(grid, "-"),
                color=METHOD_COLOURS.get(method), label=f"{method} / {grid}")  # fmt: skip
    verdict = few_step_verdict(rows)
    if verdict:
        band = verdict["best_fd"] * (1 + FD_TOLERANCE)
        ax.axhline(band, color="black", lw=0.8, ls=(0, (1, 2)))
        ax.axvline(FEW_NFE, color="black", lw=0.8, ls=(0, (1, 2)))
        ax.text(0.99, 0.99, f"dotted: {FEW_NFE} NFE and best FD (≤ {MANY_NFE} NFE) + "
                f"{FD_TOLERANCE:.0%}", transform=ax.transAxes, ha="right", va="top",
                fontsize=7)  # fmt: skip
    ax.set_xscale("log")
    nfes = [r["nfe"] for r in rows]
    if nfes:
        ax.set_xticks(nfe_ticks(nfes))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("NFE (network evaluations per image)")
    ax.set_ylabel(fd_label)
    if title:
        ax.set_title(textwrap.fill(title, TITLE_CHARS, break_on_hyphens=False), fontsize=9)
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    ax.legend(fontsize=6, ncol=2, loc="upper right", bbox_to_anchor=(1.0, 0.93))
    fig.text(0.01, 0.005, note, fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return Path(path)


def write_outputs(rows: list[dict], fd_label: str, header: dict, out: Path) -> dict[str, Path]:
    """nfe.md and nfe.png beside nfe.json (they are redrawn from it on every run)."""
    table = atomic_write_text(out / TABLE_NAME, table_markdown(rows, fd_label, header))
    s = header.get("settings", {})
    title = (f"{header.get('checkpoint')} ({header.get('weights')}): {s.get('num')} images per "
             f"row, seed {s.get('seed')}, {_guidance(s)}")  # fmt: skip
    figure = write_figure(rows, fd_label, out / FIGURE_NAME, title, nfe_note(s))
    return {"table": table, "figure": figure, "results": out / "nfe.json"}
