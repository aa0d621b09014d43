"""Writing a hub folder (the layout and its reading: `checkpoints.hub`): config.json from a loaded
model, the model card (`hub_card`), the weights and the sample grid, as one new folder that
appears whole or not at all, or (with `overwrite`) over the files of an earlier export.
"""

from __future__ import annotations

import json
import os
import shutil
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
from pixeljit.files.atomic import atomic_write, atomic_write_text, temp_sibling

# folder kinds that loading reads before a hub folder's config.json (`load.folder_kind`)
SHADOWING = {"run": "a training run", "authors": "an authors' checkpoint"}


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
    """Refuse a file, a folder that loading reads as something else (a run, an authors'
    checkpoint), or a non-empty folder without `overwrite` (nothing is created). `flags`:
    name the command line's flags (--hub, --overwrite) instead of the arguments."""
    out = Path(out)
    named = f"--hub {out}" if flags else f"hub folder {out}"
    if out.exists() and not out.is_dir():
        raise ValueError(f"{named} is a file: pass a folder")
    shadowing = folder_kind(out) if out.is_dir() else None
    if shadowing in SHADOWING:  # loading the folder would read that, never the export
        raise ValueError(
            f"{named} holds {SHADOWING[shadowing]}: a hub folder there would never be loaded "
            f"(the {shadowing} checkpoint is); choose another folder"
        )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        how = "--overwrite" if flags else "overwrite=True"
        raise ValueError(
            f"{named} is not empty: choose a new folder, or pass {how} to replace "
            f"its {', '.join(HUB_FILES)}"
        )
    return out


def write_hub_folder(
    model: TrainedModel,
    out: str | os.PathLike,
    extras: CardExtras | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` as a hub folder (see the module doc). A new (or empty) folder appears
    whole or not at all; with `overwrite` each of `HUB_FILES` in it is replaced atomically (a
    samples.png the new card does not show is removed) and other files are left alone."""
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

    def write_into(folder: Path) -> None:
        # the file alone loads as the folder; replaced only under overwrite (checked above)
        export_safetensors(model, folder / WEIGHTS_NAME, overwrite=True)
        atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
        if extras.grid is not None:
            _copy(extras.grid, folder / GRID_NAME)
        else:
            (folder / GRID_NAME).unlink(missing_ok=True)
        atomic_write_text(folder / CARD_NAME, card)

    if out.is_dir() and any(out.iterdir()):
        write_into(out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_sibling(out, "staging")
    staging.mkdir()
    try:
        write_into(staging)  # a plain mkdir: the folder has the usual umask-derived mode
        os.replace(staging, out)  # onto a missing or empty folder: the whole folder at once
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(out)) from err
    finally:
        if staging.exists():
            shutil.rmtree(staging)  # our own hidden staging folder, never the user's
    return out


def _copy(src: Path, dst: Path) -> None:
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
