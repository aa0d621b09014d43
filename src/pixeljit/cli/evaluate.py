"""`pixeljit eval`: score a model (generate and score in one streaming pass), or images.

pixeljit eval --checkpoint CKPT --num-images N --ref STATS.npz|DATASET [--extractor E] [--cfg W] ...
pixeljit eval --images FOLDER|X.npz --ref STATS.npz|DATASET
pixeljit eval --make-ref DATASET --size S --channels C --out STATS.npz
pixeljit eval --checkpoint RUN --num-images 8000 --ref DATASET --sweep-cfg 1.0 4.0 0.1 --emas all

The JSON of --out holds the scores and what they measured: the checkpoint, step and weights with
a SHA-256 of them (`checkpoints.provenance`; `convert --hub` publishes only matching scores), the
sampler, count, seed, precision, reference and extractor.

Under `torchrun` the images are split over the ranks (each makes its block of indices) and the
statistics are merged; only rank 0 prints and writes.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

from pixeljit.cli.checks import CHECKPOINT_HELP, check_no_stale_labels, naming_partial_images
from pixeljit.cli.evaluate_args import (
    AUTO_EXTRACTOR,
    DEFAULT_BATCH,
    DEFAULT_NUM,
    DEFAULT_SEED,
    EXTRACTOR_CHOICES,
    METRIC_NAMES,
    check_args,
    metrics,
)
from pixeljit.cli.evaluate_ref import (
    check_stats_shape,
    conversion_note,
    dataset_stats,
    npz_stats,
    reference_stats,
)
from pixeljit.cli.sample import check_memory
from pixeljit.cli.sampler_args import (
    AUTO_MATMUL,
    add_sampler_arguments,
    amp_dtype,
    check_flags_take_effect,
    describe_generation,
    describe_sampler,
    given_sampler_flags,
    matmul_setting,
    model_overrides,
    sampler_from_args,
)
from pixeljit.metrics.image_sources import has_npz_suffix


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="FD / KID / IS / precision-recall of a model or of images")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    what.add_argument("--images", help="a folder of images or an .npz (arr_0, NHWC uint8)")
    what.add_argument("--make-ref", metavar="DATASET",
                      help="compute and save reference stats of a data set, an image folder or "
                      "an images .npz (arr_0), at --size / --channels")  # fmt: skip
    p.add_argument("--ref", help="reference: statistics .npz (mu, sigma) or a data set")
    p.add_argument("--ref-split", default=None, help="split of a data-set reference")
    auto = ("auto: the one a --ref statistics file records, else fmnist-cnn for grey images "
            "of 10 classes or unlabelled, effnet-lite0 otherwise; the classes are the model's "
            "(--checkpoint), the labels' (--images), the data set's (--make-ref)")  # fmt: skip
    p.add_argument(
        "--extractor", default=AUTO_EXTRACTOR, help=f"{' | '.join(EXTRACTOR_CHOICES)} ({auto})"
    )
    p.add_argument("--inception-weights", default=None,
                   help="pt_inception-2015-12-05 weights (for inception-v3-fid)")  # fmt: skip
    p.add_argument("--metrics", nargs="+", default=None, choices=METRIC_NAMES,
                   help=f"default: {' '.join(METRIC_NAMES)} (--sweep-cfg: FD only)")  # fmt: skip
    p.add_argument("--num", "--num-images", dest="num", type=int, default=None,
                   help=f"images to generate (default {DEFAULT_NUM}; under torchrun write "
                   "--num-images: torchrun's own parser takes --num for its "
                   "--numa-binding)")  # fmt: skip
    p.add_argument("--weights", default=None, help="ema | ema:<decay> | model | model_ema1 …")
    add_sampler_arguments(p)
    p.add_argument("--seed", type=int, default=None, help=f"default {DEFAULT_SEED}")
    p.add_argument("--batch-size", type=int, default=None, help=f"default {DEFAULT_BATCH}")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--save-images",
        default=None,
        help="also write the PNGs to this folder "
        "(000000.png, …; a class-conditional model's classes in labels.csv)",
    )
    p.add_argument("--sweep-cfg", type=float, nargs=3, metavar=("LO", "HI", "STEP"),
                   help="FD for every CFG scale in [LO, HI] (the paper: 1.0 4.0 0.1)")  # fmt: skip
    p.add_argument("--emas", nargs="+", default=None,
                   help="with --sweep-cfg: weights to compare, or 'all' EMAs of a run")  # fmt: skip
    p.add_argument("--size", type=int, default=None,
                   help="--make-ref: image size (--images: read from the images)")  # fmt: skip
    p.add_argument("--channels", type=int, default=None,
                   help="--make-ref: 1 or 3 (--images: read from the images)")  # fmt: skip
    p.add_argument("--out", default=None, help="--make-ref: .npz; otherwise a JSON of results")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file, and in --save-images the numbered PNGs and "
        "labels.csv of an earlier set (a folder holding other images, or a labels.csv pixeljit "
        "did not write, is refused)",
    )
    p.add_argument(
        "--in-context-start",
        type=int,
        default=None,
        help="authors' checkpoints of non-standard depth: in-context start block",
    )
    p.set_defaults(run=run)


def _extractor(
    name: str, channels: int, classes: int, weights: str | None, device, ref: str | None = None
):
    """`--extractor`'s network; `auto` is the one a --ref statistics file records, else
    fmnist-cnn for grey images of 10 classes or none (unlabelled: `classes` 0) and effnet-lite0
    otherwise. Every mode passes the same facts: the images' channels and class count."""
    from pixeljit.metrics import EXTRACTORS, create_extractor
    from pixeljit.metrics.dataset_stats import recorded_extractor

    recorded = recorded_extractor(ref) if name == AUTO_EXTRACTOR and ref else None
    if recorded in EXTRACTORS:
        name = recorded
    elif name == AUTO_EXTRACTOR:
        name = "fmnist-cnn" if channels == 1 and classes in (0, 10) else "effnet-lite0"
    kwargs = {"device": device}
    if name == "inception-v3-fid":
        kwargs["weights_path"] = weights
    return create_extractor(name, **kwargs)


