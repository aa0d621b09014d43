"""The authors' released checkpoints (`checkpoint-last.pth`): safe reading and `load_reference`.

The authors' `checkpoint-last.pth` is a `torch.save` dict {'model', 'model_ema1', 'model_ema2',
'epoch', maybe 'optimizer' and a pickled argparse Namespace under 'args'}; every weight key starts
with 'net.'. We read it with `weights_only=True` (argparse.Namespace on an explicit allow-list, no
other pickled code), infer the architecture from tensor shapes, and return a JiT in eval mode.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from pixeljit.checkpoints.arguments import check_path, check_weights
from pixeljit.checkpoints.weights import (
    SAFE_GLOBALS,
    UNSAFE_PICKLE,
    block_indices,
    build_loaded,
    check_tensors,
    check_torch_zip,
    refuse_special_file,
    torch_load_problem,
)
from pixeljit.devices import as_device
from pixeljit.model import MODEL_SIZES, JiT, JiTConfig
from pixeljit.model.layers import swiglu_hidden

CHECKPOINT_FILENAME = "checkpoint-last.pth"
WEIGHT_ENTRIES = ("model", "model_ema1", "model_ema2")
DEFAULT_WEIGHTS = "model_ema1"  # the authors' evaluation weights
KEY_PREFIX = "net."
SAFETENSORS_SUFFIX = ".safetensors"  # pixeljit's exported models (`load_trained` reads them)
AUTHORS_FILE = f"an authors' {CHECKPOINT_FILENAME} or its folder"  # what `source` names
# the authors' depth → in-context start block (Tab. 9); G shares H's
IN_CONTEXT_START_BY_DEPTH = {12: 4, 24: 8, 32: 10, 40: 10}


# ------------------------------------------------------------------------------------ reading


def _resolve_file(source: str | os.PathLike, expected: str = AUTHORS_FILE) -> Path:
    """The checkpoint file `source` names (itself or the one in its folder); `expected`: what to
    pass, for the message refusing an empty or non-path `source`."""
    path = check_path(source, "source", expected)
    if path.is_dir():
        candidate = path / CHECKPOINT_FILENAME
        refuse_special_file(candidate)  # a named pipe is never opened (it waits for a writer)
        if not candidate.is_file():
            raise FileNotFoundError(
                f"folder {path} holds no {CHECKPOINT_FILENAME}; pass the checkpoint file itself "
                "or the folder that contains it"
            )
        return candidate
    refuse_special_file(path, f"checkpoint {path}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def read_checkpoint(source: str | os.PathLike) -> dict:
    """torch.load a released checkpoint safely (weights_only; argparse.Namespace allowed)."""
    path = _resolve_file(source)
    check_torch_zip(path)  # bounds what torch.load allocates before it runs
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):  # argparse.Namespace ('args')
            try:  # memory-map the zip format: a released H/16 file is 11 GB
                data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip and format errors come in several classes
        problem = torch_load_problem(err)
        unsafe = UNSAFE_PICKLE in problem  # says why already; otherwise the likely causes
        raise ValueError(
            f"could not read {path} as a PyTorch checkpoint ({problem})"
            + ("" if unsafe else ": the file may be truncated or not a checkpoint")
        ) from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a checkpoint dict")
    return dict(data)


def extract_state_dict(
    checkpoint: Mapping, weights: str | None = None, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Pick `weights` ('model', 'model_ema1' (None: the default), 'model_ema2') from an authors'
    checkpoint mapping, or take a bare state dict as is (its weights unnamed: a weights choice is
    refused, it holds one set); strip the 'net.' prefix."""
    if is_authors_dict(checkpoint):
        weights = weights or DEFAULT_WEIGHTS
        if weights not in checkpoint:
            raise ValueError(
                f"{source} has no {weights!r} weights; it holds {sorted(map(str, checkpoint))}"
            )
        state, entry = checkpoint[weights], f"entry {weights!r}"
    elif all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        if weights is not None:
            refuse_bare_weights_choice(source, weights)
        state, entry = checkpoint, "its state dict"
    else:
        raise ValueError(
            f"{source} is not a JiT checkpoint: expected entries {WEIGHT_ENTRIES} or a state "
            f"dict, found {sorted(map(str, checkpoint))[:10]}"
        )
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: {entry} is a {type(state).__name__}, not a mapping")
    odd = [repr(k) for k in state if not isinstance(k, str)]
    if odd:
        raise ValueError(f"{source}: {entry} has non-text keys {odd[:5]}")
    return {k.removeprefix(KEY_PREFIX): v for k, v in state.items()}


