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
   touches a run whose micro-step is smaller than its step and N mod G ≥ micro × W.

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


def revision_changes(saved: dict, execution: dict | None = None) -> list[str]:
    """What changed in the training code since the revision that wrote `saved` (a checkpoint
    dict) and touches its run, each naming the change and why it matters here; [] when the
    resume is as exact as under the old code. `execution`: the resumed run's execution facts
    (None before they are known; the checkpoint's own then say whether it trains in bf16)."""
    was = checkpoint_revision(saved)
    if was > TRAINING_REVISION:
        return [
            f"the checkpoint was written by a newer pixeljit, of training revision {was} (this "
            f"one trains revision {TRAINING_REVISION}), whose changes are unknown here"
        ]
    found = []
    for revision in range(was + 1, TRAINING_REVISION + 1):
        prefix = f"training revision {revision - 1} → {revision} ({SINCE[revision]})"
        found += [f"{prefix}: {change}" for change in _CHANGES[revision](saved, execution)]
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


def warmup_steps(saved: dict) -> int | None:
    """The warm-up length in steps of the run `saved` is a checkpoint of, as the batch plan
    (`setup.resolve_config`) makes it: optim.warmup_epochs × steps an epoch, from the data size
    and the batch per loader its loader state records; None where the checkpoint does not say."""
    optim = saved.get("config", {}).get("optim", {})
    loader = saved.get("loader") or {}
    epochs, batch = optim.get("warmup_epochs"), optim.get("global_batch")
    samples, per_loader = loader.get("num_samples"), loader.get("global_batch")
    numbers = (epochs, batch, samples, per_loader)
    if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
        return None
    if per_loader < 1 or batch < 1:
        return None
    from pixeljit.training.setup import epoch_steps

    accumulation = max(1, int(batch) // int(per_loader))
    steps_per_epoch = epoch_steps(int(samples), int(per_loader), accumulation)
    return int(np.round(float(epochs) * steps_per_epoch))


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


def _changes_in_2(saved: dict, execution: dict | None) -> list[str]:
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


def _changes_in_3(saved: dict, execution: dict | None) -> list[str]:
    """The seed derivation's change (see the module doc), where it touches the run of `saved`."""
    seed = saved.get("config", {}).get("run", {}).get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < WIDE_KEY:
        return []
    return [
        f"the data order and the training noise derive from run.seed {seed} otherwise (a seed "
        "of 2³² or more was read as two smaller keys, and collided with other seeds)"
    ]


def _changes_in_4(saved: dict, execution: dict | None) -> list[str]:
    """The epoch cut's change (see the module doc), where it touches the run of `saved`."""
    loader = saved.get("loader") or {}
    step_batch = saved.get("config", {}).get("optim", {}).get("global_batch")
    micro, samples = loader.get("global_batch"), loader.get("num_samples")
    numbers = (step_batch, micro, samples)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in numbers):
        return []
    if micro >= step_batch or samples % step_batch < micro:
        return []  # no accumulation, or both cuts drop the same samples
    return [
        f"an epoch ends where a whole step of optim.global_batch {step_batch} no longer fits (it "
        f"ended where a micro-step of {micro} did), and this run accumulates micro-steps of "
        f"{micro} over a data set of {samples}: from its first epoch end on (if it trains that "
        "far) it sees other samples"
    ]


_CHANGES = {2: _changes_in_2, 3: _changes_in_3, 4: _changes_in_4}  # revision → its changes
