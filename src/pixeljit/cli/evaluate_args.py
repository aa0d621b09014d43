"""`pixeljit eval`'s flags checked before anything is loaded: which flags each mode takes (a flag
that would do nothing is refused by name), the generation defaults, numbers and output paths."""

from __future__ import annotations

import math
from pathlib import Path

from pixeljit.cli.checks import (
    MAX_IMAGES,
    check_device,
    check_float,
    check_int,
    check_no_stale_pngs,
    check_not_an_input,
    check_only_our_set,
    check_output,
    check_outputs_apart,
    check_seed,
    repeated,
)
from pixeljit.cli.sample import check_authors_only
from pixeljit.cli.sample_outputs import FOLDER_MARKS
from pixeljit.cli.sampler_args import AUTO_AMP, FLAGS
from pixeljit.data.transforms import MAX_SIZE
from pixeljit.metrics import EXTRACTORS
from pixeljit.metrics.image_sources import has_npz_suffix
from pixeljit.metrics.score import ScoreConfig

METRIC_NAMES = ("fd", "kid", "is", "pr")
CHANNELS = (1, 3)
AUTO_EXTRACTOR = "auto"  # a --ref file's own; else fmnist-cnn for grey 10-class, effnet-lite0
EXTRACTOR_CHOICES = (*EXTRACTORS, AUTO_EXTRACTOR)
JSON_SUFFIX = ".json"
DEFAULT_NUM, DEFAULT_SEED, DEFAULT_BATCH = 10000, 0, 100  # generation (--checkpoint)
# the count's flag as messages name it: in full, since under torchrun its alias --num is taken
# by torchrun's own parser as an abbreviation of its --numa-binding
NUM_FLAG = "--num-images"
# flags that only generating images uses (attribute → flag): refused with --images / --make-ref
GENERATION_FLAGS = {
    "num": NUM_FLAG, "weights": "--weights", **FLAGS, "fast": "--fast", "amp": "--amp",
    "attention": "--attention",
    "seed": "--seed", "batch_size": "--batch-size", "save_images": "--save-images",
    "sweep_cfg": "--sweep-cfg", "emas": "--emas", "in_context_start": "--in-context-start",
}  # fmt: skip
UNSET_VALUES = (None, False)  # argparse's defaults of those flags (--amp's: AUTO_AMP)


def is_unset(attr: str, value) -> bool:
    """Whether generation flag `attr` holds its parser default: None or False by identity (0
    and 0.0 equal False, so --seed 0 and --cfg 0 were taken as not given), --amp's AUTO_AMP."""
    if attr == "amp":
        return value == AUTO_AMP
    return any(value is unset for unset in UNSET_VALUES)


MAX_SWEEP_SCALES = 1000  # --sweep-cfg: CFG scales in one sweep
SWEEP_TOLERANCE = 1e-6  # of a step: (4.0 − 1.0) / 0.1 is 29.999999999999996 in floats


def check_mode_flags(args) -> None:
    """Flags that do nothing in the mode asked for are refused (generation flags with --images /
    --make-ref, scoring flags with --make-ref); then the generation defaults are filled in."""
    if not args.checkpoint:
        mode = f"--images {args.images}" if args.images else f"--make-ref {args.make_ref}"
        for attr, flag in GENERATION_FLAGS.items():
            if not is_unset(attr, getattr(args, attr)):
                raise ValueError(f"{flag} has no effect with {mode} (it sets how a --checkpoint "
                                 f"generates images): drop {flag}")  # fmt: skip
    if args.make_ref:
        for flag, value in (("--ref", args.ref), ("--metrics", args.metrics)):
            if value is not None:
                raise ValueError(f"{flag} has no effect with --make-ref (it measures the data "
                                 f"set's statistics; nothing is scored): drop {flag}")  # fmt: skip
    for attr, default in (("num", DEFAULT_NUM), ("seed", DEFAULT_SEED),
                          ("batch_size", DEFAULT_BATCH)):  # fmt: skip
        if getattr(args, attr) is None:
            setattr(args, attr, default)


