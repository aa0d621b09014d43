"""Putting a state dict into a JiT, shared by every checkpoint kind, checked before anything is
built from what a file declares:

1. every tensor is floating point and holds no more elements than the bytes behind it (a file
   cannot declare a huge tensor over a small storage);
2. the config's depth matches the blocks the file holds (bounds the time spent building);
3. the JiT is built on `meta` (no memory), its parameter count is bounded by the file's bytes,
   and every key and shape is compared with the file's before anything is materialised;
4. no tensor holds NaN or Inf;
then the network is materialised on the device and loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from pixeljit.files.kinds import special_file_kind
from pixeljit.model import JiT, JiTConfig

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MIN_FLOAT_BYTES = min(torch.tensor([], dtype=d).element_size() for d in FLOAT_DTYPES)
BLOCK_KEY = re.compile(r"blocks\.(\d+)\.")
LISTED = 5  # tensor names quoted in an error message
ZIP_STORED = zipfile.ZIP_STORED
# the one pickled class `torch.load(weights_only=True)` may rebuild besides tensors and plain
# values: the authors' checkpoints hold their argparse options under 'args' (a bag of attributes)
SAFE_GLOBALS = (argparse.Namespace,)
# JiTConfig fields a caller may override when loading a file that records its architecture (a
# run, a .safetensors export, a hub folder): they change how the same weights are computed or
# trained, not what they compute in eval mode, where loading returns them: the attention kernel
# ('sdpa' or the authors' float32 softmax: the same function, other rounding) and dropout (no
# parameters, inactive in eval mode). Every other field changes the function the weights
# compute (rope, norm, in_context_start, … even where no weight changes shape), so it must be
# the recorded value: an override would sample, and export, a network that was never trained.
OVERRIDABLE_FIELDS = ("attention", "dropout", "dropout_blocks", "attn_dropout")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(JiTConfig)}


def _listing(names: list[str]) -> str:
    more = f" and {len(names) - LISTED} more ({len(names)} in all)" if len(names) > LISTED else ""
    return f"{names[:LISTED]}{more}"


def block_indices(names) -> set[int]:
    """The transformer block numbers that tensor names refer to ('blocks.3.attn…' → 3)."""
    return {int(m.group(1)) for k in names if (m := BLOCK_KEY.match(k))}


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # torch's name of a pickled object it refused
UNSAFE_PICKLE = "refused for safety"


def torch_load_problem(err: Exception) -> str:
    """What a failed `torch.load(weights_only=True)` says, in one line, without torch's advice
    to retry with weights_only=False (which runs whatever code the file holds)."""
    text = str(err)
    if "Weights only load failed" in text:
        found = _GLOBAL.search(text)
        what = f" ({found.group(1)})" if found else ""
        return (f"it holds a pickled object{what} other than tensors and plain values, "
                f"{UNSAFE_PICKLE}; nothing in it was run")  # fmt: skip
    first = (text.strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}"


def refuse_special_file(path: str | os.PathLike, named: str | None = None) -> None:
    """ValueError when `path` is a pipe, socket or device, before anything opens it (a FIFO
    blocks its reader until a writer comes, forever; a device may never end). `named`: how
    messages name the path (default the path itself)."""
    kind = special_file_kind(path)
    if kind is not None:
        raise ValueError(
            f"{named or path} is not a regular file but {kind}: pass the checkpoint file itself "
            "(pipes, sockets and devices are never opened: reading one may wait forever)"
        )


def check_overrides(source, recorded: Mapping, overrides: Mapping) -> None:
    """Refuse overrides of a file's recorded architecture `recorded` (JiTConfig fields) that
    change what its weights compute: any field outside OVERRIDABLE_FIELDS whose value differs
    from the recorded one (JiTConfig's default where the file records none). Names that are no
    JiTConfig field are left to JiTConfig.from_dict, which refuses them."""

    def plain(value):
        return tuple(value) if isinstance(value, list) else value

    def held(name):  # what the file records (JiTConfig's default where it records nothing)
        return plain(recorded.get(name, _DEFAULTS[name]))

    def differs(name, value) -> bool:
        try:
            return bool(plain(value) != held(name))
        except Exception:  # an array or other value without a plain truth: not the same
            return True

    changed = [
        f"{name}={plain(value)!r} (it records {name}={held(name)!r})"
        for name, value in overrides.items()
        if name in _DEFAULTS and name not in OVERRIDABLE_FIELDS and differs(name, value)
    ]
    if changed:
        allowed = f"{', '.join(OVERRIDABLE_FIELDS[:-1])} and {OVERRIDABLE_FIELDS[-1]}"
        raise ValueError(
            f"{source} records its architecture: {', '.join(changed)} would change what its "
            f"weights compute; drop the override (only {allowed} may be given when loading a "
            "pixeljit file)"
        )


def check_torch_zip(path: str | Path) -> int:
    """Bound what `torch.load` will allocate for the zip-format checkpoint `path` before it runs:
    every member stored uncompressed (torch.save writes them so; a compressed member may inflate
    to any size) and their declared sizes within the file's. Returns the file size in bytes."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(
            f"could not read {path} as a zip-format PyTorch checkpoint ({err}): the file may be "
            "truncated or not a checkpoint (legacy non-zip torch.save files are not read)"
        ) from None
    packed = [m.filename for m in members if m.compress_type != ZIP_STORED]
    if packed:
        raise ValueError(
            f"{path} holds compressed members ({_listing(packed)}); torch.save never compresses, "
            "so the file was altered: refusing to inflate it"
        )
    declared = sum(m.file_size for m in members)
    if declared > size:
        raise ValueError(
            f"{path} declares {declared} bytes of members but holds {size} bytes: corrupt file"
        )
    return size