def _emas(args, checkpoint: str) -> list[str]:
    if args.emas is None:
        return [args.weights or "ema"] if args.weights else [None]
    if args.emas == ["all"]:
        from pixeljit.checkpoints.load import checkpoint_kind

        kind = checkpoint_kind(checkpoint)
        if kind == "authors":
            from pixeljit.checkpoints.authors import is_authors_dict, read_checkpoint

            if not is_authors_dict(read_checkpoint(checkpoint)):  # memory-mapped: cheap
                raise ValueError(f"--emas all: {checkpoint} holds one bare state dict, not the "
                                 "authors' named weights (model_ema1, model_ema2): drop --emas "
                                 "to score it")  # fmt: skip
            return ["model_ema1", "model_ema2"]
        if kind != "run":
            raise ValueError(f"--emas all needs a training run or an authors' checkpoint, not a "
                             f"{kind} file: {checkpoint}")  # fmt: skip
        from pixeljit.checkpoints.load import run_ema_decays

        return [f"ema:{d}" for d in run_ema_decays(checkpoint)]
    return list(args.emas)


def run(args) -> int:
    from pixeljit.training import distributed as dist_utils

    if not args.checkpoint and args.matmul_precision != AUTO_MATMUL:  # a generation flag
        mode = f"--images {args.images}" if args.images else f"--make-ref {args.make_ref}"
        raise ValueError(f"--matmul-precision has no effect with {mode} (it sets how a "
                         "--checkpoint generates images): drop --matmul-precision")  # fmt: skip
    cfgs = check_args(args)  # before the process group and the device
    if args.checkpoint:
        given_sampler_flags(args)
    with dist_utils.process_group(args.device) as info:
        return _run(args, info, cfgs)


