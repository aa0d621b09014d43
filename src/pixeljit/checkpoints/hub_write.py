"""Writing a hub folder (the layout and its reading: `checkpoints.hub`): config.json from a loaded
model, the model card (`hub_card`), the weights and the sample grid, as one new folder that
appears whole or not at all, or (with `overwrite`) over the files of an earlier export, moved in
as one journaled commit (`files.staged_commit`): a Ctrl-C or SIGTERM during the renames is held
until they are done, and the rest of an export a killed process was moving in is moved in by the
next export into the folder (`finish_interrupted_export`, which loading should call too). The
staging folders of killed exports (inside the folder, or beside it for a new one) are removed
at the start of every export.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
from pathlib import Path

from pixeljit.checkpoints.hub import (
    CARD_NAME,
    CONFIG_NAME,
    GRID_NAME,
    HUB_FILES,
    HUB_FORMAT,
    LIBRARY_NAME,
    MODEL_TYPE,
    WEIGHTS_NAME,
    read_hub_config,
)
from pixeljit.checkpoints.hub_card import DEFAULTS_SOURCE, CardExtras, model_card
from pixeljit.checkpoints.load import (
    TrainedModel,
    export_safetensors,
    folder_kind,
    model_size_name,
)
from pixeljit.checkpoints.weights import check_finite
from pixeljit.diffusion.sampler import SamplerConfig
from pixeljit.files import staged_commit
from pixeljit.files.atomic import atomic_write, atomic_write_text, sync_file, temp_sibling
from pixeljit.files.staged_commit import MoveFailed, deliver, held_signals

# folder kinds that loading reads before a hub folder's config.json (`load.folder_kind`)
SHADOWING = {"run": "a training run", "authors": "an authors' checkpoint"}
STAGING_NAME = "hub-export"  # .hub-export.staging-PID-TOKEN: the new files, before they move in
_STAGING = re.compile(rf"\.{STAGING_NAME}\.staging-(\d+)-[0-9a-f]{{8}}")  # inside OUT
# what a staging folder may hold: the export's files, and the atomic writes' temporaries of them
_STAGED = re.compile(rf"\.?({'|'.join(map(re.escape, HUB_FILES))})(\.tmp-.+)?")


def hub_config(model: TrainedModel, sampler: SamplerConfig, sampler_source: str) -> dict:
    """config.json of `model` (see the module doc)."""
    return {
        "format": HUB_FORMAT,
        "library_name": LIBRARY_NAME,
        "model_type": MODEL_TYPE,
        "architecture": model.net.config.to_dict(),
        "objective": model.objective_metadata(),
        "class_names": list(model.class_names) if model.class_names else None,
        "weights": {"name": model.weights, "ema_decay": model.ema_decay, "step": model.step},
        "sampler": sampler.as_json(),
        "sampler_source": sampler_source,
    }


def check_hub_output(out: str | os.PathLike, overwrite: bool = False, flags: bool = False) -> Path:
    """Refuse, before anything is created or written: a symbolic link, a file, a folder that
    loading reads as something else (a run, an authors' checkpoint), a folder holding a folder (or
    a link, or a special file) where the export writes a file, a non-empty folder without
    `overwrite`, and (even with it) files of the export's names in a folder that is not an
    earlier export (its config.json no pixeljit hub config). `flags`: name the command line's
    flags (--hub, --overwrite) instead of the arguments. First, an export a killed process was
    moving into `out` is finished, and killed exports' staging folders removed (`tidy_hub_output`):
    what is checked is what the folder holds."""
    out = Path(out)
    named = f"--hub {out}" if flags else f"hub folder {out}"
    how = "--overwrite" if flags else "overwrite=True"
    if out.is_symlink():  # followed, the export would land (or replace files) elsewhere
        target = os.readlink(out)
        if not out.exists():
            raise ValueError(f"{named} is a symbolic link to {target}, which does not exist: "
                             "name a real folder")  # fmt: skip
        raise ValueError(f"{named} is a symbolic link (to {target}): name the folder itself "
                         f"({os.path.realpath(out)}) or another folder")  # fmt: skip
    if out.exists() and not out.is_dir():
        raise ValueError(f"{named} is a file: pass a folder")
    tidy_hub_output(out)
    shadowing = folder_kind(out) if out.is_dir() else None
    if shadowing in SHADOWING:  # loading the folder would read that, never the export
        raise ValueError(
            f"{named} holds {SHADOWING[shadowing]}: a hub folder there would never be loaded "
            f"(the {shadowing} checkpoint is); choose another folder"
        )
    if not out.is_dir() or not any(out.iterdir()):
        return out
    odd = [f"{kind} {name}" for name in HUB_FILES if (kind := _not_a_file(out / name))]
    if odd:
        them = "them" if len(odd) > 1 else "it"
        raise ValueError(f"{named} holds {_join(odd)}, where the export writes a file of that "
                         f"name: move {them} out of {out}, or choose another folder")  # fmt: skip
    present = [name for name in HUB_FILES if (out / name).exists()]
    problem = _not_an_export(out)
    if problem is None and not overwrite:
        raise ValueError(f"{named} is not empty: it holds an earlier export ({_join(present)}); "
                         f"choose a new folder, or pass {how} to replace it")  # fmt: skip
    if problem is not None and present:
        raise ValueError(
            f"{named} is not a pixeljit hub export ({problem}) and holds {_join(present)}, "
            f"which the export would replace: {how} replaces only an earlier export's files; "
            "choose a new or empty folder"
        )
    if problem is not None and not overwrite:
        raise ValueError(f"{named} is not empty: choose a new folder, or pass {how} to add the "
                         f"export's {_join(HUB_FILES)} beside the files there")  # fmt: skip
    return out


def tidy_hub_output(out: Path) -> None:
    """Before an export into `out`: the rest of an export a killed process was moving in moved
    in (`finish_interrupted_export`), and the staging folders of killed exports that moved
    nothing removed, inside `out` and beside it (`.OUT.staging-PID-TOKEN`, a new folder's)."""
    beside = re.compile(rf"\.{re.escape(out.name)}\.staging-(\d+)-[0-9a-f]{{8}}")
    staged_commit.sweep_unfinished(out.parent, beside, _STAGED)
    if out.is_dir() and not out.is_symlink():
        finish_interrupted_export(out, reading=False)
        staged_commit.sweep_unfinished(out, _STAGING, _STAGED)


def finish_interrupted_export(folder: str | os.PathLike, reading: bool = True) -> int:
    """Move into `folder` the rest of an export a killed process was moving in (over an earlier
    one: its staging folder holds the commit's journal), saying so in a warning; returns how
    many were finished. `reading`: for a loader of the folder, which should call this before it
    reads config.json (the weights may be new and the config the earlier one). OSError naming
    the fix when `folder` cannot take the files."""
    then = "before loading it" if reading else "before writing the new one"
    what = ("an export", "export", "export again")
    return staged_commit.finish_with_warning(Path(folder), _STAGING, _STAGED, what, then)


def _not_a_file(path: Path) -> str:
    """What stands at `path` where the export writes a file ('' when nothing, or a file)."""
    if path.is_symlink():
        return "a symbolic link"
    if path.is_dir():
        return "a folder"
    return "a special file" if path.exists() and not path.is_file() else ""


def _not_an_export(folder: Path) -> str | None:
    """Why `folder` is not an earlier export (read as loading reads it), None when it is."""
    if not (folder / CONFIG_NAME).exists():
        return f"it holds no {CONFIG_NAME}"
    try:
        read_hub_config(folder / CONFIG_NAME)
    except (OSError, ValueError):
        return f"its {CONFIG_NAME} is not a pixeljit hub config"
    return None


def _join(names) -> str:
    return ", ".join(names)


def write_hub_folder(
    model: TrainedModel,
    out: str | os.PathLike,
    extras: CardExtras | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` as a hub folder (see the module doc). A new (or empty) folder appears
    whole or not at all. With `overwrite`, an earlier export's files are replaced (its
    samples.png removed when the new card shows no grid) and other files are left alone: every
    new file is written into a hidden staging folder inside `out` first and moved into place
    only once all are written, so a failure while writing leaves the earlier export as it was."""
    out = check_hub_output(out, overwrite)
    extras = extras or CardExtras()
    check_finite(model.net.state_dict(), model.description or "model")
    sampler = model.sampler or SamplerConfig()
    source = extras.sampler_source or (
        "the source's settings" if model.sampler else DEFAULTS_SOURCE
    )
    config = hub_config(model, sampler, source)
    params = sum(p.numel() for p in model.net.parameters())
    card = model_card(config, params, extras, model_size_name(model.net.config))

    def write_into(folder: Path) -> None:  # a fresh folder of our own
        export_safetensors(model, folder / WEIGHTS_NAME)
        if extras.grid is not None:
            _copy(extras.grid, folder / GRID_NAME)
        atomic_write_text(folder / CARD_NAME, card)
        atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")

    in_place = out.is_dir() and any(out.iterdir())
    if not in_place:
        out.parent.mkdir(parents=True, exist_ok=True)
    # inside `out` when writing into it: the same file system, whatever is mounted where
    staging = temp_sibling(out / STAGING_NAME if in_place else out, "staging")
    staging.mkdir()  # a plain mkdir: the folder has the usual umask-derived mode
    held: list[int] = []  # a Ctrl-C or SIGTERM received while the files were moved in
    kept = False  # the staging folder, with the commit's journal, kept for the next export
    try:
        write_into(staging)
        if not in_place:
            os.replace(staging, out)  # onto a missing or empty folder: the whole folder at once
            sync_file(out.parent)
            return out
        own_grid = _not_an_export(out) is None and (out / GRID_NAME).is_file()
        stale = extras.grid is None and own_grid  # the earlier export's, of other weights
        with held_signals() as held:  # renames within one folder: nothing to fail on space
            staged_commit.commit(staging, out, _commit_steps(staging, stale))
    except MoveFailed as err:
        if err.step == 0:  # removing the earlier config.json: nothing was changed
            raise OSError(err.errno, err.strerror, str(out / CONFIG_NAME)) from err
        kept = True  # the folder holds no config.json (loading refuses it) until it is finished
        raise OSError(err.errno, f"moving the new export into {out} failed after {err.done} of "
                      f"{err.total} files ({err.strerror}: {err.filename}): the rest is kept in "
                      f"{staging.name} inside it, moved in by the next export into {out} once "
                      "this process has ended") from err  # fmt: skip
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(out)) from err
    finally:
        if staging.exists() and not kept:
            shutil.rmtree(staging)  # our own hidden staging folder, never the user's
    if held:
        deliver(held[0], f"stopped once the export was in place: {out}/ holds all of it")
    return out


def _commit_steps(staging: Path, stale_grid: bool) -> list[staged_commit.Step]:
    """The earlier config.json removed first and the new one moved in last, the earlier grid
    removed (`stale_grid`) before it: a folder a kill left half done holds no config.json, which
    loading refuses (it never loads new weights with the earlier config), until the next export
    into it (or a loader calling `finish_interrupted_export`) finishes it."""
    names = [n for n in HUB_FILES if n != CONFIG_NAME and (staging / n).exists()]
    steps = [(staged_commit.REMOVE, CONFIG_NAME), *staged_commit.moves(names)]
    if stale_grid:
        steps.append((staged_commit.REMOVE, GRID_NAME))
    return [*steps, (staged_commit.MOVE, CONFIG_NAME)]


def _copy(src: Path, dst: Path) -> None:
    """Copy the file at `src`, never through a symbolic link (one swapped in since it was
    checked is refused, not followed: what is copied gets published)."""
    try:
        fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:  # ELOOP: a link
        why = "a symbolic link is never published" if err.errno == errno.ELOOP else "not published"
        raise ValueError(f"{src} cannot be read as a plain file ({err.strerror}): {why}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError(f"{src} is not a regular file: it is not published")

        def copy(tmp: Path) -> None:
            with open(tmp, "wb") as to:
                shutil.copyfileobj(f, to)

        atomic_write(dst, copy)
