"""What a training run tells its user: JSONL metrics, TensorBoard (when installed), the loss plot.

Only rank 0 writes. The loss sums live on the device (`LossTally`) and are read once every
`log_every` steps, never per step, so training has no host sync per step.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import warnings
from pathlib import Path

import torch

from pixeljit.files.atomic import NO_SPACE, atomic_write, atomic_write_text
from pixeljit.training import distributed as dist_utils

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
TENSORBOARD_FOLDER = "tensorboard"
TENSORBOARD_HINT = "pip install 'pixeljit[tensorboard]'"
TENSORBOARD_OFF = "run.tensorboard=false"
EVENTS_PATTERN = "events.out.tfevents.*.{pid}.*"  # TensorBoard's name: …<time>.<host>.<pid>.<n>
TENSORBOARD_MODULE = "tensorboard."  # where its writer thread's class lives
LOSS_BUCKETS = 4  # loss logged by t ∈ [0, .25), [.25, .5), [.5, .75), [.75, 1]
TORN_SHOWN = 60  # characters of a bad log line quoted in its message


def bucket_losses(
    per_sample: torch.Tensor, t: torch.Tensor, num_buckets: int = LOSS_BUCKETS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of per-sample losses in `num_buckets` equal t-buckets [k/B, (k+1)/B).

    Returns (sums (B,), counts (B,)) in float32 on the losses' device, with no host sync, so a
    training loop can accumulate (and all-reduce) them and log sums / counts when it prints.
    """
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be ≥ 1, got {num_buckets}")
    idx = (t.detach() * num_buckets).long().clamp_(0, num_buckets - 1)  # (N,)
    values = per_sample.detach().to(torch.float32)
    sums = torch.zeros(num_buckets, device=values.device).index_add_(0, idx, values)
    counts = torch.zeros_like(sums).index_add_(0, idx, torch.ones_like(values))
    return sums, counts


def bucket_edges(num_buckets: int) -> list[float]:
    """The B + 1 edges of `bucket_losses`' buckets, for log labels."""
    return [k / num_buckets for k in range(num_buckets + 1)]


LOSS_EDGES = bucket_edges(LOSS_BUCKETS)


