"""Training checkpoints: atomic save, `latest` plus kept milestones, strict resume.

A checkpoint is one `torch.save` file holding plain tensors and containers only (loadable with
`weights_only=True`): model, every EMA, optimizer, step / images seen, data-order position, RNG
states, the fully resolved config. Writes go to a temporary file in the same folder, then
`os.replace`, so a crash never leaves a half-written `latest.pt`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from pixeljit.files.atomic import atomic_write, temp_sibling

LATEST = "latest.pt"
MILESTONE_PATTERN = "step-{step:09d}.pt"
MILESTONE_RE = re.compile(r"step-(\d{9})\.pt$")
FORMAT = "pixeljit.train/1"


def atomic_save(obj, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(state: dict, folder: str | os.PathLike, step: int, milestone: bool) -> Path:
    """Write `latest.pt`; also keep `step-XXXXXXXXX.pt` when `milestone` (hard link if possible)."""
    folder = Path(folder)
    latest = atomic_save({**state, "format": FORMAT}, folder / LATEST)
    if milestone:
        keep = folder / MILESTONE_PATTERN.format(step=step)
        tmp = temp_sibling(keep)
        try:
            os.link(latest, tmp)
        except OSError:
            import shutil

            shutil.copyfile(latest, tmp)
        os.replace(tmp, keep)
    return latest


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file from a run folder (its latest.pt) or a file; never a silent fresh start."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--resume {path}: no such file or folder")
    if path.is_dir():
        latest = path / LATEST
        if latest.is_file():
            return latest
        milestones = sorted(p for p in path.iterdir() if MILESTONE_RE.search(p.name))
        if milestones:
            return milestones[-1]
        raise FileNotFoundError(
            f"--resume {path}: the folder holds no checkpoint ({LATEST} or step-*.pt); "
            "point --resume at a run folder or a checkpoint file"
        )
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    file = find_checkpoint(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"could not read checkpoint {file}: {type(err).__name__}: {err}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"{file} is not a pixeljit training checkpoint (an authors' checkpoint-last.pth loads "
            "with pixeljit.load_reference instead)"
        )
    state["path"] = str(file)
    return state


def diff_configs(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two nested config dicts."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_configs(a, b, name + ".")
        elif a != b:
            out.append(f"{name}: checkpoint {a!r} vs now {b!r}")
    return out
