"""Weights people can share: a folder in the Hugging Face Hub layout, and its reading (writing:
`hub_write`).

    DIR/model.safetensors   the weights (also carrying pixeljit's own metadata)
    DIR/config.json         architecture, objective, class names, which weights, the sampler
    DIR/README.md           the model card (`hub_card`), YAML front matter for the Hub
    DIR/samples.png         a sample grid, when the run left one for these weights

config.json is the authority when the folder is loaded: it is read bounded (`MAX_CONFIG_BYTES`),
strictly (no duplicate keys, no NaN, no unknown keys) and every field validated before the
network is built; the weights then go through the same checks as every other kind
(`checkpoints.weights`). `hf://org/name[@revision]` fetches such a folder (`hub_remote`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from pixeljit.checkpoints.hub_remote import fetch_hub_folder, is_hf_uri
from pixeljit.checkpoints.load import (
    TrainedModel,
    check_one_set,
    trained_model,
)
from pixeljit.checkpoints.metadata import (
    OBJECTIVE_DEFAULTS,
    Objective,
    check_class_names,
    check_objective,
    objective_from_metadata,
    sampler_config,
    weights_metadata,
)
from pixeljit.checkpoints.safetensors_io import (
    COUNT_FIELDS,
    SAFETENSORS_CONFIG_KEY,
    SAFETENSORS_FLOATS,
    check_recorded_checksums,
)
from pixeljit.checkpoints.weights import (
    check_overrides,
    materialise,
    meta_model,
    refuse_special_file,
)
from pixeljit.diffusion.sampler import SamplerConfig
from pixeljit.model import JiT, JiTConfig

HUB_FORMAT = "pixeljit.hub/1"
LIBRARY_NAME = "pixeljit"
MODEL_TYPE = "jit"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
GRID_NAME = "samples.png"
HUB_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, GRID_NAME)  # what --overwrite replaces
MAX_CONFIG_BYTES = 1 << 22  # 4 MiB: a config is a few kB; 1000 class names are ~30 kB
MAX_FLOAT_BYTES = 8  # float64, the widest dtype a weights file may hold
HEADER_ALLOWANCE = 1 << 24  # safetensors header (names, shapes, metadata) beyond the tensors
TOP_KEYS = (
    "format",
    "library_name",
    "model_type",
    "architecture",
    "objective",
    "class_names",
    "weights",
    "sampler",
    "sampler_source",
)
OBJECTIVE_KEYS = tuple(OBJECTIVE_DEFAULTS)  # prediction, noise_scale, preconditioner, sigma_data
# objective fields a config.json may leave out (written only where used; earlier files lack them)
OPTIONAL_OBJECTIVE = {"sigma_data": OBJECTIVE_DEFAULTS["sigma_data"]}
WEIGHTS_KEYS = ("name", "ema_decay", "step")
MAX_TEXT = 1000  # characters of a free-text field (weights name, sampler source)


# --------------------------------------------------------------------------- config.json


@dataclass(frozen=True)
class HubConfig:
    """A validated config.json."""

    architecture: dict
    objective: Objective
    class_names: tuple[str, ...] | None
    weights: str
    ema_decay: float | None
    step: int | None
    sampler: SamplerConfig
    sampler_source: str

    def jit_config(self, source: str, **overrides) -> JiTConfig:
        check_overrides(source, self.architecture, overrides)  # config.json records it
        try:
            return JiTConfig.from_dict({**self.architecture, **overrides})
        except (ValueError, TypeError, ZeroDivisionError) as err:
            raise ValueError(f"{source}: invalid architecture: {err}") from None


def _no_duplicates(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"duplicate keys {repeated[:5]}")
    return dict(pairs)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _section(source, data: dict, key: str, allowed: tuple[str, ...] | None) -> dict:
    if key not in data:
        raise ValueError(f"{source}: the '{key}' section is missing (a JSON object)")
    value = data[key]
    if not isinstance(value, dict):
        raise ValueError(f"{source}: '{key}' must be a JSON object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(allowed)) if allowed is not None else []
    if unknown:
        raise ValueError(f"{source}: unknown '{key}' fields {unknown[:5]}; known: {list(allowed)}")
    return value


def _text(source, name: str, value, optional: bool = False) -> str:
    if optional and value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError(f"{source}: {name} must be a string of at most {MAX_TEXT} characters")
    return value


def read_hub_config(path: str | os.PathLike) -> HubConfig:
    """Parse and validate a hub folder's config.json (every field; nothing is built)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing or not a regular file: not a hub folder")
    with open(path, "rb") as f:  # read bounded, whatever the file system reports as its size
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(
            f"{path} is over the {MAX_CONFIG_BYTES:,} bytes a config may hold: not "
            "a pixeljit config"
        )
    try:
        data = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict) or data.get("format") != HUB_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{path}: not a pixeljit hub config (format {found!r}, expected "
            f"{HUB_FORMAT!r}); export one with `pixeljit convert SOURCE --hub DIR`"
        )
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown fields {unknown[:5]}; known: {list(TOP_KEYS)}")
    arch = _section(path, data, "architecture", None)
    counts = [k for k in COUNT_FIELDS if not _positive_int(arch.get(k))]
    if counts:
        raise ValueError(
            f"{path}: architecture fields {counts} must be positive integers, got "
            f"{[arch.get(k) for k in counts]}"
        )
    obj = {**OPTIONAL_OBJECTIVE, **_section(path, data, "objective", OBJECTIVE_KEYS)}
    objective = check_objective(path, *(obj.get(k) for k in OBJECTIVE_KEYS))
    # names need a num_classes to count against: a missing one is refused like a wrong one
    names = check_class_names(path, data.get("class_names"), arch.get("num_classes", "missing"))
    weights = _section(path, data, "weights", WEIGHTS_KEYS)
    decay, step = weights.get("ema_decay"), weights.get("step")
    if decay is not None and not (isinstance(decay, (int, float)) and 0 < decay < 1):
        raise ValueError(f"{path}: weights.ema_decay must be a number in (0, 1) or null")
    if step is not None and not (_positive_int(step) or (type(step) is int and step == 0)):
        raise ValueError(f"{path}: weights.step must be an integer ≥ 0 or null")
    sampler = _section(path, data, "sampler", tuple(SamplerConfig().kwargs()))
    recommended = sampler_config(sampler, f"{path}: invalid sampler settings")
    return HubConfig(
        arch,
        objective,
        names,
        _text(path, "weights.name", weights.get("name")),
        None if decay is None else float(decay),
        step,
        recommended,
        _text(path, "sampler_source", data.get("sampler_source"), optional=True),
    )


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def weights_bound(config_path: Path) -> int:
    """The most bytes a weights file for this config.json can need (float64 and a header).
    Counted on `meta` from a one-block network plus (depth − 1) blocks, so a config claiming a
    huge depth costs no time (nothing is built per claimed block)."""
    config = read_hub_config(config_path).jit_config(str(config_path))
    one = dataclasses.replace(config, depth=1, in_context_start=0, dropout_blocks=None)
    with torch.device("meta"):
        net = JiT(one)
    per_block = sum(p.numel() for p in net.blocks[0].state_dict().values())
    params = sum(p.numel() for p in net.state_dict().values()) + (config.depth - 1) * per_block
    return params * MAX_FLOAT_BYTES + HEADER_ALLOWANCE


