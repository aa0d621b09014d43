"""Training revisions: what the training code does that no config field records.

A run resumes bit-exactly only under the behaviour that trained it. A change of behaviour that
comes with a config field is covered by the field (its value for older runs reproduces the old
code: `resume.ADDED_FIELDS`); one without a field raises `TRAINING_REVISION`. Every checkpoint
records the revision of the code that wrote it (`REVISION_KEY`); a checkpoint without it was
written at revision 1. Resuming a checkpoint of an older revision continues under the new
behaviour: bit for bit as before where none of the changes since touches the run (nothing is
said), else it is an inexact resume (`resume.check_resume`: refused unless
--allow-inexact-resume), naming each change that touches the run and why.

Revisions, and when a change touches a run:

1. Every checkpoint written before e7c8584 (2 Dec 2026): they carry no `training_revision`.
2. e7c8584 (2 Dec 2026), the authors' numerics:
   - warm-up: step k of a W-step warm-up trains at base·k/W (was base·(k+1)/W); touches a run
     resumed at a step inside its warm-up (step < W);
   - dropout: the default block range is depth//4 ≤ i < depth//4·3 (was i < 3·depth//4), and
     `model.attn_dropout` acts only in those blocks (was in every block); touches a run with
     `model.dropout` > 0 whose range moved, or `model.attn_dropout` > 0 and blocks outside it;
   - `model.attention='fp32'`: the attention weights multiply V under the ambient autocast (was
     float32) and QKᵀ is scaled by ·(1/√d) (was /√d); touches a bf16 run, or a head dimension d
     that is not a power of 4 (1/√d then rounds, and the two scalings differ in the last bit).
3. pixeljit.rng (2 Dec 2026): `derive_seed` writes a key of 2³² or more as two words and a
   mark (numpy's SeedSequence read (b + a·2³², k) as (b, a, k) and padded short tuples with
   zeros, so such seeds collided with others); the data order and the step noise derive from
   `run.seed`: touches a run whose `run.seed` is 2³² or more.
4. the loader's epoch cut (2 Dec 2026): with gradient accumulation an epoch ends where a whole
   optimiser step of G samples no longer fits (it ended where a micro-step of micro × W did,
   so one process accumulating saw other samples than W processes after the first epoch);
   touches a run whose micro-step is smaller than its step and N mod G ≥ micro × W, and whose
   resumed steps draw a micro-batch where the two cuts differ (`_cut_reached`).

No change touches a resume with nothing left to train (its checkpoint at or past the run's
length): it trains no step.

A new revision: raise `TRAINING_REVISION`, add its commit to `SINCE` and a function naming the
changes that touch a run to `_CHANGES`, and list it above.
"""

from __future__ import annotations

import numpy as np

from pixeljit.rng import WORD_BITS

REVISION_KEY = "training_revision"  # the checkpoint field: the revision of the code that wrote it
TRAINING_REVISION = 4  # this code's (see the module doc for what each revision changed)
FIRST_REVISION = 1  # a checkpoint without REVISION_KEY
WIDE_KEY = 1 << WORD_BITS  # seeds from here on derive otherwise since revision 3
# the change that made each revision
SINCE = {2: "e7c8584, 2 Dec 2026", 3: "the wide-seed fix of pixeljit.rng, 2 Dec 2026",
         4: "the epoch cut of gradient accumulation, 2 Dec 2026"}  # fmt: skip


def checkpoint_revision(saved: dict) -> int:
    """The training revision `saved` (a checkpoint dict) was written at."""
    value = saved.get(REVISION_KEY, FIRST_REVISION)
    if isinstance(value, bool) or not isinstance(value, int) or value < FIRST_REVISION:
        raise ValueError(
            f"checkpoint {saved.get('path')}: {REVISION_KEY} must be a whole number ≥ "
            f"{FIRST_REVISION}, got {value!r}; the file was altered or is not pixeljit's: resume "
            "a checkpoint pixeljit wrote"
        )
    return value


def revision_changes(
    saved: dict, execution: dict | None = None, total_steps: int | None = None
) -> list[str]:
    """What changed in the training code since the revision that wrote `saved` (a checkpoint
    dict) and touches its run, each naming the change and why it matters here; [] when the
    resume is as exact as under the old code. `execution`: the resumed run's execution facts
    (None before they are known; the checkpoint's own then say whether it trains in bf16).
    `total_steps`: the resumed run's length (None where not known): a checkpoint at or past it
    trains nothing, which no change of the training code can alter."""
    was = checkpoint_revision(saved)
    if total_steps is not None and saved.get("step", 0) >= total_steps:
        return []
    if was > TRAINING_REVISION:
        return [
            f"the checkpoint was written by a newer pixeljit, of training revision {was} (this "
            f"one trains revision {TRAINING_REVISION}), whose changes are unknown here"
        ]
    found = []
    for revision in range(was + 1, TRAINING_REVISION + 1):
        prefix = f"training revision {revision - 1} → {revision} ({SINCE[revision]})"
        changes = _CHANGES[revision](saved, execution, total_steps)
        found += [f"{prefix}: {change}" for change in changes]
    return found


