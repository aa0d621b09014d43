"""The checks `sample()` runs on its arguments before it draws or runs anything: integers (NumPy's
included), seeds, labels, noise, and the network's weights and device. Each refusal names the
argument and the fix, rather than failing deep inside torch."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from pixeljit.diffusion.execution import AUTOCAST_DTYPES
from pixeljit.diffusion.solvers import DEFAULT_SHIFT
from pixeljit.values import is_integer

Tensor = torch.Tensor

MAX_SEED = 2**63  # seeds are 64-bit (numpy SeedSequence, torch.manual_seed)


def check_seed(seed: int | None, first_index: int = 0) -> tuple[int | None, int]:
    """A per-sample seed base in [0, 2**63) (None: no per-sample seeds) and an index ≥ 0, which
    only means something with a seed; returned as plain ints."""
    if seed is None and first_index != 0:
        raise ValueError(f"first_index={first_index!r} numbers per-sample seeds: pass seed= "
                         "with it, or drop first_index")  # fmt: skip
    for name, value in (("seed", seed), ("first_index", first_index)):
        if value is None and name == "seed":
            continue
        if not is_integer(value) or not 0 <= value < MAX_SEED:
            raise ValueError(f"{name} must be an integer in [0, 2**63), got {value!r}")
    return (None if seed is None else int(seed)), int(first_index)


def network_config(net):
    """`net.config`, or an error saying what to pass instead."""
    config = getattr(net, "config", None)
    if config is None and all(hasattr(net, k) for k in ("net", "prediction", "noise_scale")):
        raise ValueError(  # a load_trained() result: its objective must come along with the net
            "net is a loaded model, not a network: call model.sample(labels, …) (its objective "
            "and recommended sampler, any keyword of sample() on top), or pass model.net with "
            "prediction=model.prediction, noise_scale=model.noise_scale, "
            "preconditioner=model.preconditioner"
        )
    if config is None:
        raise ValueError("net must carry a `config` with num_classes, in_channels and image_size")
    return config


def check_not_meta(net, labels, noise) -> None:
    """Refuse a network, labels or noise on the 'meta' device: it holds shapes without values,
    and torch fails on it only deep inside ("Tensor.item() cannot be called on meta tensors")."""
    if isinstance(net, nn.Module) and any(
        p.is_meta for p in itertools.chain(net.parameters(), net.buffers())
    ):
        raise ValueError("the network is on 'meta', whose weights hold no values: build it on "
                         "a real device (create_model(name, device='cpu')) or load a trained "
                         "one (pixeljit.load_trained)")  # fmt: skip
    for name, value in (("labels", labels), ("noise", noise)):
        if isinstance(value, Tensor) and value.is_meta:
            raise ValueError(f"{name} is on 'meta', which holds no values: pass {name} on the "
                             "network's device (e.g. 'cpu')")  # fmt: skip


def weights_device(net) -> torch.device | None:
    """The device of the network's first parameter (None: not a module, or no parameters)."""
    if isinstance(net, nn.Module):
        param = next(net.parameters(), None)
        if param is not None:
            return param.device
    return None


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether `a` and `b` name one device ('cuda' matches any 'cuda:N', as torch reads it)."""
    return a == b or (a.type == b.type and None in (a.index, b.index))


def check_network_on(weights: torch.device | None, dev: torch.device, source: str, fix: str):
    """Refuse sampling on `dev` (chosen by `source`, e.g. "device='cuda'") when the network's
    weights are elsewhere: torch would fail at the first layer ("Tensor on device cpu is not on
    the expected device …"); `fix` is the argument to pass instead."""
    if weights is not None and not same_device(weights, dev):
        raise ValueError(f"{source} but the network is on {str(weights)!r}: the sampling state "
                         f"must live with the network's weights: pass {fix}, or move the network "
                         f"(net.to({str(dev)!r}))")  # fmt: skip


def labels_tensor(labels, num_classes: int, device) -> Tensor | None:
    """`labels` as an int64 tensor (N,) on `device`, each in [0, num_classes); None for an
    unconditional model."""
    if labels is None:
        if num_classes > 0:
            raise ValueError(
                "this model is class-conditional: pass labels (ints in "
                f"[0, {num_classes})), e.g. labels=list(range({min(num_classes, 8)}))"
            )
        return None
    if num_classes == 0:
        raise ValueError("this model is unconditional: pass labels=None and num=N")
    if isinstance(labels, (str, bytes)) or (
        isinstance(labels, Sequence) and any(isinstance(v, (str, bytes)) for v in labels)
    ):
        raise ValueError(
            "labels are class indices here; a loaded model maps class names: "
            "pixeljit.load_trained(...).sample(['name', ...])"
        )
    try:
        y = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"labels must be a list, tuple, array or tensor of class indices, got "
            f"{type(labels).__name__}"
        ) from None
    if y.ndim != 1:
        shown = y.item() if y.ndim == 0 else f"shape {tuple(y.shape)}"
        raise ValueError(
            f"labels must be one class per image, a 1-D sequence, got {shown}: e.g. [3] for "
            "one image of class 3, [3] * 8 for eight of them"
        )
    if y.numel() == 0:
        raise ValueError("labels is empty; pass at least one label")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got {y.dtype}")
    lo, hi = int(y.min()), int(y.max())  # once per call (a sync only for device labels)
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) (the model has {num_classes} classes; "
            f"{num_classes} is the null label used by guidance), got min {lo}, max {hi}"
        )
    return y.to(device=device, dtype=torch.int64)