# ------------------------------------------------------------------------------- loading


def load_hub(
    source: str | os.PathLike,
    weights: str | None = None,
    device: torch.device | str = "cpu",
    in_context_start: int | None = None,
    **overrides,
) -> TrainedModel:
    """A hub folder (or `hf://org/name[@revision]`, fetched first) as a TrainedModel."""
    if in_context_start is not None:
        raise ValueError(
            f"in_context_start has no effect on {source}: its config.json records "
            "the architecture (on the command line drop --in-context-start)"
        )
    if is_hf_uri(source):
        folder, label = fetch_hub_folder(
            str(source), CONFIG_NAME, WEIGHTS_NAME, MAX_CONFIG_BYTES, weights_bound
        )
    else:
        folder, label = Path(source), str(source)
    config = read_hub_config(folder / CONFIG_NAME)
    check_one_set(label, config.weights or None, weights)
    net, recommends = _read_weights(folder / WEIGHTS_NAME, config, device, overrides)
    # config.json always holds sampler settings; pixeljit's defaults there, for weights whose
    # file records none, are no recommendation (a round trip said "recommended" of them)
    sampler = config.sampler if recommends or config.sampler != SamplerConfig() else None
    shown = f"{label} ({config.weights})" if config.weights else label
    return trained_model(
        net,
        config.objective,
        config.class_names,
        shown,
        config.weights,
        config.step,
        sampler,
    )