class LossTally:
    """Running sums between log lines, kept on the device (no host sync per step)."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.bucket_sum = torch.zeros(LOSS_BUCKETS, device=device)
        self.bucket_count = torch.zeros(LOSS_BUCKETS, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first NaN step
        self.images, self.since = 0, time.perf_counter()

    def add_losses(self, per_sample: torch.Tensor, t: torch.Tensor) -> None:
        sums, counts = bucket_losses(per_sample, t, LOSS_BUCKETS)
        self.bucket_sum += sums
        self.bucket_count += counts

    def end_step(self, step: int, step_loss: torch.Tensor, images: int) -> None:
        bad = (~torch.isfinite(step_loss)) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step), self.first_bad)
        self.loss += step_loss
        self.images += images

    def first_bad_step(self, info) -> int:
        """The first step whose loss was not finite on any rank, or −1 (a host sync)."""
        flag = self.first_bad.clone()
        if info.enabled:  # the earliest over the ranks that saw one (−1: none) — not the latest
            none = torch.iinfo(flag.dtype).max
            flag = torch.where(flag < 0, torch.full_like(flag, none), flag)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            flag = torch.where(flag == none, torch.full_like(flag, -1), flag)
        return int(flag.item())

    def flush(self, step: int, plan, lr: float, info) -> dict:
        """The log record since the last flush (averaged over ranks); the sums restart."""
        stats = torch.cat([self.loss[None], self.bucket_sum, self.bucket_count])
        dist_utils.all_reduce_mean(stats, info)
        img_s = self.images / (time.perf_counter() - self.since)
        record = _record(stats, step, plan, lr, img_s, self.images // plan.global_batch)
        for total in (self.loss, self.bucket_sum, self.bucket_count):
            total.zero_()
        self.images, self.since = 0, time.perf_counter()
        return record


def _record(stats, step, plan, lr, img_s, n_steps) -> dict:
    values = stats.tolist()  # one host sync per log line
    k = LOSS_BUCKETS
    loss_sum, sums, counts = values[0], values[1 : 1 + k], values[1 + k : 1 + 2 * k]
    record = {
        "step": step,
        "epoch": step / plan.steps_per_epoch,
        "images_seen": step * plan.global_batch,
        "loss": loss_sum / max(n_steps, 1),
        "lr": lr,
        "img_per_s": img_s,
    }
    for i in range(k):
        if counts[i] > 0:
            record[f"loss_t[{LOSS_EDGES[i]:.2f},{LOSS_EDGES[i + 1]:.2f})"] = sums[i] / counts[i]
    return record


class RunLog:
    """metrics.jsonl, mirrored to TensorBoard scalars (same tags, steps and values).

    On resume, `truncate_after(step)` drops the JSONL records past the checkpoint and tells
    TensorBoard to purge its events from step + 1 on (they are logged again), so both show one
    point per step. The event writer opens at the first record, once the purge step is known.
    """

    def __init__(self, folder: str | os.PathLike, enabled: bool, tensorboard: bool):
        self.folder = Path(folder)
        self.enabled = enabled
        self.writer = None
        self._writer_class = None
        self._purge_step: int | None = None
        if not enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / METRICS_FILE
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional; JSONL always works, and we say so
                warnings.warn(
                    f"tensorboard is not installed: logging to {self.path} only ({TENSORBOARD_HINT}"
                    ", or set run.tensorboard=false)",
                    stacklevel=2,
                )
            else:
                self._writer_class = SummaryWriter

    def truncate_after(self, step: int) -> None:
        """On resume, drop records past the checkpoint's step (they will be redone)."""
        if not self.enabled:
            return
        if step > 0:
            self._purge_step = step + 1
        if not self.path.is_file():
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        append_line(self.path, json.dumps(record))
        if self._writer_class is not None and self.writer is None:
            self._open_writer()
        if self.writer is not None:
            with self._writer_errors():
                for key, value in record.items():
                    if key != "step" and isinstance(value, (int, float)):
                        self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            with self._writer_errors():  # it flushes first: its thread's failure is raised
                self.writer.close()
            self.writer = None

    def _open_writer(self) -> None:
        """TensorBoard's writer. Its thread (started as it opens) prints no traceback when it
        fails: the writer raises that error again on its next write, flush or close, which
        `_writer_errors` words."""
        quiet_writer_threads()
        with self._writer_errors():
            log_dir = str(self.folder / TENSORBOARD_FOLDER)
            self.writer = self._writer_class(log_dir, purge_step=self._purge_step)

    @contextlib.contextmanager
    def _writer_errors(self):
        """An OSError of TensorBoard's writer (raised from its thread), named by the events file
        with the fix; the writer is dropped (it cannot write any more)."""
        try:
            yield
        except OSError as err:
            self.writer = None
            full = err.errno in NO_SPACE
            fix = f"free some space or set {TENSORBOARD_OFF}" if full else f"set {TENSORBOARD_OFF}"
            reason = err.strerror or str(err)
            where = str(self._events_file())
            raise OSError(
                err.errno, f"{reason} (TensorBoard's events file; {fix})", where
            ) from None

    def _events_file(self) -> Path:
        """The events file this process writes in the TensorBoard folder (its newest), or the
        folder when there is none."""
        folder = self.folder / TENSORBOARD_FOLDER
        mine = sorted(folder.glob(EVENTS_PATTERN.format(pid=os.getpid())), key=_mtime)
        return mine[-1] if mine else folder


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def quiet_writer_threads() -> None:
    """Make `threading.excepthook` print nothing for an exception of a TensorBoard writer thread
    (TensorBoard stores it and raises it again in the thread that writes next); every other
    thread's goes to the hook there was. Installed again when replaced (pytest, for one,
    restores its own hook after each test)."""
    previous = threading.excepthook
    if getattr(previous, "pixeljit_quiet_writers", False):
        return

    def hook(args) -> None:
        writer = type(args.thread).__module__.startswith(TENSORBOARD_MODULE)
        if not (writer and issubclass(args.exc_type, Exception)):
            previous(args)

    hook.pixeljit_quiet_writers = True
    threading.excepthook = hook


def append_line(path: Path, line: str) -> None:
    """Append one line. A write that fails part-way (a full disk) is cut back off, so the file
    never holds half a record, and the error names the file."""
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            done = 0
            while done < len(data):
                done += os.write(fd, data[done:])
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    finally:
        os.close(fd)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl. A last line cut off by a kill during its append (no
    newline after it) is left out, with a warning: the run resumes and redoes that step. Any
    other line that is not a JSON record is an error naming the file and the line."""
    lines = Path(path).read_text(encoding="utf-8", errors="replace").split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the last line, never finished
                warnings.warn(f"{path}: its last line was cut off mid-write (left out): "
                              f"{line[:TORN_SHOWN]!r}", stacklevel=2)  # fmt: skip
                break
            record = None  # not JSON: refused below, as a non-record is
        if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
            raise ValueError(
                f"{path}, line {number}: not a record of the run's log ({line[:TORN_SHOWN]!r}); "
                "repair or remove that line, or move the file aside (the log restarts)"
            )
        records.append(record)
    return records


def loss_series(records: list[dict]) -> dict[str, tuple[list, list]]:
    """The curves of loss.png: 'loss', then each 'loss_t[a,b)' bucket logged by any record (a
    short run's last record may lack a bucket no sampled t fell in), as (steps, values)."""
    keys = ["loss"] + sorted({k for r in records for k in r if k.startswith("loss_t")})
    return {key: ([r["step"] for r in records if key in r], [r[key] for r in records if key in r])
            for key in keys}  # fmt: skip


def plot_loss(metrics_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Loss against step (and loss by t-bucket when logged) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not records:
        raise ValueError(f"{metrics_path} holds no loss records to plot")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for key, (steps, values) in loss_series(records).items():
        total = key == "loss"
        ax.plot(
            steps,
            values,
            lw=1.5 if total else 0.8,
            alpha=1.0 if total else 0.7,
            color="black" if total else None,
            label=key.replace("loss_t", "t∈"),
            marker="o" if len(steps) == 1 else None,
        )  # one point: a line draws nothing
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
