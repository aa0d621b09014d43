"""Sample grids during training: an EMA's weights in a plain network, sampled on rank 0."""

from __future__ import annotations

from pathlib import Path

import torch

from pixeljit.model import JiT
from pixeljit.training.config import TrainConfig
from pixeljit.training.state import full_tensor


@torch.no_grad()
def ema_network(cfg: TrainConfig, ema, decay: float, info, device) -> torch.nn.Module | None:
    """A plain (unsharded) JiT holding one EMA's weights, on rank 0; None on other ranks.
    All ranks must call it: under FSDP2 gathering the shards is a collective."""

    full = [full_tensor(s) for s in ema.shadows[ema.index(decay)]]
    if not info.is_main:
        return None
    with torch.device("meta"):
        net = JiT(cfg.model)
    net = net.to_empty(device=device)
    for p, value in zip(net.parameters(), full, strict=True):
        p.copy_(value)
    return net.eval()


@torch.no_grad()
def sample_grid(cfg: TrainConfig, ema, dataset, path: Path, info, device) -> Path | None:
    """A grid from an EMA: one row per class (up to sample.max_classes), sample.per_class columns,
    fixed seed, so grids of successive steps are comparable. All ranks call; rank 0 samples.
    Samples that come out NaN / inf (finite weights, an unstable sampler setting) leave this
    step without a grid, said in a warning: a preview never stops the training."""
    from pixeljit.diffusion.sampler import NonFiniteSamples

    net = ema_network(cfg, ema, cfg.sampling_decay, info, device)
    if net is None:
        return None
    try:
        return draw_grid(cfg, net, dataset.class_names, path)
    except NonFiniteSamples as err:
        print(f"warning: no preview grid {path.name}: {err}", flush=True)
        return None


@torch.no_grad()
def draw_grid(cfg: TrainConfig, net: torch.nn.Module, class_names, path: Path) -> Path:
    """The preview grid of `net` (on its own device) with `cfg`'s sample settings and seed, rows
    labelled with `class_names`, written to `path`."""
    from pixeljit.diffusion.execution import default_amp_dtype
    from pixeljit.diffusion.sampler import NO_GUIDANCE, sample
    from pixeljit.files.images import class_label, save_grid

    s = cfg.sample
    device = next(net.parameters()).device
    classes = min(cfg.model.num_classes, s.max_classes)
    rows = max(classes, 1)
    labels = [c for c in range(classes) for _ in range(s.per_class)] if classes else None
    names = [class_label(class_names, c) for c in range(classes)] if classes else None
    amp = default_amp_dtype(device)
    sampler = s.kwargs() | ({} if classes else {"cfg": NO_GUIDANCE})
    images = sample(
        net, labels, **sampler, noise_scale=cfg.objective.noise_scale,
        prediction=cfg.objective.prediction, preconditioner=cfg.objective.preconditioner,
        sigma_data=cfg.objective.sigma_data, num=None if classes else rows * s.per_class,
        seed=cfg.run.seed, amp_dtype=amp,
    )  # fmt: skip
    return save_grid(images, path, ncols=s.per_class, row_labels=names)