def check_args(args) -> list[float] | None:
    """Every numeric flag and output path, before anything is loaded or generated; returns the
    CFG scales of --sweep-cfg (None without it)."""
    check_mode_flags(args)
    check_int(NUM_FLAG, args.num, 1, MAX_IMAGES + 1)
    check_int("--batch-size", args.batch_size, 1, MAX_IMAGES + 1)
    check_device("--device", args.device)
    check_extractor_flag(args.extractor)
    if args.checkpoint:
        check_authors_only(args.checkpoint, args.in_context_start)
    if args.inception_weights and args.extractor != "inception-v3-fid":
        raise ValueError("--inception-weights has no effect without --extractor inception-v3-fid: "
                         "add that flag or drop --inception-weights")  # fmt: skip
    if args.ref_split and args.ref and has_npz_suffix(args.ref):
        raise ValueError(f"--ref-split has no effect with the statistics file --ref {args.ref}: "
                         "drop it (it picks a split of a data-set reference)")  # fmt: skip
    if args.make_ref and has_npz_suffix(args.make_ref):
        check_make_ref_npz(args.make_ref, args.ref_split)
    from pixeljit.data.shards import MANIFEST

    for flag, data in (("--ref", args.ref), ("--make-ref", args.make_ref)):
        if args.ref_split and data and (Path(data) / MANIFEST).is_file():
            raise ValueError(f"--ref-split has no effect with the packed folder {flag} {data} "
                             "(it holds one split, packed): drop --ref-split")  # fmt: skip
    if args.emas is not None and not args.sweep_cfg:
        raise ValueError("--emas has no effect without --sweep-cfg: add --sweep-cfg LO HI STEP, "
                         "or pick one set of weights with --weights")  # fmt: skip
    if args.emas is not None:
        check_emas(args.emas)
    if args.sweep_cfg:
        for flag, value in (("--metrics", args.metrics), ("--cfg", args.cfg),
                            ("--save-images", args.save_images)):  # fmt: skip
            if value is not None:
                raise ValueError(f"{flag} has no effect with --sweep-cfg (it scores FD at each "
                                 f"scale of LO HI STEP): drop {flag}")  # fmt: skip
        if args.weights is not None and args.emas is not None:
            raise ValueError("--weights and --emas both name the weights of the sweep: keep one")
    if args.checkpoint:
        fix = f"raise {NUM_FLAG} to {{least}} or more, or leave {{metric}} out of --metrics"
        ScoreConfig().check_count(metrics(args), args.num, fix)
        for flag, value in (("--size", args.size), ("--channels", args.channels)):
            if value is not None:
                raise ValueError(f"{flag} has no effect with --checkpoint (the model fixes it): "
                                 "drop it (it is for --images / --make-ref)")  # fmt: skip
    check_seed("--seed", args.seed)
    check_int("--size", args.size, 1, MAX_SIZE + 1)
    check_int("--in-context-start", args.in_context_start, 0)
    if args.channels is not None and args.channels not in CHANNELS:
        raise ValueError(f"--channels must be one of {CHANNELS}, got {args.channels}")
    if args.make_ref and not args.out:
        raise ValueError("--make-ref needs --out STATS.npz (where the statistics go)")
    if args.make_ref and not has_npz_suffix(args.out):
        raise ValueError(f"--make-ref writes statistics as .npz, not --out {args.out}: name the "
                         "file *.npz")  # fmt: skip
    if args.out and not args.make_ref and not args.out.endswith(JSON_SUFFIX):
        raise ValueError(f"--out {args.out}: the results are JSON; name the file *.json")
    _check_outputs(args)
    # after the flags and paths; counted from the listing or the .npz header, and an .npz's
    # labels checked, before any reference work (packing a data-set reference can take minutes)
    if args.images:
        from pixeljit.metrics.image_sources import count_path_images, npz_labels

        fix = "score {least} images or more, or leave {metric} out of --metrics"
        ScoreConfig().check_count(metrics(args), count_path_images(args.images), fix)
        npz_labels(args.images)
    if not args.sweep_cfg:
        return None
    return sweep_scales(*args.sweep_cfg)


def _check_outputs(args) -> None:
    """--out (written, never one of the inputs) and --save-images (a folder), before any work."""
    if args.out:
        check_output("--out", args.out, False, args.overwrite, "--overwrite")
        check_not_an_input("--out", args.out, _inputs(args))
    if args.save_images:
        raw = args.save_images
        if Path(raw).suffix and not raw.endswith(FOLDER_MARKS) and not Path(raw).is_dir():
            raise ValueError(
                f"--save-images {raw} names a file, but it writes a folder of PNGs (one per "
                f"image): pass a folder; for a folder with a dot in its name, write {raw}/ (or "
                "create it first)"
            )
        check_only_our_set("--save-images", raw)  # what --overwrite would not make right
        check_output("--save-images", raw, True, args.overwrite, "--overwrite")
        check_no_stale_pngs("--save-images", args.save_images, args.num)
        if args.out:  # a .json among the PNGs is never read as one of them
            check_outputs_apart([("--out", args.out)], [("--save-images", raw)], inside_ok=True)