def is_authors_dict(checkpoint: Mapping) -> bool:
    """Whether `checkpoint` is an authors' dict of named weight sets (else a bare state dict)."""
    return any(entry in checkpoint for entry in WEIGHT_ENTRIES)


def refuse_bare_weights_choice(source: str, weights: str) -> None:
    """A bare state dict is one set of weights of unknown name: choosing one would label it with
    a name (and an EMA decay) nobody knows."""
    names = " / ".join(map(repr, WEIGHT_ENTRIES))
    raise ValueError(f"{source} holds one bare state dict (no {names} entries), not "
                     f"{weights!r} weights: drop the weights choice to load it, unnamed: leave "
                     "out --weights (Python: weights=None)")  # fmt: skip


def _need(state: Mapping, key: str, ndim: int, source: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(
            f"{source}: not a JiT state dict: key {key!r} is missing (first keys: "
            f"{sorted(state)[:8]}). Is this a checkpoint of another model?"
        )
    value = state[key]
    if not isinstance(value, torch.Tensor) or value.ndim != ndim or 0 in value.shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{source}: {key} must be a non-empty {ndim}-d tensor, got {got}")
    return value


def infer_config(
    state: Mapping[str, torch.Tensor],
    in_context_start: int | None = None,
    source: str = "state dict",
    **overrides,
) -> JiTConfig:
    """The JiTConfig that a state dict (without 'net.' prefix) was built from. Reads shapes only
    (the depth from the block keys), so it costs nothing however large the shapes claim to be;
    the weights are compared with the config's network before anything is built."""
    check_override_names(overrides)
    pos = _need(state, "pos_embed", 3, source)
    dim, tokens = pos.shape[-1], pos.shape[1]
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{source}: pos_embed has {tokens} tokens, not a square grid")
    depth = len(block_indices(state))
    if depth == 0:
        raise ValueError(f"{source}: state dict has no transformer blocks ('blocks.0.*' missing)")
    q_norm = _need(state, "blocks.0.attn.q_norm.weight", 1, source)
    if dim % q_norm.shape[0]:
        raise ValueError(
            f"{source}: q_norm width {q_norm.shape[0]} does not divide hidden size {dim}"
        )
    heads = dim // q_norm.shape[0]
    if "x_embedder.proj1.weight" in state:
        proj1 = _need(state, "x_embedder.proj1.weight", 4, source)
        bottleneck, channels, patch = proj1.shape[0], proj1.shape[1], proj1.shape[2]
    else:
        proj = _need(state, "x_embedder.proj.weight", 4, source)
        bottleneck, channels, patch = None, proj.shape[1], proj.shape[2]
    ctx_len = (
        _need(state, "in_context_posemb", 3, source).shape[1]
        if ("in_context_posemb" in state)
        else 0
    )
    table = "y_embedder.embedding_table.weight"
    classes = _need(state, table, 2, source).shape[0] - 1 if table in state else 0
    w3 = _need(state, "blocks.0.mlp.w3.weight", 2, source)
    if w3.shape[1] != swiglu_hidden(dim, 4.0):
        raise ValueError(f"{source}: unexpected SwiGLU width {w3.shape[1]} for hidden size {dim}")
    if in_context_start is None and ctx_len:
        if depth not in IN_CONTEXT_START_BY_DEPTH:
            raise ValueError(
                f"{source}: no standard in-context start block for depth {depth}; pass "
                "in_context_start= (on the command line --in-context-start)"
            )
        in_context_start = IN_CONTEXT_START_BY_DEPTH[depth]
    fields = dict(
        image_size=side * patch,
        patch_size=patch,
        in_channels=channels,
        hidden_size=dim,
        depth=depth,
        num_heads=heads,
        num_classes=classes,
        bottleneck_dim=bottleneck,
        in_context_len=ctx_len,
        in_context_start=in_context_start or 0,
    )
    for size in MODEL_SIZES.values():  # a standard size keeps its training dropout
        if size["depth"] == depth and size["hidden_size"] == dim:
            fields["dropout"] = size.get("dropout", 0.0)
    fields.update(overrides)
    try:
        return JiTConfig(**fields)
    except (ValueError, TypeError, ZeroDivisionError) as err:
        raise ValueError(f"{source}: the weights imply an invalid JiT config: {err}") from None


def check_override_names(overrides: Mapping) -> None:
    """Overrides are JiTConfig fields: another name is refused by name, with the known ones (it
    was reported as the weights implying an invalid config)."""
    known = sorted(f.name for f in dataclasses.fields(JiTConfig))
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"unknown JiT config fields {unknown} given as overrides; the fields "
                         f"(pixeljit.JiTConfig) are {known}")  # fmt: skip


