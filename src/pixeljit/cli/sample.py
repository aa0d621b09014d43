"""`pixeljit sample CHECKPOINT`: images from a trained JiT → a labelled PNG grid, individual PNGs
and/or an .npz of uint8 images.

Noise is drawn per sample from (seed, index), so it does not depend on --batch-size (the
images only to float rounding: the network's arithmetic varies with the batch size).
Sampler flags left out take the model's recommended settings (`cli.sampler_args`); the line
printed at the end names the settings used.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from tqdm import tqdm

from pixeljit.checkpoints.load import TrainedModel, load_trained
from pixeljit.cli.checks import (
    CHECKPOINT_HELP,
    MAX_IMAGES,
    check_checkpoint_exists,
    check_device,
    check_float,
    check_int,
    check_no_stale_labels,
    check_no_stale_pngs,
    check_seed,
    counted,
    naming_partial_images,
)
from pixeljit.cli.sample_labels import NAME_MARK, NUMBER_MARK, label_number, resolve_labels
from pixeljit.cli.sample_outputs import DEFAULT_OUT, check_grid_flags, parse_outputs
from pixeljit.cli.sampler_args import (
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
from pixeljit.diffusion.execution import matmul_precision
from pixeljit.diffusion.sampler import sample
from pixeljit.files import GIB
from pixeljit.files.image_set import staged_image_sets
from pixeljit.files.images import (
    MAX_GRID_PIXELS,
    class_label,
    save_grid,
    save_labels_csv,
    save_npz,
    save_pngs,
    to_uint8,
)
from pixeljit.training.distributed import resolve_device

PER_CLASS = 8  # default images per class (grid columns)
DEFAULT_ROWS = 10  # default number of classes shown when --labels and --num are not given
UNCONDITIONAL_NUM = 64
MAX_GRID_SCALE = 32  # --scale: a 256-px grid of 8 × 10 cells at ×32 is already 650 MP
MAX_NOISE_SCALE = 1e3  # the paper's noise scales are 1-2; far beyond, samples overflow
# float32 copies of a batch the sampler holds at once, the network's work aside: the state z,
# the noise, the guided rows ([cond; uncond] in and out) and the solver's slopes
SAMPLER_STATE_COPIES = 8
FLOAT32_BYTES = 4


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="generate images from a run, a .safetensors export, a Hub folder or "
        "hf://org/name[@rev], or an authors' checkpoint",
        description=__doc__,
    )
    p.add_argument(
        "checkpoint",
        help=CHECKPOINT_HELP,
    )
    p.add_argument(
        "--weights",
        default=None,
        help="pixeljit runs: ema (default), ema:<decay> or model; authors' checkpoints: "
        "model_ema1 (default), model_ema2 or model",
    )
    p.add_argument(
        "--in-context-start",
        type=int,
        default=None,
        help="authors' checkpoints of non-standard depth: in-context start block",
    )
    p.add_argument(
        "--labels",
        nargs="+",
        default=None,
        metavar="Y",
        help="classes to draw: class numbers (0, 1, …), or the model's class names in any case "
        "(quote names with spaces); a number that is also another class's name (classes named "
        f"1 … 10) is refused as ambiguous: write {NUMBER_MARK}N for class number N, "
        f"{NAME_MARK}NAME for the class named NAME; default: balanced over all classes",
    )
    p.add_argument(
        "--num",
        type=int,
        default=None,
        help=f"number of images (default {PER_CLASS} per class shown)",
    )
    add_sampler_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument(
        "--noise-scale",
        type=float,
        default=None,
        help="noise scale s (default: the checkpoint's training value; the paper: size / 256)",
    )
    p.add_argument(
        "--out",
        action="append",
        default=None,
        metavar="PATH",
        help="*.png: a grid; *.npz: uint8 (N, H, W, C) 'arr_0' (+ 'labels' for a "
        "class-conditional model; an unconditional one's holds only 'arr_0'); a path without a "
        "suffix, or ending in / (e.g. run.v1/): a folder of PNGs (000000.png, …; the classes of "
        "a class-conditional model's in labels.csv). Repeatable (default "
        f"{DEFAULT_OUT})",
    )
    p.add_argument(
        "--ncols",
        type=int,
        default=None,
        help="grid columns (default: per class; at most the number of images)",
    )
    p.add_argument(
        "--scale",
        type=int,
        default=None,
        help=f"enlarge grid cells by this factor (1 to {MAX_GRID_SCALE}; default 1)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out .png grid or .npz, and in an --out folder the numbered "
        "PNGs (000000.png, …) and labels.csv of an earlier set; a folder holding other images, a "
        "labels.csv pixeljit did not write, or more numbered PNGs than the new set is refused",
    )
    p.set_defaults(run=run)  # fmt: skip


def check_args(args) -> None:
    """Every numeric flag finite and in range (the sampler's via SamplerConfig), then the
    checkpoint path present, before the outputs are checked and any model is loaded."""
    given_sampler_flags(args)  # each sampler flag alone, --fast against them
    check_int("--num", args.num, 1, MAX_IMAGES + 1)
    check_int("--batch-size", args.batch_size, 1, MAX_IMAGES + 1)
    check_int("--ncols", args.ncols, 1, MAX_IMAGES + 1)
    check_device("--device", args.device)
    check_int("--scale", args.scale, 1, MAX_GRID_SCALE + 1)
    check_seed("--seed", args.seed)
    check_int("--in-context-start", args.in_context_start, 0)
    check_float("--noise-scale", args.noise_scale, 0.0, MAX_NOISE_SCALE, low_open=True)
    for token in args.labels or ():  # a class name is checked once the model is loaded
        check_int("--labels", label_number(token), 0)
    check_checkpoint_exists("checkpoint", args.checkpoint)  # before parse_outputs: input first
    check_authors_only(args.checkpoint, args.in_context_start)


def check_authors_only(checkpoint: str, in_context_start: int | None) -> None:
    """--in-context-start only applies to an authors' checkpoint (ours record theirs)."""
    if in_context_start is None or not Path(checkpoint).exists():
        return
    from pixeljit.checkpoints.load import checkpoint_kind

    if checkpoint_kind(checkpoint) != "authors":
        raise ValueError(
            f"--in-context-start has no effect on {checkpoint}: only authors' checkpoints need "
            "it (pixeljit files record their own); drop the flag"
        )


def load_model(
    source, weights=None, in_context_start=None, device="cpu", **overrides
) -> TrainedModel:
    """The network and its training-time sampling settings from any checkpoint kind: a pixeljit
    run (folder or .pt), a .safetensors export, or an authors' checkpoint-last.pth (or folder);
    `overrides`: JiT config fields (--attention)."""
    return load_trained(source, weights, device, in_context_start, **overrides)


def choose_labels(num: int | None, num_classes: int, chosen: list[int] | None) -> list[int] | None:
    """Labels of the images to draw: `chosen` classes (or all) in equal contiguous blocks.

    Without --num: PER_CLASS images per chosen class, or per each of DEFAULT_ROWS classes spread
    over the label range. Unconditional models get None.
    """
    if num_classes == 0:
        if chosen:
            raise ValueError("--labels given, but the model is unconditional (it takes no "
                             "classes): drop --labels and pass --num N")  # fmt: skip
        return None
    given = chosen is not None
    if chosen is None:
        if num is None:
            rows = min(num_classes, DEFAULT_ROWS)
            chosen = [k * num_classes // rows for k in range(rows)]
        else:
            chosen = list(range(num_classes))
    bad = [y for y in chosen if not 0 <= y < num_classes]
    if bad:
        raise ValueError(f"--labels {bad} outside [0, {num_classes}) for this model")
    if num is None:
        num = PER_CLASS * len(chosen)
    elif given and num < len(chosen):  # some class the user named would get no image
        raise ValueError(f"--num {num} is fewer than the {len(chosen)} --labels, so some classes "
                         "would get no image: raise --num or pass fewer --labels")  # fmt: skip
    return [chosen[k * len(chosen) // num] for k in range(num)]


def grid_layout(labels: list[int] | None, num: int, ncols: int | None, names=None):
    """(ncols, row labels or None): one row per class when the labels come in equal blocks
    of two or more; otherwise a near-square grid without labels. `ncols` is capped at `num`."""
    ncols = min(ncols, num) if ncols else None  # more columns than images: only empty cells
    if labels is not None and (ncols or labels.count(labels[0]) > 1):
        width = ncols or labels.count(labels[0])
        rows = [labels[i : i + width] for i in range(0, num, width)]
        if all(len(set(r)) == 1 for r in rows):
            return width, [class_label(names, r[0]) for r in rows]
        if ncols:
            return ncols, None
    return ncols or math.ceil(math.sqrt(num)), None


def check_memory(num: int, batch: int, keep: bool, config, device) -> None:
    """Refuse, before sampling, a --batch-size whose sampler state alone, or a --num whose kept
    images (for a grid or .npz), exceed the device's / the host's whole memory (both are
    bounded only by MAX_IMAGES)."""
    from pixeljit.training.setup import device_memory_bytes

    pixels = config.in_channels * config.image_size**2
    state = batch * pixels * FLOAT32_BYTES * SAMPLER_STATE_COPIES
    have = device_memory_bytes(torch.device(device))
    if have is not None and state > have:
        raise ValueError(
            f"--batch-size {batch} needs at least {state / GIB:,.1f} GiB for the sampler's "
            f"state, more than the {have / GIB:,.1f} GiB of {device}: lower --batch-size"
        )
    host = device_memory_bytes(torch.device("cpu"))
    kept = num * pixels  # uint8, all of them, for the grid / .npz
    if keep and host is not None and kept > host:
        raise ValueError(
            f"a grid or .npz of --num {num} images holds {kept / GIB:,.1f} GiB in memory, more "
            f"than the {host / GIB:,.1f} GiB here: lower --num, or write a folder of PNGs"
        )


def check_grid_size(num: int, ncols: int | None, image_size: int, scale: int) -> None:
    """Refuse a grid too large to build, before any sampling (`ncols` None: not laid out yet)."""
    cols = ncols or 1  # a grid has at least `num` cells
    side = image_size * scale
    pixels = cols * math.ceil(num / cols) * side * side
    if pixels > MAX_GRID_PIXELS:
        laid = f" in {cols} columns" if ncols else ""
        raise ValueError(
            f"the grid of {num} images{laid} at --scale {scale} would have "
            f"{pixels:,} pixels (limit {MAX_GRID_PIXELS:,}): lower --ncols / --scale / --num, or "
            "write a folder or .npz instead"
        )


def run(args) -> int:
    check_args(args)
    outputs = parse_outputs(args.out, args.overwrite)
    check_grid_flags(args, outputs)
    scale = args.scale if args.scale is not None else 1
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, args.weights, args.in_context_start, device,
                       **model_overrides(args))  # fmt: skip
    sampler = sampler_from_args(args, model.sampler)  # flags over the model's recommendation
    net = model.net
    check_flags_take_effect(args, args.checkpoint, conditional=net.config.num_classes > 0,
                            prediction=model.prediction, cfgs=[sampler.cfg],
                            methods=[sampler.method], sampler=sampler)  # fmt: skip
    noise_scale = model.noise_scale if args.noise_scale is None else args.noise_scale
    classes = net.config.num_classes
    if outputs.grids and args.num:  # before the labels of up to MAX_IMAGES are laid out
        check_grid_size(args.num, None, net.config.image_size, scale)
    chosen = resolve_labels(args.labels, model) if classes else args.labels
    labels = choose_labels(args.num, classes, chosen)
    num = len(labels) if labels is not None else (args.num or UNCONDITIONAL_NUM)
    keep = bool(outputs.grids or outputs.npzs)
    for folder in outputs.folders:
        check_no_stale_pngs("--out", folder, num)
        check_no_stale_labels("--out", folder, labels is not None)
    check_memory(num, min(args.batch_size, num), keep, net.config, device)
    ncols, row_labels = grid_layout(labels, num, args.ncols, model.class_names)
    if outputs.grids:
        check_grid_size(num, ncols, net.config.image_size, scale)
    amp = amp_dtype(args.amp, device)
    # auto: with autocast on CUDA, float32 products left outside it use TF32; else as they are
    cuda_autocast = torch.device(device).type == "cuda" and amp is not None
    setting = matmul_setting(args.matmul_precision, tf32=cuda_autocast)
    precision = matmul_precision(setting) if setting else contextlib.nullcontext()
    matmul = setting or torch.get_float32_matmul_precision()  # for the summary
    chunks = []
    partial = naming_partial_images("--out", outputs.folders, num, labels is not None)
    # each folder's set is staged, and moved in only once whole (`files.image_set`)
    with partial, staged_image_sets(outputs.folders) as staging, precision:
        with tqdm(total=num, unit="img", desc="sampling") as bar:
            for start in range(0, num, args.batch_size):
                stop = min(start + args.batch_size, num)
                images = sample(
                    net, labels[start:stop] if labels is not None else None, num=stop - start,
                    **sampler.kwargs(), noise_scale=noise_scale, prediction=model.prediction,
                    preconditioner=model.preconditioner, sigma_data=model.sigma_data,
                    seed=args.seed, first_index=start, amp_dtype=amp,
                )  # fmt: skip
                u8 = to_uint8(images)  # (B, C, H, W) uint8 on the CPU
                for folder in staging:
                    save_pngs(u8, folder, start=start)
                if keep:
                    chunks.append(u8)
                bar.update(stop - start)
        for folder in staging if labels is not None else ():
            save_labels_csv(folder, labels, model.class_names)
    written = [str(f) + "/" for f in outputs.folders]
    if keep:
        everything = torch.cat(chunks)
        for path in outputs.grids:
            written.append(str(save_grid(everything, path, ncols, row_labels, scale)))
        y = torch.tensor(labels) if labels is not None else None
        for path in outputs.npzs:
            written.append(str(save_npz(everything, path, y, model.class_names)))
    details = describe_generation(args.seed, amp, args.noise_scale, model.noise_scale, matmul)
    print(f"{model.description}: {counted(num, 'image')} ({details}), "
          f"{describe_sampler(sampler, args, model.sampler)} → {', '.join(written)}")  # fmt: skip
    return 0
