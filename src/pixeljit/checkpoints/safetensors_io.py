"""pixeljit's portable weights: one `.safetensors` file with the config, objective and class names
in its metadata, written atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from pixeljit.checkpoints.arguments import check_path
from pixeljit.checkpoints.checksums import OTHER_FIELDS, checksum_mismatches, checksums
from pixeljit.checkpoints.kinds import refuse_as_safetensors
from pixeljit.checkpoints.metadata import (
    check_class_names,
    objective_from_metadata,
    sampler_from_metadata,
    weights_metadata,
)
from pixeljit.checkpoints.run import MAX_LISTED
from pixeljit.checkpoints.weights import (
    check_finite,
    check_overrides,
    materialise,
    meta_model,
    refuse_special_file,
)
from pixeljit.devices import as_device
from pixeljit.diffusion.sampler import SamplerConfig
from pixeljit.files.atomic import atomic_write_stream
from pixeljit.model import JiT, JiTConfig

SAFETENSORS_CONFIG_KEY = "pixeljit_config"
SAFETENSORS_FORMAT = "pixeljit.jit/1"
SAFETENSORS_FLOATS = ("F16", "BF16", "F32", "F64")
SAFETENSORS_SUFFIX = ".safetensors"
CHECKSUMS_KEY = "checksums"  # SHA-256 per tensor, as run checkpoints carry (`checksums.checksums`)
# JiTConfig fields that size the network (each ≥ 1), checked before the config is built
COUNT_FIELDS = ("image_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads")


def save_safetensors(
    net: JiT,
    path: str | os.PathLike,
    objective: dict | None = None,
    class_names: Sequence[str] | None = None,
    sampler: dict | SamplerConfig | None = None,
    weights: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Weights + JSON config (+ the objective sampling must match, class names, the recommended
    sampler settings and which weights these are: {'name', 'step'}) in one .safetensors file,
    written atomically. Everything is checked as loading checks it, before anything is written
    (a file `load_trained` would refuse is never made); an existing file is replaced only with
    `overwrite`. Without `objective` the file loads as ObjectiveConfig's defaults (x-prediction,
    noise scale image_size / 256). A `torch.compile`d network is saved as the network it wraps
    (`net._orig_mod`: the same weights, under their own names)."""
    from safetensors.torch import save

    if not isinstance(overwrite, bool):  # overwrite="no" is truthy: it would replace the file
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
    path = _checked_path(path, overwrite)
    net = getattr(net, "_orig_mod", net) if type(net).__name__ == "OptimizedModule" else net
    config = getattr(net, "config", None)
    if not isinstance(net, JiT) or not isinstance(config, JiTConfig):
        raise ValueError(f"save_safetensors takes a pixeljit JiT network, got {type(net).__name__}")
    if isinstance(sampler, SamplerConfig):
        sampler = sampler.as_json()
    if isinstance(class_names, (str, bytes)):
        raise ValueError(f"class_names must be a list of names, got the string {class_names!r}")
    if class_names is not None:
        class_names = list(class_names)
    extras = dict(zip(EXTRA_METADATA, (objective, class_names, sampler, weights), strict=True))
    encoded = _encoded_metadata(path, config, extras)
    state = net.state_dict()
    on_meta = [k for k, v in state.items() if v.device.type == "meta"]
    if on_meta:
        raise ValueError(f"{path}: the network is on 'meta' and holds no values ({on_meta[0]}, "
                         "…): build or load it on a real device first")  # fmt: skip
    check_finite(state, str(path))
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in state.items()}
    meta = {SAFETENSORS_CONFIG_KEY: json.dumps(config.to_dict()), "format": SAFETENSORS_FORMAT}
    meta |= encoded
    meta[CHECKSUMS_KEY] = json.dumps(_tensor_checksums(tensors))
    # serialised here and written by Python: a failed write is an OSError naming the file (not a
    # SafetensorError), and the file gets the usual umask-derived mode
    blob = save(tensors, metadata=meta)
    path.parent.mkdir(parents=True, exist_ok=True)  # only once everything has been checked
    return atomic_write_stream(path, lambda f: f.write(blob))


def safetensors_name_problem(name: str) -> str | None:
    """What is wrong with `name` for a .safetensors file (loading goes by the suffix, in any
    case), or None: another suffix, or none before it (a hidden file of that name)."""
    if not name.lower().endswith(SAFETENSORS_SUFFIX):
        return f"must end in {SAFETENSORS_SUFFIX}"
    if len(Path(name).name) == len(SAFETENSORS_SUFFIX):
        return f"has no name before {SAFETENSORS_SUFFIX} (it would be a hidden file)"
    return None


def _checked_path(path, overwrite: bool) -> Path:
    if not isinstance(path, (str, os.PathLike)) or isinstance(os.fspath(path), bytes):
        raise TypeError(f"path must be a str or os.PathLike (e.g. pathlib.Path), got "
                        f"{type(path).__name__} {path!r} (bytes: pass path.decode())")  # fmt: skip
    path = Path(path)
    problem = safetensors_name_problem(str(path))
    if problem:
        raise ValueError(f"{path} {problem}: name the file NAME{SAFETENSORS_SUFFIX}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder: name a file NAME{SAFETENSORS_SUFFIX}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: pass overwrite=True to replace it")
    return path


