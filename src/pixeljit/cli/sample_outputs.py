"""`pixeljit sample --out`: the outputs by kind (a .png grid, a .npz, a folder of numbered PNGs),
each checked before any work: writable, not clobbering a user's file, and no file output inside
a folder output (the folder is one image set, which `pixeljit eval --images` reads whole).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pixeljit.cli.checks import check_only_our_set, check_output, check_outputs_apart

DEFAULT_OUT = "samples.png"
FOLDER_MARKS = tuple({"/", os.sep})  # an --out ending in one of these is a folder


@dataclass(frozen=True)
class Outputs:
    grids: tuple[Path, ...] = ()
    npzs: tuple[Path, ...] = ()
    folders: tuple[Path, ...] = ()


def parse_outputs(paths: list[str] | None, overwrite: bool = False) -> Outputs:
    """The --out paths by kind, each checked writable (and not clobbering) before any work; a
    .png / .npz inside (or on the way to) an --out folder is refused."""
    grids, npzs, folders = [], [], []
    seen = set()
    for raw in paths or [DEFAULT_OUT]:
        path = Path(raw)
        as_folder = raw.endswith(FOLDER_MARKS)  # 'run.v1/': a folder, whatever its suffix
        if path.resolve() in seen:
            raise ValueError(f"--out {raw} is given twice: name each output once")
        seen.add(path.resolve())
        suffix = "" if as_folder else path.suffix.lower()
        bare = path.name.lower() in (".png", ".npz")  # no suffix to Python: a hidden folder
        if bare and not as_folder and not path.is_dir():
            raise ValueError(
                f"--out {raw} has nothing before {path.name}: name the file (e.g. "
                f"{path.with_name('samples' + path.name)}), or write {raw}/ for a folder"
            )
        if suffix == ".png":
            grids.append(check_output("--out", path, False, overwrite, "--overwrite"))
        elif suffix == ".npz":
            npzs.append(check_output("--out", path, False, overwrite, "--overwrite"))
        elif suffix and not path.is_dir():
            raise ValueError(
                f"--out {raw}: use a .png (grid), a .npz (arrays) or a folder (one PNG per image); "
                f"for a folder with a dot in its name, write {raw}/ (or create it first)"
            )
        else:
            check_only_our_set("--out", path)  # what --overwrite would not make right
            folders.append(check_output("--out", path, True, overwrite, "--overwrite"))
    named = lambda paths: [("--out", p) for p in paths]  # noqa: E731
    check_outputs_apart(named(grids + npzs), named(folders))
    return Outputs(tuple(grids), tuple(npzs), tuple(folders))


def check_grid_flags(args, outputs: Outputs) -> None:
    """--ncols and --scale lay out a .png grid: refused when no --out is one."""
    if outputs.grids:
        return
    for flag, value in (("--ncols", args.ncols), ("--scale", args.scale)):
        if value is not None:
            raise ValueError(f"{flag} lays out a .png grid, and no --out is one: add --out "
                             f"GRID.png or drop {flag}")  # fmt: skip
