"""Ctrl-C and SIGTERM stop a run at the next step boundary, with a checkpoint, not mid-step.

Without this, the first Ctrl-C (SIGINT) or a scheduler's SIGTERM kills a run wherever it is and
loses every step since the last periodic checkpoint (`run.ckpt_every`, 1000 steps by default).
`StopRequest` turns the first such signal into a request: the loop finishes the step it is in,
saves a checkpoint there (a step boundary, so resuming from it is as exact as from any other)
and returns. A second signal acts at once, as it would without this (Ctrl-C raises
KeyboardInterrupt; SIGTERM ends the process).

Only a single-process run listens: under `torchrun` each rank would see the signal at a
different step, and agreeing on one would cost a collective every step.
"""

from __future__ import annotations

import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
SIGNAL_EXIT_BASE = 128  # the shell's exit status of a process ended by signal N is 128 + N


class StoppedBySignal(KeyboardInterrupt):
    """A command stopped by signal `signum` after saving its work (a grid's cell checkpointed
    on SIGTERM): the CLI exits with 128 + `signum`, as `pixeljit train` does, not Ctrl-C's."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    def __reduce__(self):  # rebuilt in a grid's parent when a worker process raises it
        return type(self), (str(self), self.signum)


def can_listen() -> bool:
    """Whether this thread may install signal handlers (Python allows it in the main one only)."""
    return threading.current_thread() is threading.main_thread()


def install(handler, signums=SIGNALS) -> dict[int, object]:
    """`handler` for each of `signums` the process does not ignore; returns the handlers it
    replaced, for `restore`. An ignored signal stays ignored: a shell script starts its
    background jobs (`cmd &`) with SIGINT ignored, and `nohup` ignores SIGHUP, so that the
    Ctrl-C meant for the script does not reach them."""
    return {
        signum: signal.signal(signum, handler)
        for signum in signums
        if signal.getsignal(signum) != signal.SIG_IGN
    }


def restore(previous: dict[int, object]) -> None:
    """Put back the handlers that `install` replaced (and forget them)."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    previous.clear()


class StopRequest:
    """`with StopRequest(enabled) as stop:` … `stop.signal` is None until the first SIGINT or
    SIGTERM arrives, then that signal's number. Outside the main thread (where Python cannot
    install handlers) or when not `enabled`, it never listens and `signal` stays None. The
    previous handlers are back in place on exit."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and can_listen()
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if self.enabled:
            self._previous = install(self._handle)
        return self

    def __exit__(self, *exc) -> None:
        restore(self._previous)

    def _handle(self, signum: int, frame) -> None:
        if self.signal is not None:  # the second: act as if we were not listening
            restore(self._previous)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(signum)
            return
        self.signal = signum
        # os.write, not print: a handler can run in the middle of another print
        os.write(2, f"\n{signal.Signals(signum).name}: stopping after this step with a "
                 "checkpoint (send it again to stop at once)\n".encode())  # fmt: skip