def _encoded_metadata(path, config: JiTConfig, extras: dict) -> dict[str, str]:
    """The given `extras` as the JSON strings the file will hold, each read back with the
    readers `load_trained` uses, so a value loading would refuse is refused here."""
    encoded = {}
    for key, value in extras.items():
        if value is None:
            continue
        try:
            encoded[key] = json.dumps(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {key} must be JSON data ({err})") from None
    held = {key: json.loads(text) for key, text in encoded.items()}  # what a loader will see
    if "objective" in held:
        objective_from_metadata(path, held["objective"], config.image_size)
    check_class_names(path, held.get("class_names"), config.num_classes)
    sampler_from_metadata(path, held.get("sampler"))
    weights_metadata(path, held.get("weights"))
    return encoded


def _metadata_json(path: Path, meta: dict, key: str):
    try:
        return json.loads(meta[key])
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{path}: metadata {key!r} is not valid JSON ({err})") from None


# beside the config, when present
EXTRA_METADATA = ("objective", "class_names", "sampler", "weights")


def _tensor_checksums(tensors: dict) -> dict[str, str]:
    """`checksums.checksums` of a tensors-only state: its entry for other fields covers nothing."""
    digests = checksums(tensors)
    digests.pop(OTHER_FIELDS)
    return digests


def check_recorded_checksums(path: Path, meta: dict, state: dict) -> None:
    """The tensors read from `path` against the SHA-256s its metadata records (pixeljit ≥ this
    version writes them): a flipped byte is refused, naming the tensors, not sampled silently.
    A file without them (an older export, another tool's) has nothing to compare."""
    if CHECKSUMS_KEY not in meta:
        return
    saved = _metadata_json(path, meta, CHECKSUMS_KEY)
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: metadata {CHECKSUMS_KEY!r} must be a JSON object")
    bad = checksum_mismatches(saved, _tensor_checksums(state))
    if bad:
        more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise ValueError(
            f"{path} is damaged: checksum mismatch in {', '.join(bad[:MAX_LISTED])}{more}; "
            "export it again from its source (`pixeljit convert`)"
        )


def _config(path: Path, meta: dict, overrides: dict) -> JiTConfig:
    fields = _metadata_json(path, meta, SAFETENSORS_CONFIG_KEY)
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: metadata {SAFETENSORS_CONFIG_KEY!r} must be a JSON object")
    check_overrides(path, fields, overrides)  # the file records its architecture
    fields = {**fields, **overrides}
    counts = [k for k in COUNT_FIELDS if k in fields and not _positive_int(fields[k])]
    if counts:
        raise ValueError(
            f"{path}: config fields {counts} must be positive integers, got "
            f"{[fields[k] for k in counts]}"
        )
    try:
        return JiTConfig.from_dict(fields)
    except (ValueError, TypeError, ZeroDivisionError) as err:
        raise ValueError(f"{path}: invalid JiT config in its metadata: {err}") from None


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def load_safetensors_with_meta(path: str | os.PathLike, device=None, **overrides):
    """(JiT in eval mode, {'objective': {...}, 'class_names': [...], 'sampler': {...}} where
    present).

    The header's dtypes and shapes and the config in the metadata are checked against each
    other and the file's size before the network is built or any tensor is read."""
    from safetensors import SafetensorError, safe_open

    path = check_path(path, "path", f"a {SAFETENSORS_SUFFIX} file")
    if device is not None:
        device = as_device(device)  # a device this machine has, and not meta
    refuse_special_file(path)  # a named pipe is never opened (it would wait for a writer)
    if path.exists():
        refuse_as_safetensors(path)  # a folder, a torch.save checkpoint, a pickle
    if not path.is_file():
        raise FileNotFoundError(f"safetensors file {path} does not exist")
    file_bytes = path.stat().st_size
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if SAFETENSORS_CONFIG_KEY not in meta:
                raise ValueError(
                    f"{path} has no '{SAFETENSORS_CONFIG_KEY}' metadata: not exported by pixeljit "
                    "(export with pixeljit.save_safetensors or `pixeljit convert`)"
                )
            config = _config(path, meta, overrides)
            declared = {k: f.get_slice(k) for k in f.keys()}
            dtypes = {k: s.get_dtype() for k, s in declared.items()}
            odd = sorted(f"{k} ({d})" for k, d in dtypes.items() if d not in SAFETENSORS_FLOATS)
            if odd:
                raise ValueError(f"{path}: weights must be floating point; got {odd[:5]}")
            shapes = {k: tuple(s.get_shape()) for k, s in declared.items()}
            net = meta_model(config, shapes, str(path), file_bytes)  # nothing read yet
            state = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as err:
        raise ValueError(f"{path} is not a valid .safetensors file ({err})") from None
    check_recorded_checksums(path, meta, state)
    extra = {k: _metadata_json(path, meta, k) for k in EXTRA_METADATA if k in meta}
    return materialise(net, state, str(path), device), extra


def load_safetensors(path: str | os.PathLike, device=None, **overrides) -> JiT:
    """Load a file written by `save_safetensors` back into a JiT in eval mode."""
    return load_safetensors_with_meta(path, device, **overrides)[0]