def _run(args, info, cfgs: list[float] | None) -> int:
    """cfgs: the CFG scales of --sweep-cfg (None without it)."""
    from pixeljit.checkpoints.load import load_trained
    from pixeljit.evaluation import (
        GenerationSpec,
        evaluate,
        generation_record,
        score_image_source,
        sweep_rows,
    )
    from pixeljit.metrics.image_folder import SubfolderImagesWarning
    from pixeljit.training import distributed as dist_utils

    first = lambda fn: dist_utils.rank0_first(info, fn, "packing the reference data")  # noqa: E731
    say = print if info.is_main else (lambda *a, **k: None)
    if args.make_ref:
        _make_ref(args, info, first, say)
        return 0
    if args.images:
        shape, scored = _image_shape(args), f"the images of --images {args.images}"
        check_stats_shape(args, shape, scored)
        from pixeljit.metrics.labelled import source_classes

        extractor = _extractor(args.extractor, shape[0], source_classes(args.images),
                               args.inception_weights, info.device, args.ref)  # fmt: skip
        ref = reference_stats(args, extractor, shape, scored, info, first)
        with warnings.catch_warnings():  # its sub-folders were warned of by _image_shape
            warnings.simplefilter("ignore", SubfolderImagesWarning)
            scores = score_image_source(args.images, extractor, ref, metrics(args))
        record = {"images": args.images, "reference": _reference(args), "extractor": extractor.name}
        _report(scores, record, args, say, info)
        return 0

    load = lambda w: load_trained(args.checkpoint, w, info.device, args.in_context_start,  # noqa: E731
                                  **model_overrides(args))  # fmt: skip
    emas = _emas(args, args.checkpoint) if cfgs else None
    model = load(args.weights)
    sampler = sampler_from_args(args, model.sampler)  # flags over the model's recommendation
    cfg = model.net.config
    labelled = cfg.num_classes > 0  # its PNG folder gets a labels.csv
    check_flags_take_effect(args, args.checkpoint, conditional=labelled,
                            prediction=model.prediction, cfgs=cfgs or [sampler.cfg],
                            methods=[sampler.method], sampler=sampler)  # fmt: skip
    if args.save_images:
        check_no_stale_labels("--save-images", args.save_images, labelled)
    check_memory(args.num, min(args.batch_size, args.num), False, cfg, info.device)
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    check_stats_shape(args, shape, "the model's images")
    extractor = _extractor(args.extractor, cfg.in_channels, cfg.num_classes,
                           args.inception_weights, info.device, args.ref)  # fmt: skip
    ref = reference_stats(args, extractor, shape, "the model's images", info, first)
    spec = GenerationSpec(
        num=args.num, sampler=sampler, seed=args.seed,
        batch_size=args.batch_size, amp_dtype=amp_dtype(args.amp, info.device),
        matmul_precision=matmul_setting(args.matmul_precision),  # auto: the process's
    )  # fmt: skip
    kw = {"rank": info.rank, "world": info.world_size}
    record = generation_record(model, args.checkpoint, spec, _reference(args), extractor.name,
                               weights_in_rows=bool(cfgs))  # fmt: skip
    if cfgs:
        rows = sweep_rows(load, emas, cfgs, spec, extractor, ref, **kw)
        label = extractor.fd_label
        say(f"{'weights':>16} {'cfg':>5} {label:>12}")
        for r in rows:
            say(f"{str(r['weights']):>16} {r['cfg']:5.2f} {r[label]:12.4f}")
        best = min(rows, key=lambda r: r[label])
        say(f"best: weights {best['weights']}, cfg {best['cfg']} ({label} {best[label]:.4f}, "
            f"{args.num} samples)")  # fmt: skip
        record["sampler"] = dataclasses.replace(sampler, cfg=best["cfg"]).as_json()
        _write_json({"sweep": rows, "best": best, **record}, args, info)
        return 0
    save = args.save_images
    with naming_partial_images("--save-images", [save] if save else [], args.num, labelled):
        scores = evaluate(model, spec, extractor, ref, metrics(args), save_dir=save,
                          progress=info.is_main, **kw)  # fmt: skip
    details = describe_generation(spec.seed, spec.amp_dtype, matmul=record["matmul_precision"])
    say(f"{model.description}: {args.num} images ({details}), "
        f"{describe_sampler(sampler, args, model.sampler)}")  # fmt: skip
    _report(scores, record, args, say, info)
    return 0


