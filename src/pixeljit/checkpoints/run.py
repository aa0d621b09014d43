"""Training checkpoints: atomic, checksummed save, `latest` plus kept milestones, strict resume.

A checkpoint is one `torch.save` file holding plain tensors and containers only (loadable with
`weights_only=True`): model, every EMA, optimizer, step / images seen, data-order position, RNG
states, the fully resolved config, the training revision of the code that trained it
(`training.revisions`: what a resume under newer code changes). Writes go to a temporary file
in the same folder, then `os.replace`, so a crash or a full disk never leaves a half-written
`latest.pt`. A state holding a non-finite float is never written. Each file carries a SHA-256
of every tensor (its name, dtype, shape and bytes) and one of everything else, checked on load,
so a flipped byte that `torch.load` would read silently is caught and named.
"""

from __future__ import annotations

import gc
import os
import re
import shlex
import shutil
import traceback
import warnings
from pathlib import Path

import torch

from pixeljit.checkpoints.authors import CHECKPOINT_FILENAME, KEY_PREFIX, WEIGHT_ENTRIES
from pixeljit.checkpoints.checksums import (
    CHECKSUM_KEY,
    OTHER_FIELDS,
    checksum_mismatches,
    checksums,
    non_finite_tensors,
    tensor_bytes,
)
from pixeljit.checkpoints.metadata import check_class_names
from pixeljit.checkpoints.weights import (
    SAFE_GLOBALS,
    check_torch_zip,
    refuse_special_file,
    torch_load_problem,
)
from pixeljit.files.atomic import NO_SPACE, atomic_write, sync_file, temp_sibling
from pixeljit.launch import launch_world_size

LATEST = "latest.pt"
MILESTONE_PATTERN = "step-{step:09d}.pt"
MILESTONE_RE = re.compile(r"step-(\d{9})\.pt$")
FORMAT = "pixeljit.train/2"  # /2: every file carries its checksum (required on load)
UNCHECKED_FORMAT = "pixeljit.train/1"  # written before checksums: loads with a warning
MAX_CLASS_NAMES = 1 << 20  # as many as a packed set may declare (data.packed.MAX_CLASSES)
SAVE_OVERHEAD_BYTES = 1 << 20  # pickled config, names, zip headers (an estimate)
MAX_LISTED = 5
RESUME_FLAG = "--resume"  # the flag of `pixeljit train` that names a checkpoint to continue
RESTART_FLAG = "--restart"  # the flag of `pixeljit train` / `demo` that moves an old run aside


class NonFiniteStateError(ValueError):
    """A state to save holds NaN or ±inf (the previous checkpoint is kept)."""


def _under_torchrun() -> bool:
    return launch_world_size() > 1


def resume_hint(folder: str | os.PathLike, command: str | None = None) -> str:
    """How a user continues the run in `folder`: `command`, the resume command of the verb that
    was run (default `pixeljit train --resume FOLDER`), or under torchrun (WORLD_SIZE > 1) their
    own torchrun command with it (a single process would not resume a multi-rank run exactly)."""
    command = command or f"pixeljit train {RESUME_FLAG} {shlex.quote(str(folder))}"
    if _under_torchrun():
        return f"the same `torchrun …` launch of `{command}`"
    return f"`{command}`"


def restart_hint(folder: str | os.PathLike, command: str | None = None) -> str:
    """How a user starts the run in `folder` again when it holds no checkpoint: `command`, the
    verb's own fresh command with --restart (default: the `pixeljit train` command again)."""
    if command is not None:
        return f"`{command}`"
    aside = f"moves this run's files aside to a new sibling {Path(folder).name}.old-<time>"
    launch = "`torchrun …` launch" if _under_torchrun() else "`pixeljit train …` command"
    return f"the same {launch} plus {RESTART_FLAG} (it {aside}; nothing is deleted)"


