"""What the Markdown tables of every image grid (`table2_report`, `sweep_report`) share: the
measures reported, a table entry (mean ± std over the seeds) and the closing lines (what was
sampled and against what, the training, the time)."""

from __future__ import annotations

import statistics

# (report key, title, format) of each measure, one table each
MEASURES = (
    ("fd", "FD (lower is better)", "{:.1f}"),
    ("hf_ratio", "HF energy ratio, samples / real (1 = like the data)", "{:.2f}"),
)
MISSING = "—"  # a table entry no cell stands for


def entry(values: list[float] | None, fmt: str) -> str:
    """A measure over seeds: the one value, or mean ± std (sample std) of several."""
    if not values:
        return MISSING
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def closing_lines(report: dict) -> list[str]:
    """The lines under a grid's tables: the FD's samples, sampler and real images, the
    training, the seeds, and the time the cells took."""
    config = report["config"]
    seeds = len(config["seeds"])
    return [
        f"{report['fd_label']} of {config['num_samples']} samples (Heun, "
        f"{config['sampler_steps']} steps) against {report['real_count']} real images; "
        f"{config['steps']} steps of batch {config['batch']}; "
        + (f"mean ± std over {seeds} seeds." if seeds > 1 else "one seed."),
        f"Total cell time {report['total_cell_s']:.0f} s "
        f"(this invocation {report['this_run_s']:.0f} s).",
    ]