def _image_shape(args) -> tuple[int, int, int]:
    """(C, H, W) of the --images, checked against --size / --channels: a folder's from headers
    (nothing decoded: a file's decoding warnings are said once, when scored), its sub-folders of
    images (not scored) warned of here, before any reference work; an `.npz`'s first image's."""
    from pixeljit.metrics.image_folder import channels_text as named
    from pixeljit.metrics.image_folder import folder_image_shape, warn_unread_subfolders
    from pixeljit.metrics.image_sources import iter_batches

    if Path(args.images).is_dir():
        (c, h, w), colour = folder_image_shape(args.images)
        warn_unread_subfolders(args.images)
    else:
        first = next(iter_batches(args.images, 1), None)
        if first is None:
            raise ValueError(f"--images {args.images} holds no images")
        (c, h, w), colour = (int(v) for v in first.shape[1:]), None
    if h != w:
        raise ValueError(f"--images {args.images}: the images are {h}×{w}, not square like every "
                         "reference pixeljit makes: crop or resize them square")  # fmt: skip
    if args.size is not None and args.size != h:
        raise ValueError(f"--size {args.size}, but the images of --images {args.images} are "
                         f"{h}×{w} px: drop --size (it is read from the images) or resize the "
                         "images")  # fmt: skip
    if args.channels is not None and args.channels != c:
        why = (f"; {colour} is colour, and grey images among colour ones are read as RGB"
               if colour is not None else "")  # fmt: skip
        raise ValueError(f"--channels {args.channels}, but the images of --images {args.images} "
                         f"are {named(c)}{why}: drop --channels (it is read from the images) "
                         f"or save every image as {named(args.channels)}")  # fmt: skip
    return int(c), int(h), int(w)


def _make_ref(args, info, first, say) -> None:
    """--make-ref: the statistics of a data set, an image folder or an images `.npz` at --size
    px with --channels, saved to --out."""
    from pixeljit.metrics import save_dataset_stats

    if args.size is None or args.channels is None:
        raise ValueError("--make-ref needs --size and --channels (the images to measure)")
    classes = _make_ref_classes(args, first) if args.extractor == AUTO_EXTRACTOR else 0
    extractor = _extractor(args.extractor, args.channels, classes, args.inception_weights,
                           info.device)  # fmt: skip
    if has_npz_suffix(args.make_ref):  # images (checked by check_args), not a data set
        ref = npz_stats(args.make_ref, extractor, args.size, args.channels)
    else:
        ref = dataset_stats("--make-ref", args.make_ref, extractor, args.size,
                             args.channels, args.ref_split, info, first)  # fmt: skip
    if info.is_main:  # an existing --out was refused up front unless --overwrite
        save_dataset_stats(args.out, ref, overwrite=args.overwrite)
    say(f"reference statistics of {args.make_ref} ({ref.count} images, "
        f"{extractor.name}{conversion_note(args)}) → {args.out}")  # fmt: skip


def _make_ref_classes(args, first) -> int:
    """The class count of --make-ref's images (0: unlabelled), which `auto` picks the extractor
    by, as --images does: an images .npz's labels or a folder's labels.csv (`pixeljit sample`
    writes them), else the data set's classes (opened, packed into the cache once if it needs
    to be, as its statistics are about to be)."""
    from pixeljit.metrics.labelled import source_classes

    labelled = source_classes(args.make_ref)  # an .npz's labels, a folder's labels.csv
    if labelled or has_npz_suffix(args.make_ref):
        return labelled
    if args.channels != 1:
        return 0  # colour images get effnet-lite0 whatever their classes
    from pixeljit.data.open import open_dataset

    try:
        dataset = open_dataset(args.make_ref, args.size, args.channels, args.ref_split, first)
    except FileNotFoundError:
        return 0  # said in this verb's terms when the statistics are made (`dataset_stats`)
    return dataset.num_classes if dataset.num_classes > 1 else 0  # one class: unlabelled


def _reference(args) -> str | None:
    if not args.ref:
        return None
    return args.ref + (f" ({args.ref_split})" if args.ref_split else "")


def _report(scores: dict, record: dict, args, say, info) -> None:
    for key, value in scores.items():
        say(f"  {key:>16}: {value:.6g}")
    _write_json({"scores": scores, **record}, args, info)


def _write_json(obj, args, info) -> None:
    if args.out and info.is_main:
        from pixeljit.files.atomic import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps(obj, indent=2))
