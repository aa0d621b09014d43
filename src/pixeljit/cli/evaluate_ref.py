"""`pixeljit eval`'s reference statistics: measured on a data set, an image folder or an images
`.npz` at the scored images' size and channels (`--ref`, `--make-ref`), checked against a saved
one's recorded image shape, and what a conversion of them is said in words."""

from __future__ import annotations

from pixeljit.cli.evaluate_args import metrics
from pixeljit.metrics.dataset_stats import check_recorded_shape, recorded_image_shape, shape_text
from pixeljit.metrics.image_sources import has_npz_suffix


def conversion_note(args) -> str:
    """', resized from 28×28 and grey → RGB' where --make-ref's images (an .npz) are not
    already --size px with --channels: said, since the statistics then measure converted
    images."""
    from pixeljit.data.transforms import CHANNEL_NAMES
    from pixeljit.metrics.image_sources import NPZ_IMAGE_KEY, npz_headers

    if not has_npz_suffix(args.make_ref):
        return ""  # a data set is packed at --size, as training packs it
    shape = npz_headers(args.make_ref)[NPZ_IMAGE_KEY].shape  # (N, H, W[, C])
    height, width = shape[1], shape[2]
    channels = shape[3] if len(shape) == 4 else 1
    changes = []
    if (height, width) != (args.size, args.size):
        changes.append(f"resized from {height}×{width} to {args.size}×{args.size}")
    if channels != args.channels:
        have, want = CHANNEL_NAMES.get(channels, channels), CHANNEL_NAMES[args.channels]
        changes.append(f"{have} → {want}")
    return "".join(f", {c}" for c in changes)


def npz_stats(path: str, extractor, size: int, channels: int):
    """Statistics of the images of an `.npz` (arr_0), brought to size × size px with `channels`
    by `pixeljit prepare`'s rule (ADM centre crop); under torchrun each rank takes its
    contiguous block of the images (`rank_share`), so the gathered features keep the file's
    order, as one process keeps them (KID's and PR's subsets are drawn by position)."""
    import torch

    from pixeljit.data.transforms import resize_stack
    from pixeljit.evaluation_ranks import rank_share
    from pixeljit.metrics import compute_dataset_stats
    from pixeljit.metrics.image_sources import iter_npz_images

    def images():
        batches = ((batch, None) for batch in iter_npz_images(path))
        for u8, _ in rank_share(batches, path):
            if len(u8):  # a rank with no images: none (the gathers take its empty share)
                yield torch.from_numpy(resize_stack(u8.numpy(), size, channels))

    return compute_dataset_stats(images(), extractor)


def check_stats_shape(args, shape: tuple[int, int, int], scored: str) -> None:
    """--ref STATS.npz measured on images of another size or channel count than the `scored`
    ones (`shape`, C H W) is refused before the extractor is built: that is the cause, and the
    extractor's check (whose dimension follows the channel count under `auto`) would report
    only its symptom, a feature size."""
    needs_ref = set(metrics(args)) & {"fd", "kid", "pr"}
    if not (needs_ref and args.ref and has_npz_suffix(args.ref)):
        return
    recorded = recorded_image_shape(args.ref)
    if recorded is None:
        return
    resave = f", or save the images as {shape_text(recorded)}" if args.images else ""
    check_recorded_shape(recorded, shape, f"--ref {args.ref}", scored, resave)


def reference_stats(args, extractor, shape: tuple[int, int, int], scored: str, info, first):
    """The reference statistics the metrics need (None when none of them does), measured on
    images of `shape` (C, H, W) like the `scored` ones."""
    needs_ref = set(metrics(args)) & {"fd", "kid", "pr"}
    if not needs_ref:
        return None
    if not args.ref:
        raise ValueError(f"metrics {sorted(needs_ref)} need --ref (statistics .npz or a data set)")
    channels, size = shape[0], shape[-1]
    say_converted(args.ref, channels, scored, info)
    ref = dataset_stats("--ref", args.ref, extractor, size, channels, args.ref_split, info, first)
    ref.check_image_shape(shape, f"--ref {args.ref}", scored)
    return ref


def say_converted(ref: str, channels: int, scored: str, info) -> None:
    """A built-in --ref measured in other channels than its own (emoji in grey, for grey
    scored images) is said: the statistics are then of converted images."""
    from pixeljit.data.open import BUILTIN_SOURCES
    from pixeljit.data.prepare import native_channels
    from pixeljit.data.transforms import CHANNEL_NAMES

    native = native_channels(ref)
    if ref in BUILTIN_SOURCES and native != channels and info.is_main:
        print(f"note: --ref {ref} is measured in {CHANNEL_NAMES[channels]}, as {scored} are: "
              f"its {CHANNEL_NAMES[native]} images are converted")  # fmt: skip


def dataset_stats(flag, ref, extractor, size, channels, split, info, first):
    """dataset_stats_for, with a missing built-in data set explained in this verb's terms (the
    library's own hint names the Python API and `pixeljit prepare`'s flags)."""
    from pixeljit.data.open import BUILTIN_SOURCES
    from pixeljit.evaluation import dataset_stats_for

    try:
        return dataset_stats_for(ref, extractor, size, channels, split, first, progress=True)
    except FileNotFoundError as err:
        if ref not in BUILTIN_SOURCES:
            raise
        reason = str(err).split(". ")[0]
        raise FileNotFoundError(
            f"{flag} {ref}: {reason}. Make it with `pixeljit prepare {ref} --size {size} --out "
            f"DIR` (`pixeljit prepare --help` lists how to fetch it) and pass {flag} DIR"
            + (", or pass --ref STATS.npz" if flag == "--ref" else "")
        ) from None
