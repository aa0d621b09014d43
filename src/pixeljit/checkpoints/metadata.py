"""What a checkpoint file declares beside its weights, read and checked: the objective (prediction
target, noise scale, pre-conditioner and its σ_data), class names, the recommended sampler and
which weights these are. `load_trained` reads files with these, and `save_safetensors` checks
what it is given with the same functions, so no file is written that loading would refuse."""

from __future__ import annotations

import math
from collections import Counter

from pixeljit.diffusion.objective import (
    PRECONDITIONERS,
    PREDICTIONS,
    SIGMA_DATA,
    default_noise_scale,
    finite_number,
)
from pixeljit.diffusion.sampler import SamplerConfig

# what a .safetensors export without the field was trained with: ObjectiveConfig's defaults
# (the noise scale's, None, is the paper's image_size / 256). sigma_data is written only with the
# 'edm' pre-conditioner (the one that uses it), so other exports load in versions before it; an
# 'edm' file without it predates it: its run trained with 0.5 unless objective.sigma_data was set,
# which the file cannot tell (export it again from the run)
OBJECTIVE_DEFAULTS = {
    "prediction": "x",
    "noise_scale": None,
    "preconditioner": "none",
    "sigma_data": SIGMA_DATA,
}
USES_SIGMA_DATA = ("edm",)  # pre-conditioners whose coefficients depend on sigma_data

Objective = tuple[str, float, str, float]  # prediction, noise_scale, preconditioner, sigma_data


def objective_fields(prediction, noise_scale, preconditioner, sigma_data) -> dict:
    """The objective as a file's metadata (a .safetensors export's, a hub config.json's) holds
    it: sigma_data only where the pre-conditioner uses it (`OBJECTIVE_DEFAULTS`)."""
    fields = {"prediction": prediction, "noise_scale": noise_scale,
              "preconditioner": preconditioner}  # fmt: skip
    return fields | ({"sigma_data": sigma_data} if preconditioner in USES_SIGMA_DATA else {})


def objective_from_metadata(source, fields, image_size: int) -> Objective:
    """The objective a .safetensors file's metadata records (a JSON object; a missing field
    takes its `OBJECTIVE_DEFAULTS` value, as training without it would have), checked."""
    if not isinstance(fields, dict):
        raise ValueError(f"{source}: metadata 'objective' must be a JSON object")
    unknown = sorted(str(k) for k in fields if k not in OBJECTIVE_DEFAULTS)
    if unknown:  # a misspelt 'noise' left the scale at its default, silently
        raise ValueError(
            f"{source}: objective has unknown key(s) {', '.join(map(repr, unknown))}: it takes "
            f"{', '.join(OBJECTIVE_DEFAULTS)}"
        )
    values = {k: fields.get(k, v) for k, v in OBJECTIVE_DEFAULTS.items()}
    if "noise_scale" not in fields:
        values["noise_scale"] = default_noise_scale(image_size)
    return check_objective(source, *values.values())


def check_objective(
    source, prediction, noise_scale, preconditioner, sigma_data=SIGMA_DATA
) -> Objective:
    """The objective a checkpoint declares, checked (a file may say anything); the numbers as
    floats."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"{source}: prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(
            f"{source}: preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}"
        )
    scale = _positive(source, "noise_scale", noise_scale)
    return prediction, scale, preconditioner, _positive(source, "sigma_data", sigma_data)


def _positive(source, name: str, value) -> float:
    """`value` as a float if it is a finite number > 0, else a one-line error naming `source`."""
    try:
        number = finite_number(name, value)
    except ValueError:
        number = math.nan
    if not number > 0:
        raise ValueError(f"{source}: {name} must be a finite number > 0, got {value!r}")
    return number


def check_class_names(source, names, num_classes=None) -> tuple[str, ...] | None:
    """Class names as a tuple (None for none): a list of distinct strings, and no more than
    `num_classes` when that is given (anything but an integer there is refused)."""
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{source}: class_names must be a list of strings")
    bounded = isinstance(num_classes, int) and not isinstance(num_classes, bool)
    if num_classes is not None and (not bounded or len(names) > num_classes):
        raise ValueError(f"{source}: {len(names)} class names for num_classes {num_classes!r}: "
                         "there must be no more names than classes")  # fmt: skip
    repeated = sorted(n for n, k in Counter(names).items() if k > 1)
    if repeated:  # a name → index lookup would only ever find the first
        raise ValueError(f"{source}: class_names must be distinct, {', '.join(map(repr, repeated))}"
                         " appear more than once: give each class its own name")  # fmt: skip
    return tuple(names) if names else None


def sampler_config(fields: dict, where: str) -> SamplerConfig:
    """SamplerConfig from JSON-read fields (`SamplerConfig.as_json`); `where` leads the error."""
    try:
        return SamplerConfig(**fields)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from None


MAX_WEIGHTS_NAME = 100  # characters of a weights name ('ema:0.9999', 'model_ema1', …)


def weights_metadata(source, data) -> tuple[str, int | None]:
    """(name, step) of the weights a .safetensors records ('' and None when it records none)."""
    if data is None:
        return "", None
    well_formed = isinstance(data, dict) and set(data) <= {"name", "step"}
    name, step = (data.get("name"), data.get("step")) if well_formed else (None, None)
    good_name = name is None or (
        isinstance(name, str) and 0 < len(name) <= MAX_WEIGHTS_NAME and name.isprintable()
    )
    good_step = step is None or (type(step) is int and step >= 0)
    if not (well_formed and good_name and good_step):
        raise ValueError(f"{source}: metadata 'weights' must be {{\"name\": short text or null, "
                         "\"step\": integer ≥ 0 or null}")  # fmt: skip
    return name or "", step


def sampler_from_metadata(source, data) -> SamplerConfig | None:
    """The recommended sampler a .safetensors records (None when it records none); every key a
    SamplerConfig field, every value valid, or a one-line error naming the file."""
    if data is None:
        return None
    known = SamplerConfig().kwargs()
    if not isinstance(data, dict) or not set(data) <= set(known):
        raise ValueError(f"{source}: metadata 'sampler' must be an object with fields among "
                         f"{sorted(known)}")  # fmt: skip
    return sampler_config(data, f"{source}: invalid sampler settings in its metadata")
