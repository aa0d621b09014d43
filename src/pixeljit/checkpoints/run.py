"""Training checkpoints: atomic, checksummed save, `latest` plus kept milestones, strict resume.

A checkpoint is one `torch.save` file holding plain tensors and containers only (loadable with
`weights_only=True`): model, every EMA, optimizer, step / images seen, data-order position, RNG
states, the fully resolved config. Writes go to a temporary file in the same folder, then
`os.replace`, so a crash or a full disk never leaves a half-written `latest.pt`. A state holding
a non-finite float is never written. Each file carries a SHA-256 of every tensor (its name,
dtype, shape and bytes) and one of everything else, checked on load, so a flipped byte that
`torch.load` would read silently is caught and named.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shlex
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from pixeljit.checkpoints.authors import CHECKPOINT_FILENAME, KEY_PREFIX, WEIGHT_ENTRIES
from pixeljit.checkpoints.metadata import check_class_names
from pixeljit.checkpoints.weights import (
    SAFE_GLOBALS,
    check_torch_zip,
    refuse_special_file,
    torch_load_problem,
)
from pixeljit.files.atomic import atomic_write, temp_sibling

LATEST = "latest.pt"
MILESTONE_PATTERN = "step-{step:09d}.pt"
MILESTONE_RE = re.compile(r"step-(\d{9})\.pt$")
FORMAT = "pixeljit.train/2"  # /2: every file carries its checksum (required on load)
UNCHECKED_FORMAT = "pixeljit.train/1"  # written before checksums: loads with a warning
MAX_CLASS_NAMES = 1 << 20  # as many as a packed set may declare (data.packed.MAX_CLASSES)
CHECKSUM_KEY = "checksum"
CHECKSUM_ALGORITHM = "sha256"
OTHER_FIELDS = "<non-tensor fields>"  # the checksum entry covering everything but tensors
SAVE_OVERHEAD_BYTES = 1 << 20  # pickled config, names, zip headers (an estimate)
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
MAX_LISTED = 5
RESUME_FLAG = "--resume"  # the flag of `pixeljit train` that names a checkpoint to continue


class NonFiniteStateError(ValueError):
    """A state to save holds NaN or ±inf (the previous checkpoint is kept)."""


def resume_hint(folder: str | os.PathLike) -> str:
    """How a user continues the run in `folder`: the command, or under torchrun (WORLD_SIZE > 1)
    their own torchrun command with it (a single process would not resume a multi-rank run
    exactly)."""
    command = f"pixeljit train {RESUME_FLAG} {shlex.quote(str(folder))}"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"the same `torchrun …` launch of `{command}`"
    return f"`{command}`"


def atomic_save(obj, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


# ------------------------------------------------------------------------- tensors of a state


def _leaves(obj, path: str = "") -> Iterator[tuple[str, object]]:
    """(dotted path, leaf) over nested dicts / lists / tuples, in a deterministic order."""
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            yield from _leaves(obj[key], f"{path}/{key}" if path else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _leaves(value, f"{path}/{i}")
    else:
        yield path, obj


def tensor_bytes(state: dict) -> int:
    return sum(v.numel() * v.element_size() for _, v in _leaves(state) if torch.is_tensor(v))


def non_finite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors holding NaN or ±inf."""
    return [
        name
        for name, v in _leaves(state)
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def checksums(state: dict) -> dict[str, str]:
    """SHA-256 per tensor (name, dtype, shape, bytes) and one over every other leaf's repr."""
    out, other = {}, hashlib.new(CHECKSUM_ALGORITHM)
    for name, value in _leaves({k: v for k, v in state.items() if k != CHECKSUM_KEY}):
        if torch.is_tensor(value):
            h = hashlib.new(CHECKSUM_ALGORITHM)
            h.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
            flat = value.detach().cpu().contiguous().reshape(-1)
            h.update(flat.view(torch.uint8).numpy())
            out[name] = h.hexdigest()
        else:
            other.update(f"{name}={value!r};".encode())
    out[OTHER_FIELDS] = other.hexdigest()
    return out


def checksum_mismatches(saved: dict, now: dict) -> list[str]:
    """The names whose recorded and recomputed SHA-256 differ (or that one side lacks), sorted."""
    return sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))


def verify_checksums(state: dict, file: Path, flag: str | None = RESUME_FLAG) -> None:
    saved = state.get(CHECKSUM_KEY)
    if saved is None and state.get("format") == FORMAT:
        raise ValueError(
            f"checkpoint {file} has lost its checksum (every {FORMAT} file carries one): it was "
            f"altered after it was written{_alternatives(file, flag)}"
        )
    if saved is None:
        warnings.warn(
            f"{file} carries no checksum (written before pixeljit checked them); loaded unverified",
            stacklevel=3,
        )
        return
    bad = checksum_mismatches(saved, checksums(state))
    if bad:
        shown = ", ".join(bad[:MAX_LISTED]) + (" …" if len(bad) > MAX_LISTED else "")
        raise ValueError(
            f"checkpoint {file} is corrupt: checksum mismatch in {shown}{_alternatives(file, flag)}"
        )