def sweep_scales(lo: float, hi: float, step: float) -> list[float]:
    """--sweep-cfg LO HI STEP as its CFG scales, each number checked."""
    check_float("--sweep-cfg LO", lo, 0.0)
    check_float("--sweep-cfg HI", hi, lo)
    check_float("--sweep-cfg STEP", step, 0.0, low_open=True)
    # the scales LO, LO + STEP, … up to HI, none past it (rounding the count up went past HI:
    # 1 2 0.6 swept 2.2); the tolerance keeps HI when float division falls just short of it
    steps = (hi - lo) / step + SWEEP_TOLERANCE  # may be inf (a tiny STEP)
    if steps >= MAX_SWEEP_SCALES:
        raise ValueError(f"--sweep-cfg {lo} {hi} {step} gives more than {MAX_SWEEP_SCALES} CFG "
                         "scales: use a larger STEP")  # fmt: skip
    count = math.floor(steps) + 1
    if hi > lo and count == 1:
        raise ValueError(f"--sweep-cfg {lo:g} {hi:g} {step:g}: STEP is larger than HI − LO = "
                         f"{hi - lo:g}, so only LO would be scored: use a STEP of at most "
                         f"{hi - lo:g} (or LO = HI for one scale)")  # fmt: skip
    return [round(lo + k * step, 6) for k in range(count)]


def check_make_ref_npz(path: str, ref_split: str | None = None) -> None:
    """--make-ref X.npz: a file of images (arr_0, NHWC uint8), checked from its headers; a
    statistics file (mu, sigma) is a reference already, and a file has no split to pick."""
    from pixeljit.metrics.image_sources import (
        NPZ_IMAGE_KEY,
        check_image_header,
        npz_headers,
        npz_image_key,
    )

    takes = "--make-ref takes a data set, an image folder or an .npz of images (arr_0, NHWC uint8)"
    if Path(path).is_dir():  # a data-set reference named *.npz would be read as statistics
        raise ValueError(f"--make-ref {path} is a folder named like an .npz file (a name "
                         "ending in .npz is read as one): rename the folder to pass it as an "
                         "image folder")  # fmt: skip
    if not Path(path).is_file():
        raise FileNotFoundError(f"--make-ref {path} does not exist: {takes}")
    headers = npz_headers(path)
    if NPZ_IMAGE_KEY not in headers and {"mu", "sigma"} <= set(headers):
        raise ValueError(f"--make-ref {path} holds statistics (mu, sigma), not images: it is a "
                         f"reference already; score against it with --ref {path} "
                         f"({takes})")  # fmt: skip
    if NPZ_IMAGE_KEY not in headers:
        raise ValueError(f"--make-ref {path} holds no images (keys: {sorted(headers)}): {takes}")
    key = npz_image_key(path, headers)
    check_image_header(path, key, headers[key])
    if ref_split:
        raise ValueError(f"--ref-split has no effect with the images file --make-ref "
                         f"{path}: drop it (it picks a split of a data set)")  # fmt: skip


def check_emas(emas: list[str]) -> None:
    """--emas: each weights name once ('model' twice would be generated and scored twice), and
    'all' alone (it already names every EMA of the checkpoint)."""
    if "all" in emas and len(emas) > 1:
        raise ValueError(f"--emas {' '.join(emas)}: 'all' already names every EMA of the "
                         "checkpoint: pass 'all' alone, or list the weights")  # fmt: skip
    twice = repeated(emas)
    if twice:
        raise ValueError(f"--emas {' '.join(emas)} names {', '.join(twice)} more than once: "
                         "list each weights once")  # fmt: skip


def metrics(args) -> tuple[str, ...]:
    """The metrics to compute: --metrics, else all (a CFG sweep: FD only)."""
    if args.metrics is not None:
        return tuple(args.metrics)
    return ("fd",) if args.sweep_cfg else METRIC_NAMES


def _inputs(args) -> list[Path]:
    """The files this command reads: its inputs, and the files of a checkpoint folder (a run's
    latest.pt, a hub folder's config.json and weights)."""
    given = (args.checkpoint, args.images, args.ref, args.make_ref, args.inception_weights)
    paths = [Path(p) for p in given if p and "://" not in p]
    folders = [p for p in paths if p.is_dir()]
    return paths + [f for d in folders for f in d.iterdir() if f.is_file()]


def check_extractor_flag(name: str) -> None:
    """--extractor names one of the extractors or auto (checked before any model loads)."""
    if name not in EXTRACTOR_CHOICES:
        raise ValueError(f"--extractor {name!r} is not one of {', '.join(EXTRACTOR_CHOICES)}: "
                         "pick one of them")  # fmt: skip
