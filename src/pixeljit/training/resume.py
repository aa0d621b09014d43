"""What may differ between a checkpoint and the run that resumes it.

Every config field falls in one class (`field_class`), and a test holds every field of
`RunConfig` to an explicit entry here:

- logistical: where and how often things are written, the run's length, preview sampling. Free.
- resolved: `run.device`, `run.precision`, `run.compile`, `run.distributed`,
  `run.activation_checkpointing`, `run.fsdp_bf16_params`, `run.bf16_residual`,
  `run.matmul_precision`, `optim.micro_batch` are compared by what they resolve to (the
  `execution` facts saved in each checkpoint: device type, bf16 or fp32, compiled or eager, a
  compiled graph with checkpointed blocks, FSDP2 gathering bf16 parameters, a bf16 residual
  stream, the float32 matmul precision, world size, micro-batch, strategy), since e.g. precision
  `auto` and `bf16`, or compile `auto` and `true`, are one thing on a GPU. A checkpoint written
  before `compiled` was recorded counts as compiled when its saved `run.compile` resolves so.
  The AdamW implementation (`adamw`: fused or foreach, `training.optimizer`) is a fact too; a
  checkpoint written before it was recorded used foreach.
- inexact: any change of the execution facts. The run would go on, but not bit for bit as it
  would have: refused unless `allow_inexact` (`--allow-inexact-resume`), which names each such
  change.
- data: each checkpoint records a fingerprint of the packed training set (`data_fingerprint`: a
  SHA-256 over its manifest's shard and label digests and class names); resuming on other data
  is inexact (checkpoints written before the fingerprint existed are not compared). Where the
  checkpoint has a fingerprint, `data.source` (where the data is) may change freely: the same
  data under another path, spelling or working folder resumes exactly. Paths are saved absolute.
- recipe: `run.seed` (it fixes the data order and every noise draw) and everything outside `run`
  but the length and previews (model, objective, optim, data): always refused.
- the length is free unless `optim.cooldown` > 0: the cool-down is a fraction of the run's length,
  so a new length moves it and the resume is inexact.

A field added to the config after a checkpoint was written is absent from its saved config; it
counts as the value that reproduces what the code did before the field existed (`ADDED_FIELDS`),
in the checkpoint and in a run folder's config.yaml alike, and is no changed setting. A change of
the training code without a config field raises the training revision every checkpoint records
(`revisions`): resuming an older revision is inexact where a change since touches the run.
"""

from __future__ import annotations

import hashlib
import json

from pixeljit.checkpoints.config_diff import diff_configs
from pixeljit.training.config import resolve_compile
from pixeljit.training.optimizer import ADAMW_BEFORE_FUSED, adamw_kind
from pixeljit.training.revisions import revision_changes, revision_fix

LOGISTICAL = frozenset({"run.out", "run.log_every", "run.ckpt_every", "run.milestone_every",
                        "run.tensorboard", "optim.steps", "optim.epochs"})  # fmt: skip
LOGISTICAL_SECTIONS = ("sample.",)  # previews draw from their own seeds
RESOLVED = frozenset({"run.device", "run.precision", "run.compile", "run.distributed",
                      "run.activation_checkpointing", "run.fsdp_bf16_params",
                      "run.bf16_residual", "run.matmul_precision",
                      "optim.micro_batch"})  # fmt: skip
INEXACT: frozenset[str] = frozenset()  # config fields compared as they are (none at present)
RECIPE_RUN = frozenset({"run.seed"})
ALLOW_FLAG = "--allow-inexact-resume"
DATA_KEY = "data_fingerprint"  # the checkpoint field holding `data_fingerprint(dataset)`
MANIFEST_CONTENT_KEYS = ("shards", "labels", "class_names", "image_shape", "num_classes")
# fields added since checkpoints were first written → the value that means the old behaviour
# (sample.grid / shift / t_min: 31a4b61; ema_warmup, cooldown: 5e36d5f; ema_warmup_offset:
# 39dff44; activation_checkpointing, fsdp_bf16_params: e969636; bf16_residual: 3bc7486;
# decay_1d: AdamW decayed every parameter before 1-D ones were exempt; a value that depends on
# the section is a function of it: without weight decay the field means nothing, its default)
ADDED_FIELDS = {("optim", "ema_warmup"): False, ("optim", "cooldown"): 0.0,
                ("optim", "decay_1d"): lambda optim: _positive(optim.get("weight_decay")),
                ("optim", "ema_warmup_offset"): 10.0,
                ("run", "activation_checkpointing"): False, ("run", "fsdp_bf16_params"): False,
                ("run", "bf16_residual"): False, ("run", "matmul_precision"): "highest",
                ("sample", "grid"): "uniform",
                ("sample", "shift"): 3.0, ("sample", "t_min"): 0.001}  # fmt: skip