def check_sources(net, noise, seed, generator, num, grid: str, shift: float) -> None:
    """Arguments that would be ignored or fail deep inside torch, refused by name: two sources of
    noise, a shift off the shifted grid, a network whose weights are not float32, a count or a
    generator of the wrong type, noise that is not a finite float tensor."""
    given = [name for name, v in (("noise", noise), ("seed", seed), ("generator", generator))
             if v is not None]  # fmt: skip
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)} were both given, and only one can decide the "
                         "starting noise: pass one of them")  # fmt: skip
    if grid != "shifted" and shift != DEFAULT_SHIFT:
        raise ValueError(f"shift={shift:g} has no effect on the {grid!r} grid: pass "
                         "grid='shifted', or drop shift")  # fmt: skip
    if num is not None and not is_integer(num):
        raise ValueError(f"num must be an integer ≥ 1, got {num!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__} "
                         "(for a number, pass seed= instead)")  # fmt: skip
    if noise is not None:
        if not isinstance(noise, Tensor) or not noise.is_floating_point():
            kind = noise.dtype if isinstance(noise, Tensor) else type(noise).__name__
            raise ValueError(f"noise must be a floating-point torch.Tensor, got {kind}")
        if not bool(torch.isfinite(noise).all()):
            raise ValueError("noise holds NaN or infinite values")
    if isinstance(net, nn.Module):
        dtypes = {p.dtype for p in net.parameters() if p.is_floating_point()}
        _check_weight_dtypes(dtypes)
        if noise is not None and dtypes and noise.dtype not in dtypes:
            raise ValueError(f"noise is {noise.dtype}, the network's weights float32: pass "
                             "noise.float() (the sampling state is float32)")  # fmt: skip


def _check_weight_dtypes(dtypes: set[torch.dtype]) -> None:
    """float32 weights only: lower precision comes from autocast (`amp_dtype`), and wider weights
    (float64, e.g. built after torch.set_default_dtype(torch.float64)) go back to float32."""
    if not dtypes - {torch.float32}:
        return
    found = ", ".join(sorted(map(str, dtypes)))
    if dtypes <= {torch.float32, *AUTOCAST_DTYPES}:
        raise ValueError(
            f"the network's weights are {found}: sampling keeps them float32 (net.float()) and "
            "runs the network in lower precision under autocast: pass amp_dtype=torch.bfloat16"
        )
    raise ValueError(f"the network's weights are {found}: sampling runs a float32 network (the "
                     "sampling state is float32): pass net.float() (a network built after "
                     "torch.set_default_dtype(torch.float64) is float64)")  # fmt: skip