def check_tensors(state: Mapping, source: str, file_bytes: int | None = None) -> None:
    """Every entry a floating tensor whose elements fit the storage behind it, and (with
    `file_bytes`) all of them together within the file's size."""
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{source}: entries {_listing(sorted(map(str, bad)))} are not tensors")
    wrong = [f"{k} ({v.dtype})" for k, v in state.items() if v.dtype not in FLOAT_DTYPES]
    if wrong:
        raise ValueError(
            f"{source}: weights must be floating point (float16/bfloat16/float32/float64); "
            f"got {_listing(sorted(wrong))}"
        )
    overlaid = [
        k
        for k, v in state.items()
        if v.numel() * v.element_size() > v.untyped_storage().nbytes() and v.device.type != "meta"
    ]
    if overlaid:
        raise ValueError(
            f"{source}: tensors {_listing(sorted(overlaid))} declare more elements than the bytes "
            "stored for them (expanded or overlapping views): not a saved state dict"
        )
    if file_bytes is not None:
        declared = sum(v.numel() * v.element_size() for v in state.values())
        if declared > file_bytes:
            raise ValueError(
                f"{source}: tensors declare {declared} bytes but the file holds {file_bytes}"
            )


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """ValueError naming the tensors that hold NaN or Inf (the first few and their count)."""
    bad = [k for k, v in state.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(
            f"{source}: non-finite weights (NaN or Inf) in {_listing(sorted(bad))}; the "
            "checkpoint is corrupt or training diverged: use an earlier checkpoint or another EMA"
        )


def meta_model(
    config: JiTConfig,
    shapes: Mapping[str, tuple[int, ...]],
    source: str,
    file_bytes: int | None = None,
) -> JiT:
    """A JiT of `config` on `meta` after checking that the declared `shapes` ({name: shape})
    can be its state dict: same depth (checked before building), parameter count within
    `file_bytes`, same keys, same shapes."""
    blocks = block_indices(shapes)
    if blocks != set(range(config.depth)):
        held = f"blocks 0–{max(blocks)}" if blocks else "no blocks"
        raise ValueError(
            f"{source}: the config says depth {config.depth} but the weights hold {held} "
            f"({len(blocks)} distinct): config and weights disagree"
        )
    with torch.device("meta"):
        net = JiT(config)
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    if file_bytes is not None:
        count = sum(v.numel() for v in net.state_dict().values())
        if count * MIN_FLOAT_BYTES > file_bytes:
            raise ValueError(
                f"{source}: the config implies {count} parameters, more than the file's "
                f"{file_bytes} bytes can hold: config and weights disagree"
            )
    missing = sorted(set(own) - set(shapes))
    unexpected = sorted(set(shapes) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(shapes[k])} vs model {own[k]}"
        for k in sorted(set(own) & set(shapes))
        if tuple(shapes[k]) != own[k]
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_listing(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches {mismatched[:LISTED]}")
        raise ValueError(f"{source}: checkpoint does not fit the model: " + "; ".join(parts))
    return net


def materialise(net: JiT, state: Mapping[str, torch.Tensor], source: str, device=None) -> JiT:
    """Check `state` is finite, move the `meta` net to `device` (default CPU), load, eval mode.
    The weights are float32 whatever the file holds (load_state_dict casts into them) and
    whatever `torch.get_default_dtype()` built the `meta` net in (float64 would make them
    float64); nothing global is changed."""
    check_finite(state, source)
    net = net.float().to_empty(device=device or "cpu")  # on meta: nothing is allocated
    net.load_state_dict(state, strict=True)  # copies (and casts) into the network's dtype
    return net.eval()


def load_state_checked(net: JiT, state: Mapping[str, torch.Tensor], source: str = "checkpoint"):
    """load_state_dict into an existing net, with the checks above (keys, shapes, dtypes, NaN)."""
    check_tensors(state, source)
    meta_model(net.config, {k: tuple(v.shape) for k, v in state.items()}, source)
    check_finite(state, source)
    net.load_state_dict(state, strict=True)


def build_loaded(
    config: JiTConfig,
    state: Mapping[str, torch.Tensor],
    device: torch.device | str | None = None,
    source: str = "checkpoint",
    file_bytes: int | None = None,
) -> JiT:
    """A JiT of `config` in eval mode holding `state`, every check above passed first: built on
    `meta`, materialised on `device` (default CPU) only once the weights are known to fit."""
    check_tensors(state, source, file_bytes)
    net = meta_model(config, {k: tuple(v.shape) for k, v in state.items()}, source, file_bytes)
    return materialise(net, state, source, device)