# execution facts added since checkpoints were first written → the value they had before
ADDED_FACTS = {"checkpointed_graph": False, "fsdp_bf16_params": False, "bf16_residual": False,
               "matmul_precision": "highest"}  # fmt: skip
LENGTH_FIELDS = ("steps", "epochs")  # optim fields that set the run's length, steps first


def run_length(optim: dict) -> tuple:
    """The field that sets a run's length and its value: optim.steps when set (it wins), else
    optim.epochs (so epochs left beside steps, or cleared by --steps, is no change)."""
    for name in LENGTH_FIELDS:
        if optim.get(name) is not None:
            return name, optim[name]
    return ()


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def with_added_fields(config: dict) -> dict:
    """A saved config (or a run's config.yaml) with every field of `ADDED_FIELDS` it lacks
    filled in (a copy): compared so, a field a newer version added is no difference."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for (section, name), old in ADDED_FIELDS.items():
        if isinstance(out.get(section), dict) and name not in out[section]:
            out[section][name] = old(out[section]) if callable(old) else old
    return out


def data_fingerprint(dataset) -> str | None:
    """SHA-256 of what a packed set's manifest says its content is (file digests, class names,
    shape); None for a set without a manifest (an in-memory one)."""
    manifest = getattr(dataset, "manifest", None)
    if not isinstance(manifest, dict):
        return None
    content = {k: manifest.get(k) for k in MANIFEST_CONTENT_KEYS}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def field_class(name: str) -> str:
    """'logistical', 'resolved', 'inexact' or 'recipe' for a dotted config field name."""
    if name in LOGISTICAL or name.startswith(LOGISTICAL_SECTIONS):
        return "logistical"
    if name in RESOLVED:
        return "resolved"
    if name in INEXACT:
        return "inexact"
    return "recipe"


def execution_facts(
    plan, info, strategy: str, compiled: bool, checkpointing: bool = False,
    fsdp_bf16_params: bool = False, bf16_residual: bool = False, matmul: str = "highest",
) -> dict:  # fmt: skip
    """How the run executes, as resolved on this machine (saved in every checkpoint).

    Activation checkpointing recomputes the same values bit for bit in eager mode, so it is a
    fact only for a compiled model, whose backward graph the compiler then partitions anew.
    bf16 parameter gathering is one only where FSDP2 runs (torchrun, more than one rank)."""
    sharded = strategy == "fsdp" and info.world_size > 1
    return {
        "device_type": info.device.type,
        "precision": "bf16" if plan.bf16 else "fp32",
        "compiled": compiled,
        "checkpointed_graph": bool(checkpointing and compiled),
        "adamw": adamw_kind(info.device.type),
        "world_size": info.world_size,
        "micro_batch": plan.micro_batch,
        "strategy": strategy if info.world_size > 1 else "single",
        "fsdp_bf16_params": bool(fsdp_bf16_params and sharded),
        "bf16_residual": bool(bf16_residual and plan.bf16),
        "matmul_precision": matmul,  # float32 matrix products (autocast leaves some in float32)
    }


# filled from the data when the run starts (setup.resolve_config): unknown before it is opened
RESOLVED_FROM_DATA = (("model", "num_classes"), ("objective", "noise_scale"))


SOURCE_FIELD = "data.source"  # where the data is, not what it is: the fingerprint says that
# where the run and its data are, not what it trains: moving them changes no setting
PLACE_FIELDS = frozenset({"run.out", SOURCE_FIELD})


def _refuse_recipe_changes(saved: dict, saved_config: dict, config: dict, path) -> None:
    """A checkpoint with a data fingerprint identifies its data by content (`check_resume`
    compares it), so the data's path may differ: another spelling, working folder or copy."""
    free = {SOURCE_FIELD} if saved.get(DATA_KEY) is not None else set()
    recipe = []
    for difference in diff_configs(saved_config, config):
        name = difference.split(":", 1)[0]
        if field_class(name) == "recipe" and name not in free:
            recipe.append(difference)
    if recipe:
        raise ValueError(
            f"config differs from the checkpoint {path} in: " + "; ".join(recipe) + "; set these "
            "back (a run's recipe cannot change on resume), or train them as a new run: without "
            "--resume, into another --out or with --restart to move this run aside"
        )


