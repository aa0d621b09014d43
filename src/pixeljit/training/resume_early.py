"""The checks of a resume made before its training data is opened: packing a raw source takes
minutes for a large set, and a resume that `check_resume` will refuse once the data is packed is
refused before any of that work where the refusal is already known.

What is known before packing: the recipe as given (`check_recipe_before_data`), and the classes
of an image folder, its sub-folder names (`folder_class_names`, one listing of its top level).
Against the checkpoint those tell: a changed number of classes changes model.num_classes (a
recipe change, always refused), and renamed classes change the data's fingerprint (an inexact
resume, refused unless allowed), as `check_resume` finds after packing. The checkpoint alone
tells whether a change of the training code since it was written touches its run
(`revisions.revision_changes`: inexact, refused unless allowed).
"""

from __future__ import annotations

import os
from pathlib import Path

from pixeljit.data.folders import folder_class_names
from pixeljit.data.open import BUILTIN_SOURCES
from pixeljit.data.shards import MANIFEST
from pixeljit.data.text import utf8_text
from pixeljit.training.config import TrainConfig
from pixeljit.training.config_io import to_dict
from pixeljit.training.resume import (
    ALLOW_FLAG,
    DATA_KEY,
    check_recipe_before_data,
    inexact_refusal,
)
from pixeljit.training.revisions import planned_steps, revision_changes
from pixeljit.training.setup import model_classes


def source_class_names(cfg: TrainConfig) -> list[str] | None:
    """The class names a packing of `data.source` will have, where known without packing it:
    an image folder's (see `folder_class_names`); None for a built-in source, a packed folder
    (opened as it is, without packing) or a folder whose classes only its walk tells."""
    source = cfg.data.source
    if source in BUILTIN_SOURCES or not os.path.isdir(source):
        return None
    if (Path(source) / MANIFEST).is_file():  # a packed folder, read as it is
        return None
    return folder_class_names(source, cfg.data.split)


def check_resume_before_data(saved: dict, cfg: TrainConfig, allow_inexact: bool) -> None:
    """Refuse a resume of `saved` (a checkpoint dict) with `cfg` that the checks after packing
    would refuse, as far as it is known before the data is opened (see the module doc)."""
    path = saved["path"]
    names = source_class_names(cfg)
    known = {}
    if names is not None:
        classes = model_classes(cfg, len(names))
        asked_of_unlabelled = cfg.data.conditional and cfg.data.num_classes and not classes
        if not asked_of_unlabelled:  # that has its own refusal, once the data is opened
            known[("model", "num_classes")] = classes
    check_recipe_before_data(saved, to_dict(cfg), path, known)
    if allow_inexact:
        return
    was = saved.get("class_names")
    known_data = names is not None and saved.get(DATA_KEY) is not None and isinstance(was, list)
    if known_data and names != was:  # the fingerprint holds the class names: the data is another
        raise ValueError(
            f"resuming {path} with a change would not continue the run bit-exactly: the "
            f"training data (--data {utf8_text(cfg.data.source)}) has classes {names}, but the "
            f"run was trained on classes {was}; resume on the run's data (its classes, in that "
            f"order), or pass {ALLOW_FLAG} to continue anyway"
        )
    # as far as the checkpoint tells (its precision, its data's size for the run's length)
    revised = revision_changes(saved, None, planned_steps(saved, cfg.optim.steps, cfg.optim.epochs))
    if revised:
        raise ValueError(inexact_refusal(path, saved, [], revised))