def load_reference(
    source: str | os.PathLike | Mapping,
    weights: str | None = None,
    in_context_start: int | None = None,
    device: torch.device | str | None = None,
    **overrides,
) -> JiT:
    """A JiT in eval mode from an authors' checkpoint file, its folder, or a loaded mapping.

    `weights` picks 'model', 'model_ema1' (the authors' evaluation weights; also for None) or
    'model_ema2'. A bare state dict (a mapping of tensors, e.g. one's own export) holds one set
    of unnamed weights: it loads with weights None, and a weights choice is refused. Config
    fields can be overridden (e.g. `attention='fp32'` for the authors' numerics). `device` None
    is the CPU.
    """
    return load_reference_named(source, weights, in_context_start, device, **overrides)[0]


def load_reference_named(
    source: str | os.PathLike | Mapping,
    weights: str | None = None,
    in_context_start: int | None = None,
    device: torch.device | str | None = None,
    **overrides,
) -> tuple[JiT, str]:
    """`load_reference`'s network and the name of the weights it loaded: 'model', 'model_ema1'
    or 'model_ema2' from an authors' dict, '' (unknown) from a bare state dict."""
    names = " / ".join(map(repr, WEIGHT_ENTRIES))
    weights = check_weights(weights, names)
    if weights is not None and weights not in WEIGHT_ENTRIES:
        raise ValueError(f"an authors' checkpoint has no {weights!r} weights: pass weights= "
                         f"{names} (None: {DEFAULT_WEIGHTS!r})")  # fmt: skip
    check_override_names(overrides)
    if device is not None:
        device = as_device(device)  # a device this machine has, and not meta
    from pixeljit.checkpoints.run import FORMAT, UNCHECKED_FORMAT  # run imports this module

    path = None
    if isinstance(source, Mapping):
        checkpoint, name, file_bytes = source, "checkpoint", None
    else:
        path = _resolve_file(source, f"{AUTHORS_FILE}, or the checkpoint dict torch.load returns")
        if path.suffix.lower() == SAFETENSORS_SUFFIX:
            _refuse_pixeljit_file(path, "a .safetensors model file")
        checkpoint, name, file_bytes = read_checkpoint(path), str(path), path.stat().st_size
    if checkpoint.get("format") in (FORMAT, UNCHECKED_FORMAT):
        _refuse_pixeljit_file(path, "a pixeljit training checkpoint")
    state = extract_state_dict(checkpoint, weights, name)
    loaded = (weights or DEFAULT_WEIGHTS) if is_authors_dict(checkpoint) else ""
    if loaded:
        name = f"{name} ({loaded})"
    check_tensors(state, name, file_bytes)  # before any shape is trusted
    config = infer_config(state, in_context_start, name, **overrides)
    return build_loaded(config, state, device, name, file_bytes), loaded


def _refuse_pixeljit_file(path: Path | None, kind: str) -> None:
    """load_reference reads the authors' checkpoints; pixeljit's own files load elsewhere."""
    where = "its file" if path is None else repr(str(path))
    raise ValueError(f"{'checkpoint' if path is None else path} is {kind}, not an authors' "
                     f"checkpoint ({CHECKPOINT_FILENAME}): load it with "
                     f"pixeljit.load_trained({where})")  # fmt: skip
