"""`pixeljit prepare SOURCE --size S --out DIR`: pack a data set for the training loader."""

from __future__ import annotations

import sys
from pathlib import Path

from pixeljit.cli.checks import counted
from pixeljit.data.folders import LAYOUTS, is_image_file
from pixeljit.data.image_types import ignored_summary
from pixeljit.data.prepare import KEYWORD_SOURCES, MAX_WORKERS, PrepareResult, prepare
from pixeljit.data.transforms import MAX_SIZE

_LIST_SKIPPED = 20  # how many skipped files to print (all are in the manifest)
_LIST_EMPTY = 10  # how many empty classes to name (all are in the manifest's class_counts)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="pack Fashion-MNIST, emoji or an image folder into memory-mappable shards",
        description=(
            "SOURCE is `fashion-mnist`, `emoji`, or a folder: ImageNet layout "
            "(root/[split/]class/*) for class-conditional, a flat folder for unconditional. "
            "Images get the ADM centre crop to SIZE x SIZE; alpha is composited on white."
        ),
    )
    p.add_argument("source", metavar="SOURCE", help="fashion-mnist | emoji | PATH")
    p.add_argument(
        "--size", type=int, required=True, help=f"output resolution, 1..{MAX_SIZE} pixels"
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder (created atomically; never the source or inside it)",
    )
    p.add_argument(
        "--split", default=None, help="fashion-mnist: train (default) or test; folders: sub-folder"
    )
    p.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=None,
        help="1 (grey) or 3 (RGB); default 1 for fashion-mnist, 3 otherwise",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="folders and emoji: skip unreadable images (listed) instead of failing",
    )
    p.add_argument("--data-dir", type=Path, default=None, help="folder with Fashion-MNIST files")
    p.add_argument(
        "--download", action="store_true", help="fetch Fashion-MNIST if missing (checksummed)"
    )
    p.add_argument("--font", type=Path, default=None, help="NotoColorEmoji.ttf for emoji")
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="folders: how to read them")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="keep only the first N (>= 1) images in packing order (a folder's classes one "
        "after another, so a small N can leave classes empty: they are named)",
    )
    p.add_argument(
        "--images-per-shard", type=int, default=None, help="default: ~1 GiB shards (max 16 GiB)"
    )
    p.add_argument(
        "--workers", type=int, default=0, help=f"folders: decoding processes, 0..{MAX_WORKERS}"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a packed set pixeljit wrote in --out (any other file there is refused)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    result = prepare(
        args.source,
        args.size,
        args.out,
        split=args.split,
        channels=args.channels,
        skip_bad=args.skip_bad,
        data_dir=args.data_dir,
        download=args.download,
        font_path=args.font,
        layout=args.layout,
        limit=args.limit,
        images_per_shard=args.images_per_shard,
        num_workers=args.workers,
        overwrite=args.overwrite,
        progress=True,
    )
    c, h, w = result.image_shape
    print(
        f"packed {counted(result.count, 'image')} of {c}x{h}x{w} in "
        f"{counted(result.num_classes, 'class', 'classes')} into "
        f"{result.out_dir} ({result.seconds:.1f} s)"
    )
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s) (all listed in the manifest):")
        for bad in result.skipped[:_LIST_SKIPPED]:
            print(f"  {bad.path}: {bad.reason}")
    if result.ignored:
        print(ignored_summary(result.ignored))
    warning = empty_classes_warning(result, args.limit)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    note = flat_subfolders_note(args)
    if note:
        print(f"note: {note}", file=sys.stderr, flush=True)
    return 0


def empty_classes_warning(result: PrepareResult, limit: int | None) -> str | None:
    """The warning for declared classes that got no image (None: every class has some)."""
    empty = result.empty_classes
    if not empty:
        return None
    names = ", ".join(empty[:_LIST_EMPTY])
    if len(empty) > _LIST_EMPTY:
        names += f" and {len(empty) - _LIST_EMPTY} more"
    causes = []
    if limit is not None:
        causes.append(
            f"--limit {limit} keeps the first {limit} images in packing order (an image folder's "
            "classes one after another): pass a larger --limit, or none, to reach every class."
        )
    if result.skipped:
        causes.append("--skip-bad may have skipped every image of a class (listed above).")
    return " ".join(
        [
            f"{len(empty)} of {result.num_classes} classes got no images: {names}. The set still "
            f"declares all {result.num_classes} (labels keep their meaning), so a model trained "
            "on it never sees these classes and samples them from untrained embeddings.",
            *causes,
        ]
    )


def flat_subfolders_note(args) -> str | None:
    """With --layout flat, a folder of sub-folders packs as one unconditional class: say so."""
    if args.layout != "flat" or args.source in KEYWORD_SOURCES:
        return None
    base = Path(args.source) / (args.split or "")
    entries = [p for p in base.iterdir() if not p.name.startswith(".")]
    subdirs = [p for p in entries if p.is_dir()]
    if not subdirs or any(p.is_file() and is_image_file(p) for p in entries):
        return None
    return (
        f"--layout flat packed the images in the {len(subdirs)} sub-folder(s) of {base} as one "
        "unconditional class (no labels); to use the sub-folders as classes, pack it again "
        "with --layout classes (or auto, the default) and --overwrite"
    )
