"""What a training run tells its user: JSONL metrics, TensorBoard (when installed), the loss plot.

Only rank 0 writes. Metrics arrive as host floats at log steps (the training loop reads its
on-device accumulators every `log_every` steps, never per step).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pixeljit.files.atomic import atomic_write, atomic_write_text

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"


class RunLog:
    def __init__(self, folder: str | os.PathLike, enabled: bool, tensorboard: bool):
        self.folder = Path(folder)
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / METRICS_FILE
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional; JSONL always works
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(self.folder / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """On resume, drop records past the checkpoint's step (they will be redone)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def plot_loss(metrics_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Loss against step (and loss by t-bucket when logged) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not records:
        raise ValueError(f"{metrics_path} holds no loss records to plot")
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, [r["loss"] for r in records], label="loss", color="black", lw=1.5)
    buckets = sorted(k for k in records[-1] if k.startswith("loss_t"))
    for key in buckets:
        ax.plot(
            [r["step"] for r in records if key in r],
            [r[key] for r in records if key in r],
            lw=0.8,
            alpha=0.7,
            label=key.replace("loss_t", "t∈"),
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        return atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
