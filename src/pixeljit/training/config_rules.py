"""What a user's layer of settings over a config means: the same rules for a `--config` file,
the `--set` flags and `apply_overrides` in Python, so each trains what the others would.

- Keys: {section: {field: value}} or {'section.field': value}, each field given once.
- Fields that interact: `optim.steps` or `optim.epochs` alone clears the other (the run's
  length is one of them; both at once are refused); `optim.blr` alone clears `optim.lr` (which
  would win over it; both at once are refused); `model.num_classes`, which the data fills in,
  changed is the number of classes asked for (`data.num_classes`; 0: an unconditional model).
- `model.image_size` changed over a config whose noise scale is image_size/256 (the paper's
  presets) moves the scale with it, unless `objective.noise_scale` is set too.
- A field the user changed that has no effect in the resolved config (a shift off the shifted
  grid, a CFG interval without guidance, …) is refused, naming what would give it one. A value
  equal to the one the config already holds is no request (a saved config.yaml replayed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pixeljit.diffusion.objective import default_noise_scale
from pixeljit.diffusion.solvers import VELOCITY_SOLVERS
from pixeljit.training.config import SECTIONS, TrainConfig, shown
from pixeljit.values import is_integer

Entry = tuple[object, object, "str | None"]  # (key, value, where given: named if repeated)


def flatten(entries: Mapping | Iterable[Entry]) -> dict:
    """{section: {field: value}} and {'section.field': value} entries (a mapping, or (key, value,
    origin) triples, origin None: described by the key) → {'section.field': value}; a field
    given twice (in both forms, or twice on the command line) is refused by name."""
    if isinstance(entries, Mapping):
        entries = [(key, value, None) for key, value in entries.items()]
    flat: dict = {}
    origin: dict = {}
    for key, value, given in entries:
        if not isinstance(key, str):
            raise ValueError(f"config key {shown(key)} must be a section name (e.g. optim), not a "
                             f"{type(key).__name__}")  # fmt: skip
        if key in SECTIONS and not isinstance(value, Mapping):
            raise ValueError(f"config section {shown(key)} must be a mapping of fields (e.g. "
                             f"{key}: {{field: value}}), got {shown(value)}")  # fmt: skip
        if isinstance(value, Mapping) and "." not in key:
            for sub in value:
                if not isinstance(sub, str):
                    raise ValueError(
                        f"config field {shown(sub)} of section {shown(key)} must be a name"
                    )
            given = given or f"in the {key} section"
            items = [(f"{key}.{sub}", v) for sub, v in value.items()]
        elif not key.partition(".")[2]:  # a bare key: a section name given a value, or a typo
            raise ValueError(f"unknown config section {shown(key)}; sections are {SECTIONS} "
                             "(each a mapping of fields; on the command line --set "
                             "section.field=value)")  # fmt: skip
        else:
            given = given or f"as {key}"
            items = [(key, value)]
        for dotted, v in items:
            if dotted in flat:
                raise ValueError(f"{dotted} is given twice ({origin[dotted]} and {given}): keep "
                                 "one")  # fmt: skip
            flat[dotted], origin[dotted] = v, given
    return flat


def layer_rules(flat: dict, where: str, base: TrainConfig) -> dict:
    """The fields a layer `flat` (given in `where`) over the config `base` also sets, where two
    fields interact (see the module docstring)."""
    extra: dict = {}
    steps, epochs = flat.get("optim.steps"), flat.get("optim.epochs")
    if steps is not None and epochs is not None:
        raise ValueError(
            f"{where} sets both optim.steps ({steps}) and optim.epochs ({epochs}); the run's "
            "length is one of them (optim.steps would win): keep one, or set the other to null"
        )
    if epochs is not None and "optim.steps" not in flat:
        extra["optim.steps"] = None
    if steps is not None and "optim.epochs" not in flat:
        extra["optim.epochs"] = None
    if "optim.blr" in flat:
        lr, blr = flat.get("optim.lr"), flat["optim.blr"]
        if lr is not None and blr != base.optim.blr:  # (the same blr: a saved config replayed)
            raise ValueError(
                f"{where} sets both optim.lr ({lr}) and optim.blr ({blr}); the rate is one of "
                "them (optim.lr would win; optim.blr gives lr = blr × global_batch / 256): keep "
                "one, or set optim.lr to null"
            )
        if "optim.lr" not in flat:  # the base rate asked for: a preset's absolute one goes
            extra["optim.lr"] = None
    extra.update(_class_rules(flat, where, base))
    extra.update(_noise_scale_rule(flat, base))
    return extra


def _noise_scale_rule(flat: dict, base: TrainConfig) -> dict:
    """A new model.image_size keeps the paper's SNR alignment (noise scale image_size/256) where
    `base` follows it and the layer sets no objective.noise_scale; a base with another scale
    (the Fashion-MNIST presets' 1 at 28 px) keeps its own."""
    size = flat.get("model.image_size")
    scale, old_size = base.objective.noise_scale, base.model.image_size
    if "objective.noise_scale" in flat or scale is None or not is_integer(size) or size < 1:
        return {}  # (a size that is no size is refused where the model section is checked)
    if int(size) == old_size or scale != default_noise_scale(old_size):
        return {}
    return {"objective.noise_scale": default_noise_scale(int(size))}


def _class_rules(flat: dict, where: str, base: TrainConfig) -> dict:
    """model.num_classes changed from `base`'s is the number of classes asked of the data."""
    classes = flat.get("model.num_classes", base.model.num_classes)
    if classes == base.model.num_classes:  # the same value (a saved config replayed) is no ask
        return {}
    data_classes, conditional = flat.get("data.num_classes"), flat.get("data.conditional")
    if data_classes is not None and data_classes != classes:
        raise ValueError(
            f"{where} sets model.num_classes {classes} and data.num_classes {data_classes}: "
            "the model's classes are the data's; keep data.num_classes"
        )
    if classes and conditional is False:
        raise ValueError(
            f"{where} sets model.num_classes {classes} and data.conditional false (a model "
            "without classes): keep one of them"
        )
    if classes == 0:  # a model without classes: the labels are not used
        return {"data.conditional": False}
    extra = {"data.num_classes": classes}  # labels outside it are refused at start
    if conditional is None and not base.data.conditional:  # (emoji-cpu: an unconditional recipe)
        extra["data.conditional"] = True
    return extra


def field_value(cfg: TrainConfig, key: str):
    section, _, name = key.partition(".")
    return getattr(getattr(cfg, section), name)


def changed(flat: dict, base: TrainConfig, new: TrainConfig) -> list[str]:
    """The keys of `flat` whose value in `new` differs from `base`'s: what the layer asked for."""
    return [key for key in flat if field_value(new, key) != field_value(base, key)]


def _unconditional(cfg: TrainConfig) -> bool:
    """Whether `cfg` trains a model without classes (which no scale guides)."""
    return not cfg.data.conditional or cfg.data.num_classes == 0 or cfg.model.num_classes == 0


def _a(kind: str) -> str:
    """The article before 'KIND-prediction': an x / an eps, a v."""
    return "an" if kind in ("x", "eps") else "a"


def _no_effect(cfg: TrainConfig) -> dict[str, str]:
    """{field: why it has no effect in `cfg`, and the fix} for the fields that have none."""
    m, o, s = cfg.model, cfg.objective, cfg.sample
    rules = {}
    if cfg.optim.lr is not None:
        rules["optim.blr"] = (
            f"while optim.lr {cfg.optim.lr:g} is set (the rate is optim.lr, else optim.blr × "
            "optim.global_batch / 256): set optim.lr=null to train at the base rate, or drop "
            "optim.blr"
        )
    if cfg.optim.weight_decay == 0:
        rules["optim.decay_1d"] = (
            "while optim.weight_decay is 0 (it says whether 1-D parameters decay too): set "
            "optim.weight_decay, or drop optim.decay_1d"
        )
    if s.grid != "shifted":
        rules["sample.shift"] = (
            f"on the {s.grid} time grid (sample.grid; only the shifted one has a shift): set "
            "sample.grid=shifted, or drop sample.shift"
        )
    if s.cfg == 1:
        rules["sample.interval"] = (
            "while sample.cfg is 1 (no guidance; the interval is where guidance applies): set "
            "sample.cfg to another scale, or drop sample.interval"
        )
    if _unconditional(cfg):
        for name in ("cfg", "interval"):
            rules[f"sample.{name}"] = (
                "for an unconditional model (data.conditional false, or no classes), which "
                f"cannot be guided (its previews take cfg 1): drop sample.{name}"
            )
    if o.t_sampler != "logit_normal":
        for name in ("p_mean", "p_std"):
            rules[f"objective.{name}"] = (
                f"with objective.t_sampler {o.t_sampler} (only logit_normal has p_mean and "
                f"p_std): set objective.t_sampler=logit_normal, or drop objective.{name}"
            )
    if not (o.prediction == "x" and o.loss != "x"):
        rules["objective.t_eps"] = (
            f"with objective.prediction {o.prediction} and objective.loss {o.loss} (it clamps "
            "1 − t where an x-prediction becomes an ε or v loss): drop objective.t_eps"
        )
    if not (o.prediction == "eps" and o.loss != "eps"):
        rules["objective.t_min"] = (
            f"with objective.prediction {o.prediction} and objective.loss {o.loss} (it clamps t "
            "where an ε-prediction becomes an x or v loss): drop objective.t_min"
        )
    if o.prediction != "x" or s.method not in VELOCITY_SOLVERS:
        why = f"{_a(o.prediction)} {o.prediction}-prediction"
        if o.prediction == "x":
            why = f"sample.method {s.method}, which steps on x̂, where the clamp cancels"
        rules["sample.t_eps"] = (
            f"for the previews with {why} (it clamps 1 − t where an x-prediction becomes a "
            "velocity, with euler / heun): drop sample.t_eps"
        )
    if o.prediction != "eps":
        rules["sample.t_min"] = (
            f"for the previews of {_a(o.prediction)} {o.prediction}-prediction (it clamps t "
            "where an ε-prediction is divided by it): drop sample.t_min"
        )
    if o.preconditioner != "edm":
        rules["objective.sigma_data"] = (
            f"with objective.preconditioner {o.preconditioner} (only edm uses sigma_data): set "
            "objective.preconditioner=edm, or drop objective.sigma_data"
        )
    if m.in_context_len == 0 and m.in_context_start != 0:  # (0: the start of no tokens)
        depth = m.depth
        outside = "" if 0 <= m.in_context_start < depth else f", and lies outside [0, {depth})"
        rules["model.in_context_start"] = (
            f"with model.in_context_len 0 (no in-context tokens){outside}: set "
            "model.in_context_len ≥ 1, or drop model.in_context_start"
        )
    if m.dropout == 0 and m.attn_dropout == 0 and m.dropout_blocks is not None:
        rules["model.dropout_blocks"] = (
            "while model.dropout and model.attn_dropout are 0 (no dropout to place): set one of "
            "them > 0, or drop model.dropout_blocks"
        )
    return rules


def check_effects(asked: Mapping[str, str | None], cfg: TrainConfig) -> None:
    """Refuse a field the user asked for (`asked`: field → where it was given, None in Python)
    that has no effect in the resolved config `cfg`."""
    _check_preview_guidance(asked, cfg)
    rules = _no_effect(cfg)
    for key, where in asked.items():
        if key in rules:
            said = f"{where}: " if where else ""
            value = field_value(cfg, key)
            value = shown(list(value) if isinstance(value, tuple) else value)  # as typed
            value = value.lower() if value in ("True", "False") else value  # YAML's spelling
            raise ValueError(f"{said}{key} {value} has no effect {rules[key]}")


# the guidance settings: asked for, some preview evaluation must fall inside the interval (a
# preset's scale with fewer steps only leaves the previews unguided)
GUIDANCE_FIELDS = ("sample.cfg", "sample.interval")


def _check_preview_guidance(asked: Mapping[str, str | None], cfg: TrainConfig) -> None:
    """Refuse asked sample settings under which the preview grids' guidance never applies (no
    evaluation time inside the interval): the grids would be unguided, said to be guided."""
    s = cfg.sample
    mine = [key for key in asked if key in GUIDANCE_FIELDS]
    if _unconditional(cfg):
        return  # its previews are never guided (training sets cfg 1; `_no_effect` says so)
    if not mine or s.cfg == 1 or s.guided_evaluations():
        return
    where = asked[mine[0]]
    said = f"{where}: " if where else ""
    low, high = s.interval
    scale = f"sample.cfg {s.cfg:g}"  # asked, or the preset's under an asked interval
    if "sample.cfg" not in mine:
        scale = f"with sample.interval ({low:g}, {high:g}), {scale}"
    raise ValueError(
        f"{said}{scale} would never apply to the preview grids: {s.method} with "
        f"sample.steps {s.steps} on the {s.grid} grid evaluates at t = {s.times_text()}, none "
        f"inside sample.interval ({low:g}, {high:g}) (open at both ends): raise sample.steps, "
        "widen sample.interval, or set sample.cfg=1"
    )