# ---------------------------------------------------------------------------- save and load


def save_checkpoint(state: dict, folder: str | os.PathLike, step: int, milestone: bool) -> Path:
    """Write `latest.pt`; also keep `step-XXXXXXXXX.pt` when `milestone` (hard link if possible).
    Refuses a non-finite state and names a full disk; either way the previous files stay."""
    folder = Path(folder)
    bad = non_finite_tensors(state)
    if bad:
        shown = ", ".join(bad[:MAX_LISTED]) + (" …" if len(bad) > MAX_LISTED else "")
        raise NonFiniteStateError(
            f"refusing to write {folder / LATEST} at step {step}: non-finite values in {shown}"
        )
    full = {k: v for k, v in state.items() if k != "path"}
    full["format"] = FORMAT
    full[CHECKSUM_KEY] = checksums(full)
    try:
        latest = atomic_save(full, folder / LATEST)
        if milestone:
            _keep_milestone(latest, folder / MILESTONE_PATTERN.format(step=step))
    except (OSError, RuntimeError) as err:
        # torch's zip writer reports a full disk as RuntimeError ("unexpected pos …"), not
        # ENOSPC: any failed write is taken for a full disk when the folder lacks the room
        need = tensor_bytes(full) + SAVE_OVERHEAD_BYTES
        free = shutil.disk_usage(folder).free
        if getattr(err, "errno", None) not in NO_SPACE and free >= need:
            raise
        raise RuntimeError(
            f"no space left to write the step-{step} checkpoint in {folder}: it needs about "
            f"{need / 1e6:.1f} MB ({need} bytes) and {free / 1e6:.1f} MB are free; free some "
            f"space and run {resume_hint(folder)} (the previous {LATEST} is intact)"
        ) from None
    return latest


def _keep_milestone(latest: Path, keep: Path) -> None:
    tmp = temp_sibling(keep)
    try:
        try:
            os.link(latest, tmp)
        except OSError as err:
            if err.errno in NO_SPACE:
                raise
            shutil.copyfile(latest, tmp)
        os.replace(tmp, keep)
    finally:
        tmp.unlink(missing_ok=True)


def run_folder(path: str | os.PathLike) -> Path:
    """The run folder a `--resume` path names: the folder itself, or a checkpoint file's folder."""
    path = Path(path)
    return path if path.is_dir() else path.parent


def milestones(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if MILESTONE_RE.search(p.name))


def find_checkpoint(path: str | os.PathLike, flag: str | None = RESUME_FLAG) -> Path:
    """A checkpoint file from a run folder (its latest.pt) or a file; never a silent fresh start.
    `flag`: the command-line flag that named `path` (messages name it), None for a library call
    or a positional argument."""
    path = Path(path)
    named = f"{flag} {path}" if flag else f"checkpoint {path}"
    if not path.exists():
        raise FileNotFoundError(f"{named}: no such file or folder")
    if path.is_dir():
        if path.suffix == ".pt":
            raise ValueError(f"{named} is a folder, not a checkpoint file: name the run folder "
                             "that holds it, or a checkpoint file")  # fmt: skip
        latest = path / LATEST
        refuse_special_file(latest, f"{named}: its {LATEST}")
        if latest.is_file():
            return latest
        if latest.exists():
            raise ValueError(f"{named}: its {LATEST} is not a file: name a checkpoint file")
        found = milestones(path)
        if found:
            refuse_special_file(found[-1], f"{named}: its {found[-1].name}")
            return found[-1]
        raise FileNotFoundError(
            f"{named}: the folder holds no checkpoint ({LATEST} or step-*.pt); "
            "name a run folder or a checkpoint file"
        )
    refuse_special_file(path, named)  # opening a named pipe would wait for a writer forever
    return path


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths are one file (a milestone is a hard link to the latest.pt it was)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _alternatives(file: Path, flag: str | None = RESUME_FLAG) -> str:
    """'; … a milestone instead: …' naming the other step-*.pt beside `file`; with `flag` (the
    flag that named `file`) worded as that flag, else as a path to pass instead."""
    beside = [p for p in milestones(file.parent) if p.name != file.name]
    linked = [p.name for p in beside if same_file(p, file)]  # damaged with it
    others = [p for p in beside if p.name not in linked]
    note = f" ({linked[0]} is this file, hard-linked)" if linked else ""
    if not others:
        return f"; no other step-*.pt milestone beside it to load instead{note}"
    newest = others[::-1][:MAX_LISTED]
    use = f"e.g. {flag} {newest[0]}" if flag else f"pass {newest[0]} instead"
    return (
        f"; a milestone beside it may be intact: {use}"
        f" (milestones here: {', '.join(p.name for p in newest)}){note}"
    )