def checkpoint_step(file: str | os.PathLike) -> int | None:
    """The step a checkpoint file records, read without loading its tensors (memory-mapped);
    None when it cannot be read."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # named without its step: the message that asks is about another file
        return None
    step = state.get("step") if isinstance(state, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def way_on(folder: str | os.PathLike, resume: str | None = None, restart: str | None = None) -> str:
    """What a run stopped by a failed write leaves in `folder`, and the command that goes on: its
    last checkpoint (named with its step) continued by `resume`, else starting again by `restart`
    (the verb's own commands, for `resume_hint` / `restart_hint`)."""
    try:
        kept = find_checkpoint(folder, None)
    except (OSError, ValueError):
        kept = None
    if kept is None:
        return (f"no checkpoint of this run was written, so it cannot be resumed: start it "
                f"again with {restart_hint(folder, restart)}")  # fmt: skip
    step = checkpoint_step(kept)
    at = f"its step {step} ({kept.name})" if step is not None else kept.name
    hint = resume_hint(folder, resume)
    return f"the last checkpoint in {folder} is kept: continue with {hint} from {at}"


class CheckpointSpaceError(RuntimeError):
    """No space to write a checkpoint (the files written before stay as they were). The message
    says what the folder still holds and how to go on, worded for `pixeljit train`; `advice`
    words it for another verb's commands."""

    def __init__(self, folder: Path, step: int, name: str, need: int, free: int):
        self.folder, self.step, self.name, self.need, self.free = folder, step, name, need, free
        super().__init__(self.advice())

    def advice(self, resume: str | None = None, restart: str | None = None) -> str:
        return (
            f"no space left to write the step-{self.step} checkpoint {self.name} in {self.folder}: "
            f"it needs about {self.need / 1e6:.1f} MB ({self.need} bytes) and "
            f"{self.free / 1e6:.1f} MB are free; free some space; "
            f"{way_on(self.folder, resume, restart)}"
        )


def _release_failed_write(err: BaseException) -> None:
    """Drop what the frames of a failed write still hold: torch's zip writer keeps its (already
    unlinked) temporary file open while the exception lives, so its bytes still count as used."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        traceback.clear_frames(err.__traceback__)
        err = err.__cause__ or err.__context__
    gc.collect()  # a file held in a reference cycle


def atomic_save(obj, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def verify_checksums(
    state: dict, file: Path, flag: str | None = RESUME_FLAG, tensors: bool = True
) -> None:
    """`tensors=False`: only the fields other than tensors (config, step, EMA decays)."""
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
    now = checksums(state, tensors)
    if not tensors and isinstance(saved, dict):
        saved = {OTHER_FIELDS: saved.get(OTHER_FIELDS)}
    bad = checksum_mismatches(saved, now)
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
    target = folder / LATEST
    try:
        latest = atomic_save(full, target)
        if milestone:
            target = folder / MILESTONE_PATTERN.format(step=step)
            _keep_milestone(latest, target)
    except (OSError, RuntimeError) as err:
        # torch's zip writer reports a full disk as RuntimeError ("unexpected pos …"), not
        # ENOSPC: any failed write is taken for a full disk when the folder lacks the room
        _release_failed_write(err)  # before the free space is measured
        need = tensor_bytes(full) + SAVE_OVERHEAD_BYTES
        free = shutil.disk_usage(folder).free
        if getattr(err, "errno", None) not in NO_SPACE and free >= need:
            raise
        raise CheckpointSpaceError(folder, step, target.name, need, free) from None
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
            sync_file(tmp)
        os.replace(tmp, keep)
        sync_file(keep.parent)
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


def load_checkpoint(
    path: str | os.PathLike, flag: str | None = RESUME_FLAG, tensors: bool = True
) -> dict:
    """A training checkpoint (run folder or file), its zip layout bounded before `torch.load` reads
    it and its checksums verified. `flag`: as for `find_checkpoint` (messages name it).
    `tensors=False` reads what is not a tensor (config, step, EMA decays) and verifies it; the
    tensors are mapped from the file, neither read nor verified (a full load checks them): for
    callers that only look, as a resume's config is read before the run loads the checkpoint."""
    file = find_checkpoint(path, flag)
    _check_not_another_kind(file, flag)
    try:
        check_torch_zip(file)  # a compressed or oversized member is refused before torch.load
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):  # to tell an authors' file
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=not tensors)
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
    verify_checksums(state, file, flag, tensors)
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