def check_recipe_before_data(saved: dict, config: dict, path, known: dict | None = None) -> None:
    """The recipe check of `check_resume` on the config as given, before the data is opened (or
    packed: minutes for a large set); the fields the data fills in are taken as saved here, or
    as `known` ({(section, name): value} of those already known, e.g. an image folder's classes
    from its sub-folder names), and compared by `check_resume` once they are known."""
    saved_config = with_added_fields(saved["config"])
    given = {section: dict(fields) for section, fields in config.items()}
    for section, name in RESOLVED_FROM_DATA:
        if section in given and section in saved_config:
            value = (known or {}).get((section, name), saved_config[section].get(name))
            given[section][name] = value
    _refuse_recipe_changes(saved, saved_config, given, path)


def check_resume(
    saved: dict,
    config: dict,
    execution: dict,
    path: str,
    allow_inexact: bool,
    fingerprint: str | None = None,
    total_steps: int | None = None,
) -> list[str]:
    """Raise if the resumed run may not continue `saved` (a checkpoint dict); return the inexact
    changes that `allow_inexact` lets through (empty when the resume is bit-exact).
    `total_steps`: the resumed run's length, where known (the training code's revisions since
    the checkpoint touch only the steps it trains)."""
    saved_config = with_added_fields(saved["config"])
    _refuse_recipe_changes(saved, saved_config, config, path)
    inexact = [d for d in diff_configs(saved_config, config)
               if field_class(d.split(":", 1)[0]) == "inexact"]  # fmt: skip
    cooldown = config.get("optim", {}).get("cooldown", 0.0)
    was_optim, now_optim = saved_config.get("optim", {}), config.get("optim", {})
    if cooldown and run_length(was_optim) != run_length(now_optim):
        inexact.append(
            f"the run's length (optim.steps {was_optim.get('steps')} → {now_optim.get('steps')}, "
            f"optim.epochs {was_optim.get('epochs')} → {now_optim.get('epochs')}) moves the "
            f"learning-rate cool-down (optim.cooldown {cooldown} of the length)"
        )
    before = saved.get("execution")
    if before is not None and "compiled" not in before:  # written before it was recorded
        setting = saved["config"].get("run", {}).get("compile", False)
        before = {**before, "compiled": resolve_compile(setting, before.get("device_type", ""))}
    if before is not None and "adamw" not in before:  # written before fused AdamW (foreach)
        before = {**before, "adamw": ADAMW_BEFORE_FUSED}
    if before is not None:
        before = {**ADDED_FACTS, **before}
        inexact += [f"execution.{d}" for d in diff_configs(before, {**ADDED_FACTS, **execution})]
    was = saved.get(DATA_KEY)
    if was is not None and fingerprint is not None and was != fingerprint:
        source = config.get("data", {}).get("source")
        inexact.append(
            f"the training data (--data {source}) changed since the checkpoint was written "
            f"(fingerprint {was[:12]}… vs now {fingerprint[:12]}…)"
        )
    revised = revision_changes(saved, execution, total_steps)
    if (inexact or revised) and not allow_inexact:
        world = _same_world(before, execution)
        raise ValueError(inexact_refusal(path, saved, inexact, revised, world))
    return inexact + revised


def inexact_refusal(
    path, saved: dict, changes: list[str], revised: list[str], world: str = ""
) -> str:
    """The one-line refusal of an inexact resume of `saved` (from `path`): the `changes` of its
    config, execution or data, set back `world` (`_same_world`), and the `revised` behaviour of
    the training code (`revisions.revision_changes`), resumed by the code that wrote it."""
    ways = [f"set {'the others' if revised else 'these'} back{world}"] if changes else []
    ways += [revision_fix(saved)] if revised else []
    return (
        f"resuming {path} with a change would not continue the run bit-exactly: "
        + "; ".join(changes + revised)
        + f"; {' and '.join(ways)}, or pass {ALLOW_FLAG} to continue anyway"
    )


def _same_world(before: dict | None, execution: dict) -> str:
    """How to resume in the checkpoint's world size when it differs: the command that sets it,
    not a config field (' (…)', or '' when it is the same)."""
    world = (before or {}).get("world_size")
    if world is None or world == execution.get("world_size"):
        return ""
    if world == 1:
        return " (the run was trained by one process: resume it without torchrun)"
    return (
        f" (the run was trained by {world} processes: resume it under `torchrun "
        f"--nproc_per_node {world}`, or over nodes with --nnodes × --nproc_per_node = {world})"
    )
