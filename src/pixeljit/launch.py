"""What torchrun tells each process it starts, read from the environment before any process
group exists and without importing torch (the command line reads it before the verbs load): a
process started without torchrun is rank 0 of 1.

The variables are checked where they are read, so every verb refuses the same stray or broken
ones with one line naming the variable, its value and the fix: an empty or non-numeric
WORLD_SIZE (a shell's `WORLD_SIZE=`), a world of 0, a RANK outside the WORLD_SIZE, or given
without one (`check_launch_variables`), a LOCAL_RANK beyond the RANK; and, where processes are to
meet (a process group; a verb refusing torchrun), a WORLD_SIZE above 1 without the RANK,
MASTER_ADDR and MASTER_PORT that torchrun sets beside it (set by hand: no other process would
ever come, `check_started_together`)."""

from __future__ import annotations

import os

LAUNCH_FIX = "launch with torchrun (which sets them all)"
# what torchrun sets beside WORLD_SIZE, which processes meeting in a process group need
TOGETHER = ("RANK", "MASTER_ADDR", "MASTER_PORT")


def _number(name: str, what: str) -> int | None:
    """The integer value of variable `name` (None when unset); ValueError naming it otherwise."""
    text = os.environ.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not {what}; unset it, or {LAUNCH_FIX}") from None


def _process_count(name: str) -> int:
    """Variable `name` as a count of processes (1 when unset); ValueError (one line naming the
    variable and the fix) for one that is no process count."""
    count = _number(name, "a process count")
    if count is None:
        return 1
    if count < 1:
        raise ValueError(
            f"{name}={os.environ[name]!r} is not a process count (1 or more); unset it, or "
            f"{LAUNCH_FIX}"
        )
    return count


def launch_world_size() -> int:
    """How many processes torchrun started (1 without torchrun); ValueError (one line naming
    the variable and the fix) for a WORLD_SIZE that is no process count."""
    return _process_count("WORLD_SIZE")


def launch_rank() -> int:
    """This process's rank as torchrun announces it (0 without torchrun, or where RANK is not
    set: `check_started_together` refuses a multi-process world without one); ValueError for a
    RANK that is no rank of WORLD_SIZE's."""
    world = launch_world_size()
    rank = _number("RANK", "a rank")
    if rank is None:
        return 0
    given = os.environ.get("WORLD_SIZE")
    if rank < 0 or (given is not None and rank >= world):
        within = f" of WORLD_SIZE={given!r} (0 to {world - 1})" if given is not None else ""
        raise ValueError(
            f"RANK={os.environ['RANK']!r} is not a rank{within}; unset RANK and WORLD_SIZE, or "
            f"{LAUNCH_FIX}"
        )
    return rank


def launch_local_rank() -> int:
    """This process's rank on its own machine (LOCAL_RANK; 0 without torchrun): which GPU it
    takes. ValueError for one that is no rank, above the RANK, or beyond LOCAL_WORLD_SIZE."""
    rank = launch_rank()
    local = _number("LOCAL_RANK", "a rank")
    if local is None:
        return 0
    local_world = _number("LOCAL_WORLD_SIZE", "a process count")
    if local < 0 or local > rank or (local_world is not None and local >= local_world):
        given = os.environ.get("RANK")
        beside = (f"RANK={given!r}" if given is not None else "rank 0 (RANK is not set)") + (
            f" and LOCAL_WORLD_SIZE={os.environ['LOCAL_WORLD_SIZE']!r}"
            if local_world is not None else ""
        )  # fmt: skip
        raise ValueError(
            f"LOCAL_RANK={os.environ['LOCAL_RANK']!r} does not fit {beside} (a process's rank "
            f"on its machine is 0 or more, at most its RANK, and below LOCAL_WORLD_SIZE); unset "
            f"LOCAL_RANK, or {LAUNCH_FIX}"
        )
    return local


def launch_local_world_size() -> int:
    """How many processes torchrun started on this machine (LOCAL_WORLD_SIZE; 1 without it):
    the processes that share its memory. ValueError for a value that is no process count."""
    return _process_count("LOCAL_WORLD_SIZE")


def check_launch_variables() -> tuple[int, int]:
    """(rank, world size), every launch variable checked: each readable, and a RANK given
    without a WORLD_SIZE refused (a process alone is rank 0; a stray `RANK=1` made its share
    of the work empty). Every verb checks them first."""
    launch_local_rank()
    launch_local_world_size()
    world, rank = launch_world_size(), launch_rank()
    if "WORLD_SIZE" not in os.environ and rank != 0:
        raise ValueError(
            f"RANK={os.environ['RANK']!r} but WORLD_SIZE is not set: without torchrun there is "
            f"one process, rank 0; unset RANK, or {LAUNCH_FIX}"
        )
    return rank, world


def check_started_together() -> int:
    """The world size, checked to be one torchrun started: above 1, the RANK, MASTER_ADDR and
    MASTER_PORT it sets beside WORLD_SIZE must be there (a WORLD_SIZE set by hand would have a
    process wait for others that never come, or torch say only that RANK is expected)."""
    world = check_launch_variables()[1]
    if world > 1:
        for needed in TOGETHER:
            if not os.environ.get(needed):
                state = "empty" if needed in os.environ else "not set"
                raise ValueError(
                    f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} says this is one of {world} "
                    f"processes, but {needed} is {state}: torchrun did not start it; unset "
                    f"WORLD_SIZE (and RANK) to run one process, or {LAUNCH_FIX}"
                )
    return world


def launch_or_none() -> tuple[int, int] | None:
    """(rank, world size), or None where the variables are broken: for what must not fail while
    an error is said (its rank tag)."""
    try:
        return check_launch_variables()
    except ValueError:
        return None