NOT_CHECKPOINTS = {  # files a user may pass for a training checkpoint, by what they hold
    ".yaml": "a config", ".yml": "a config", ".json": "a JSON file", ".jsonl": "a log",
    ".png": "an image", ".npz": "a NumPy archive",
    ".safetensors": "exported weights (no optimizer or loader state to continue from)",
}  # fmt: skip


def _check_not_another_kind(file: Path, flag: str | None) -> None:
    """Refuse, by its name, a file that is not a training checkpoint (`--resume run/config.yaml`
    was told the file "may be truncated")."""
    kind = NOT_CHECKPOINTS.get(file.suffix.lower())
    if kind is None:
        return
    named = f"{flag} {file}" if flag else f"checkpoint {file}"
    beside = file.parent / LATEST
    fix = (f"pass its folder {file.parent} (it holds {LATEST})" if beside.is_file()
           else f"pass a run folder or its {LATEST} / step-*.pt")  # fmt: skip
    raise ValueError(f"{named} is {kind}, not a training checkpoint: {fix}")


def load_checkpoint(path: str | os.PathLike, flag: str | None = RESUME_FLAG) -> dict:
    """A training checkpoint (run folder or file), its zip layout bounded before `torch.load` reads
    it and its checksums verified. `flag`: as for `find_checkpoint` (messages name it)."""
    file = find_checkpoint(path, flag)
    _check_not_another_kind(file, flag)
    try:
        check_torch_zip(file)  # a compressed or oversized member is refused before torch.load
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):  # to tell an authors' file
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"could not read checkpoint {file} ({torch_load_problem(err)})"
            f"{_alternatives(file, flag)}"
        ) from None
    entries = _authors_entries(state)
    if entries:  # e.g. checkpoint-last.pth renamed x.pt: loaded by its name, told so first
        raise ValueError(
            f"{file} is an authors' checkpoint (it holds {', '.join(entries)}), not a pixeljit "
            f"training checkpoint: rename it to {CHECKPOINT_FILENAME} (sample / eval / convert "
            "load it by that name, or its folder), or load it with pixeljit.load_reference in "
            "Python"
        )
    if not isinstance(state, dict) or state.get("format") not in (FORMAT, UNCHECKED_FORMAT):
        raise ValueError(
            f"{file} is not a pixeljit training checkpoint: an authors' checkpoint loads when "
            f"named {CHECKPOINT_FILENAME} (or its folder) in sample / eval / convert, or "
            "with pixeljit.load_reference in Python"
        )
    verify_checksums(state, file, flag)
    _check_class_names(state, file)
    state["path"] = str(file)
    return state


def _authors_entries(state) -> list[str]:
    """The entries that make `state` (a dict with no pixeljit format) an authors' checkpoint:
    their weight sets ('model', 'model_ema1', 'model_ema2', keys prefixed 'net.') and the
    argparse options of their training ('args'); [] for none."""
    if not isinstance(state, dict) or "format" in state:
        return []
    found = [
        entry
        for entry in WEIGHT_ENTRIES
        if isinstance(state.get(entry), dict)
        and any(isinstance(k, str) and k.startswith(KEY_PREFIX) for k in state[entry])
    ]
    if isinstance(state.get("args"), SAFE_GLOBALS):  # only their files hold a Namespace
        found.append("args")
    return found


def _check_class_names(state: dict, file: Path) -> None:
    """class_names: absent, or a list of distinct strings, no more than the model's classes (or,
    for an unconditional model, than a packed set may declare)."""
    names = state.get("class_names")
    if names is None:
        return
    config = state.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    classes = model.get("num_classes") if isinstance(model, dict) else None
    bound = classes if isinstance(classes, int) and classes > 0 else MAX_CLASS_NAMES
    if (
        not isinstance(names, list)
        or not all(isinstance(n, str) for n in names)
        or len(names) > bound
    ):
        count = len(names) if isinstance(names, list) else type(names).__name__
        raise ValueError(
            f"checkpoint {file}: class_names must be a list of at most {bound} strings (the "
            f"model's classes), got {count} entries; the file was altered or is not pixeljit's"
        )
    check_class_names(f"checkpoint {file}", names)  # distinct, as every other loader has them


ABSENT = "<absent>"  # a field one of two compared configs lacks


def config_changes(
    saved: dict, current: dict, prefix: str = ""
) -> list[tuple[str, object, object]]:
    """(dotted name, saved value, current value) of each field whose value differs between two
    nested config dicts (ABSENT for a field one side lacks), sorted by name within a section."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, ABSENT), current.get(key, ABSENT)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, name + ".")
        elif a != b:
            out.append((name, a, b))
    return out


def diff_configs(saved: dict, current: dict) -> list[str]:
    """'name: checkpoint A vs now B' for each field `config_changes` finds."""
    return [
        f"{name}: checkpoint {a!r} vs now {b!r}" for name, a, b in config_changes(saved, current)
    ]
