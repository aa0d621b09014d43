"""Writing a hub folder (the layout and its reading: `checkpoints.hub`): config.json from a loaded
model, the model card (`hub_card`), the weights and the sample grid, as one new folder that
appears whole or not at all, or (with `overwrite`) over the files of an earlier export.
"""

from __future__ import annotations

import errno
import json
import os
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
from pixeljit.files.atomic import atomic_write, atomic_write_text, process_alive, temp_sibling

# folder kinds that loading reads before a hub folder's config.json (`load.folder_kind`)
SHADOWING = {"run": "a training run", "authors": "an authors' checkpoint"}
STAGING_NAME = "hub-export"  # .hub-export.staging-PID-TOKEN: the new files, before they move in


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
    flags (--hub, --overwrite) instead of the arguments."""
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
    if in_place:
        _sweep_staging(out)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    # inside `out` when writing into it: the same file system, whatever is mounted where
    staging = temp_sibling(out / STAGING_NAME if in_place else out, "staging")
    staging.mkdir()  # a plain mkdir: the folder has the usual umask-derived mode
    try:
        write_into(staging)
        if not in_place:
            os.replace(staging, out)  # onto a missing or empty folder: the whole folder at once
            return out
        own_grid = _not_an_export(out) is None and (out / GRID_NAME).is_file()
        for name in HUB_FILES:  # renames within one folder: nothing left to fail on space
            if (staging / name).exists():
                os.replace(staging / name, out / name)
        if extras.grid is None and own_grid:  # the earlier export's: of other weights
            (out / GRID_NAME).unlink()
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(out)) from err
    finally:
        if staging.exists():
            shutil.rmtree(staging)  # our own hidden staging folder, never the user's
    return out


def _sweep_staging(out: Path) -> None:
    """Remove staging folders a killed earlier write into `out` left (its pid gone); nothing
    else: the exact name pattern, and only a real folder (no link)."""
    prefix = f".{STAGING_NAME}.staging-"
    for entry in out.iterdir():
        pid, _, token = entry.name[len(prefix) :].partition("-")
        if not (entry.name.startswith(prefix) and pid.isdigit() and len(token) == 8):
            continue
        if entry.is_dir() and not entry.is_symlink() and not process_alive(int(pid)):
            shutil.rmtree(entry)


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
