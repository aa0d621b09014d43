"""Run a grid's cells one after another, or `jobs` at a time in worker processes.

The cells of a grid are independent training runs of small models; on a CPU with more cores
than one cell uses, running several at once is the cheap way to finish sooner (each worker keeps
the parent's torch thread count, so `jobs × threads` cores are busy). Every cell is still
`evidence.run_cell` (finished cells are read back, unfinished ones resume from their checkpoint),
so a cell gives the same result whichever process runs it, and the report lists the cells in
the grid's order whatever order they finish in.

Workers start with `spawn` (no forked torch state, the same on every OS). What every cell shares
(the measure, the extractor with its weights, the real reference, the train function) is
pickled to each worker once, when it starts; each task carries only its cell. A failed cell
stops the grid: the cells not started are cancelled, the running ones finish (their checkpoints
are kept), and the error is raised with the cell's name. Ctrl-C, or SIGINT / SIGTERM to this
process, stops every running cell at a step boundary with a checkpoint, starts no further one,
and returns once the workers have exited (see `_forward_signals`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import torch

from pixeljit.experiments.evidence import RERUN, Cell, Measure, RealReference, run_cell
from pixeljit.metrics.extractor import FeatureExtractor
from pixeljit.training import stopsignal

Report = Callable[[int, Cell, dict, bool], None]  # (1-based index, cell, result, kept)


STOP_POLL_S = 0.2  # how often the parent, waiting for cells, looks whether it was signalled
_shared: tuple = ()  # in a worker: (measure, extractor, real, train_fn), set by `_start_worker`
_stop = None  # in a worker: the grid's stop event, set by `_start_worker`
_in_cell = threading.Event()  # in a worker: set while it runs a cell


def _start_worker(stop, threads: int, *shared) -> None:
    """Each worker leaves the terminal's process group: Ctrl-C reaches the parent alone, which
    passes it on once (two SIGINTs would stop a cell at once, without its checkpoint). Until
    then it holds SIGINT blocked (`_workers_hold_sigint`): a Ctrl-C to the group while it was
    still importing torch ended it with a traceback; that one is dropped here (the parent's
    stop event says whether to start a cell at all). A thread watches the parent
    (`_watch_parent`)."""
    global _shared, _stop
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)
    if hasattr(signal, "pthread_sigmask"):
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)  # drops a pending group SIGINT
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    torch.set_num_threads(threads)
    _shared, _stop = shared, stop
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent) -> None:
    """A worker whose grid process is gone (`kill -9`) went on training the cells queued to it,
    then waited for work forever: it now stops its cell at a step boundary with a checkpoint
    (SIGTERM, as `kill PID` of the grid does), starts none, and exits."""
    parent.join()  # returns once the grid process has ended, however it ended
    if _stop is not None:
        _stop.set()  # the other workers start no further cell either
    os.kill(os.getpid(), signal.SIGTERM)  # idle: ends the process; in a cell: a checkpoint
    while _in_cell.is_set():
        time.sleep(STOP_POLL_S)
    os._exit(stopsignal.SIGNAL_EXIT_BASE + signal.SIGTERM)


def _run_in_worker(cell: Cell) -> tuple[dict, bool]:
    if _stop is not None and _stop.is_set():  # queued before the grid was stopped
        raise KeyboardInterrupt(f"cell {cell.name} not started: the grid was stopped")
    _in_cell.set()
    try:
        return run_cell(cell, *_shared)
    finally:
        _in_cell.clear()


@contextlib.contextmanager
def _workers_hold_sigint():
    """SIGINT blocked in this thread while it starts workers: each inherits the mask, so a
    Ctrl-C to the terminal's process group before a worker has left it waits, blocked, and is
    dropped by `_start_worker`. This process still sees it (its other threads take it, and
    Python runs the handler in the main thread)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


@contextlib.contextmanager
def _forward_signals(stop):
    """While the workers run, a SIGINT or SIGTERM to this process (Ctrl-C, `kill PID`,
    `timeout`) sets `stop` (no worker starts another cell) and is passed on to the workers, so
    each stops its cell at a step boundary with a checkpoint; `run_cells` then cancels the
    cells not started, waits for the workers to exit and raises KeyboardInterrupt. A second
    signal kills the workers at once. Only the main thread can listen."""
    received: list[int] = []  # the signals seen, first first (the exit status names it)
    if not stopsignal.can_listen():
        yield received
        return

    def forward(signum, frame):
        again = stop.is_set()
        stop.set()
        received.append(signum)
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL if again else signum)

    previous = stopsignal.install(forward)
    try:
        yield received
    finally:
        stopsignal.restore(previous)


def run_cells(
    cells: list[Cell],
    measure: Measure,
    extractor: FeatureExtractor,
    real: RealReference,
    report: Report,
    train_fn: Callable | None = None,
    jobs: int = 1,
) -> list[dict]:
    """Every cell's result, in `cells`' order; `report` is called as each one ends (in the
    order they end when `jobs` > 1). `train_fn` must be picklable (a module-level function)
    when `jobs` > 1."""
    if jobs < 1:
        raise ValueError(f"jobs must be ≥ 1, got {jobs}")
    if jobs == 1 or len(cells) <= 1:
        results = []
        for k, cell in enumerate(cells, 1):
            result, kept = run_cell(cell, measure, extractor, real, train_fn)
            report(k, cell, result, kept)
            results.append(result)
        return results
    results: list[dict | None] = [None] * len(cells)
    context = multiprocessing.get_context("spawn")
    workers = min(jobs, len(cells))
    stop = context.Event()
    shared = (stop, torch.get_num_threads(), measure, extractor, real, train_fn)
    with (
        _forward_signals(stop) as received,
        ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=shared
        ) as pool,
    ):
        with _workers_hold_sigint():  # the workers start as the cells are submitted
            pending = {pool.submit(_run_in_worker, cell): k for k, cell in enumerate(cells)}
        try:
            while pending:
                done, _ = wait(pending, timeout=STOP_POLL_S, return_when=FIRST_COMPLETED)
                if stop.is_set():  # SIGTERM exits 143, as train does; Ctrl-C 130
                    message = (f"the grid's cells were stopped; {RERUN} to continue them "
                               "from their checkpoints")  # fmt: skip
                    signum = received[0] if received else signal.SIGINT
                    raise stopsignal.StoppedBySignal(message, signum)
                for future in done:
                    k = pending.pop(future)
                    error = future.exception()
                    if error is not None:
                        raise RuntimeError(f"cell {cells[k].name} failed: {error}") from error
                    result, kept = future.result()
                    results[k] = result
                    report(k + 1, cells[k], result, kept)
        except BaseException:
            stop.set()  # the cells queued in a worker are not started either
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [r for r in results if r is not None]