def revision_fix(saved: dict) -> str:
    """How to resume `saved` under the behaviour that trained it (for a refusal's advice)."""
    was = checkpoint_revision(saved)
    if was > TRAINING_REVISION:
        return f"resume it with a pixeljit of training revision {was} or newer"
    return (
        f"resume it with the pixeljit that wrote it (training revision {was}, before "
        f"{SINCE[was + 1]})"
    )


def _steps_per_epoch(saved: dict) -> int | None:
    """Optimiser steps an epoch of the run `saved` is a checkpoint of, as the batch plan
    (`setup.resolve_config`) makes it from the data size and the batch per loader its loader
    state records; None where the checkpoint does not say."""
    batch = saved.get("config", {}).get("optim", {}).get("global_batch")
    loader = saved.get("loader") or {}
    samples, per_loader = loader.get("num_samples"), loader.get("global_batch")
    if not all(_whole(n) and n >= 1 for n in (batch, samples, per_loader)):
        return None
    from pixeljit.training.setup import epoch_steps

    return epoch_steps(samples, per_loader, max(1, batch // per_loader))


def warmup_steps(saved: dict) -> int | None:
    """The warm-up length in steps of the run `saved` is a checkpoint of (optim.warmup_epochs ×
    steps an epoch, as the batch plan makes it); None where the checkpoint does not say."""
    epochs = saved.get("config", {}).get("optim", {}).get("warmup_epochs")
    per_epoch = _steps_per_epoch(saved)
    if per_epoch is None or not isinstance(epochs, (int, float)) or isinstance(epochs, bool):
        return None
    return int(np.round(float(epochs) * per_epoch))


def planned_steps(saved: dict, steps: int | None, epochs: float | None) -> int | None:
    """The length in steps of a resume of `saved` asked to train `steps` (which wins) or else
    `epochs`, as the batch plan makes it over the checkpoint's own data size (the data is not
    open yet); None where not known. The check once the data is open uses the plan's own."""
    if steps is not None:
        return steps
    per_epoch = _steps_per_epoch(saved)
    if per_epoch is None or not isinstance(epochs, (int, float)) or isinstance(epochs, bool):
        return None
    total = float(epochs) * per_epoch
    return max(1, int(np.ceil(total))) if np.isfinite(total) else None


def _whole(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool)


def _blocks(lo: int, hi: int, depth: int) -> str:
    inside = [i for i in range(depth) if lo <= i < hi]
    if not inside:
        return "no block"
    if len(inside) == 1:
        return f"block {inside[0]}"
    return f"blocks {inside[0]}–{inside[-1]}"


def _trains_bf16(saved: dict, execution: dict | None) -> bool:
    facts = [saved.get("execution") or {}, execution or {}]
    if any(f.get("precision") == "bf16" for f in facts):
        return True
    return saved.get("config", {}).get("run", {}).get("precision") == "bf16"


def _power_of_4(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0 and (n.bit_length() - 1) % 2 == 0


def _changes_in_2(saved: dict, execution: dict | None, total_steps: int | None) -> list[str]:
    """The changes of e7c8584 (see the module doc) that touch the run of `saved`."""
    config = saved.get("config", {})
    optim, model = config.get("optim", {}), config.get("model", {})
    found = []
    step, warmup = saved.get("step", 0), warmup_steps(saved)
    if warmup is not None and step < warmup:  # every checkpoint pixeljit wrote tells (its loader)
        found.append(
            f"the learning-rate warm-up trains step k at base·k/W (it was base·(k+1)/W), and the "
            f"checkpoint's step {step} lies inside its warm-up of {warmup} steps "
            f"(optim.warmup_epochs {optim.get('warmup_epochs')})"
        )
    depth = model.get("depth", 0)
    given = model.get("dropout_blocks")
    old = tuple(given) if given is not None else (depth // 4, 3 * depth // 4)
    new = tuple(given) if given is not None else (depth // 4, depth // 4 * 3)
    dropout, attn_dropout = model.get("dropout") or 0.0, model.get("attn_dropout") or 0.0
    if dropout > 0 and _blocks(*old, depth) != _blocks(*new, depth):
        found.append(
            f"model.dropout acts in {_blocks(*new, depth)} of model.depth {depth} by default "
            f"(depth//4 ≤ i < depth//4·3; it acted in {_blocks(*old, depth)}, i < 3·depth//4), "
            f"and this run has model.dropout {dropout}"
        )
    if attn_dropout > 0 and _blocks(*new, depth) != _blocks(0, depth, depth):
        found.append(
            f"model.attn_dropout acts only in the dropout blocks ({_blocks(*new, depth)} of "
            f"model.depth {depth}; it acted in every block), and this run has "
            f"model.attn_dropout {attn_dropout}"
        )
    if model.get("attention") == "fp32":
        heads = model.get("num_heads") or 1
        head_dim = (model.get("hidden_size") or 0) // heads
        why = None
        if _trains_bf16(saved, execution):
            why = "this run trains in bf16"
        elif not _power_of_4(head_dim):
            why = (f"this run's head dimension {head_dim} is not a power of 4, so 1/√{head_dim} "
                   "rounds and the two scalings differ")  # fmt: skip
        if why is not None:
            found.append(
                "model.attention 'fp32' multiplies the attention weights by V under the ambient "
                "autocast and scales QKᵀ by ·(1/√d) (it multiplied in float32 and divided by "
                f"√d), and {why}"
            )
    return found


def _changes_in_3(saved: dict, execution: dict | None, total_steps: int | None) -> list[str]:
    """The seed derivation's change (see the module doc), where it touches the run of `saved`."""
    seed = saved.get("config", {}).get("run", {}).get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < WIDE_KEY:
        return []
    return [
        f"the data order and the training noise derive from run.seed {seed} otherwise (a seed "
        "of 2³² or more was read as two smaller keys, and collided with other seeds)"
    ]


def _changes_in_4(saved: dict, execution: dict | None, total_steps: int | None) -> list[str]:
    """The epoch cut's change (see the module doc), where it touches the run of `saved`: where
    the resumed run's draws (as far as `total_steps` tells) would come from other samples."""
    loader = saved.get("loader") or {}
    step_batch = saved.get("config", {}).get("optim", {}).get("global_batch")
    micro, samples = loader.get("global_batch"), loader.get("num_samples")
    if not all(_whole(n) and n > 0 for n in (step_batch, micro, samples)):
        return []
    if micro >= step_batch or samples % step_batch < micro:
        return []  # no accumulation, or both cuts drop the same samples
    where = "from its first epoch end on (if it trains that far)"
    if total_steps is not None:
        draws = (total_steps - saved.get("step", 0)) * (step_batch // micro)
        if not _cut_reached(loader, step_batch, micro, samples, draws):
            return []
        where = "before its end"
    return [
        f"an epoch ends where a whole step of optim.global_batch {step_batch} no longer fits (it "
        f"ended where a micro-step of {micro} did), and this run accumulates micro-steps of "
        f"{micro} over a data set of {samples}: {where} it sees other samples"
    ]


def _cut_reached(loader: dict, step_batch: int, micro: int, samples: int, draws: int) -> bool:
    """Whether `draws` micro-batches of `micro` from the loader state `loader` (as the code
    before revision 4 settled it) come from other (epoch, position)s under revision 4's epoch
    cut (an epoch ends where a whole step no longer fits; the loader settles a loaded state so)
    than under the cut before it (where a micro-batch no longer fits). True where unknown."""
    epoch, position = loader.get("epoch"), loader.get("position")
    if not (_whole(epoch) and _whole(position) and 0 <= position <= samples):
        return True

    def settled(e: int, p: int) -> tuple[int, int]:  # revision 4 (DeviceLoader._settled)
        cut = (p % step_batch == 0 and p + step_batch > samples) or p + micro > samples
        return (e + 1, 0) if cut else (e, p)

    old, new = (epoch, position), settled(epoch, position)
    while draws > 0:  # at most about two epochs of draws: the cut differs in each epoch
        if old != new:
            return True
        e, p = old
        free = (samples - step_batch - micro - p) // micro  # draws neither cut can end
        if free > 1:
            jump = min(free - 1, draws)
            old = new = (e, p + jump * micro)
            draws -= jump
            continue
        old = (e + 1, 0) if p + 2 * micro > samples else (e, p + micro)
        new = settled(e, p + micro)
        draws -= 1
    return False


_CHANGES = {2: _changes_in_2, 3: _changes_in_3, 4: _changes_in_4}  # revision → its changes