def _read_weights(path: Path, config: HubConfig, device, overrides: dict) -> tuple[JiT, bool]:
    """The network, and whether the file records recommended sampler settings itself."""
    from safetensors import SafetensorError, safe_open

    refuse_special_file(path)  # a named pipe is never opened (it would wait for a writer)
    if not path.is_file():
        raise FileNotFoundError(
            f"hub folder {path.parent} has no {WEIGHTS_NAME}: copy it beside "
            f"{CONFIG_NAME} or export again with `pixeljit convert SOURCE "
            "--hub DIR`"
        )
    jit_config = config.jit_config(str(path.parent / CONFIG_NAME), **overrides)
    file_bytes = path.stat().st_size
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            _check_own_metadata(path, metadata, config)
            dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
            odd = sorted(f"{k} ({d})" for k, d in dtypes.items() if d not in SAFETENSORS_FLOATS)
            if odd:
                raise ValueError(f"{path}: weights must be floating point; got {odd[:5]}")
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            net = meta_model(jit_config, shapes, str(path), file_bytes)  # nothing read yet
            state = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as err:
        raise ValueError(f"{path} is not a valid .safetensors file ({err})") from None
    check_recorded_checksums(path, metadata, state)
    return materialise(net, state, str(path), device), "sampler" in metadata


def _check_own_metadata(path: Path, metadata: dict, config: HubConfig) -> None:
    """model.safetensors records its architecture, objective, class names and which weights these
    are (it loads alone): where it does, config.json must say the same, or the weights would be
    built or sampled as something they are not (another prediction target draws other images, a
    reordered name list another class), or scores published for other weights."""
    own = metadata.get(SAFETENSORS_CONFIG_KEY)
    if own is not None and _parsed(own) != config.architecture:
        raise ValueError(
            f"{path}: its own metadata and {CONFIG_NAME} describe different "
            "architectures: the files do not belong together"
        )
    differ = []
    own = metadata.get("objective")
    if own is not None:
        objective = objective_from_metadata(path, _parsed(own), config.architecture["image_size"])
        pairs = zip(OBJECTIVE_KEYS, objective, config.objective, strict=True)
        fields = [f"{k} {there!r} there, {ours!r} in {CONFIG_NAME}"
                  for k, there, ours in pairs if there != ours]  # fmt: skip
        if fields:
            differ.append(f"objectives ({'; '.join(fields)})")
    own = metadata.get("class_names")
    if own is not None:
        names = check_class_names(path, _parsed(own), config.architecture.get("num_classes"))
        if names != config.class_names:
            differ.append("class names")
    own = metadata.get("weights")
    if own is not None:
        name, step = weights_metadata(path, _parsed(own))
        if (name or "") != (config.weights or "") or step != config.step:
            there = f"{name or 'unnamed'} at step {step}"
            ours = f"{config.weights or 'unnamed'} at step {config.step}"
            differ.append(f"weights ({there} there, {ours} in {CONFIG_NAME})")
    if differ:
        raise ValueError(
            f"{path}: its own metadata and {CONFIG_NAME} give different {' and '.join(differ)}: "
            "the files do not belong together; export the folder again with `pixeljit convert "
            "SOURCE --hub DIR --overwrite`"
        )


def _parsed(text: str):
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return None
