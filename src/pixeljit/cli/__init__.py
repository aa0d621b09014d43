"""The `pixeljit` command line: one sub-module per verb.

Each verb module exposes `add_parser(subparsers)` and `run(args) -> int`; `run` turns the
argparse Namespace into typed library calls, so nothing below the CLI sees a Namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import time
import warnings

from pixeljit.launch import check_launch_variables, check_started_together, launch_or_none
from pixeljit.training import stopsignal
from pixeljit.training.stopsignal import SIGNAL_EXIT_BASE

DEBUG_HELP = "show the full traceback of an error instead of one line"
# verb -> module under pixeljit.cli (imported lazily so `pixeljit --help` stays fast)
VERBS = {
    "train": "train",
    "sample": "sample",
    "eval": "evaluate",
    "prepare": "prepare",
    "demo": "demo",
    "reproduce": "reproduce",
    "convert": "convert",
}
# the verbs that split their work over torchrun's ranks; the others run in one process
DISTRIBUTED_VERBS = frozenset({"train", "eval"})

USAGE_ERROR = 2  # argparse's exit status for a bad command line
# an error line longer than this keeps its head and tail: a value quoted from a hostile file
# (a 3 MB string in a hub config.json) must not become a 3 MB message
MAX_ERROR_CHARS = 2000
ERROR_TAIL_CHARS = 500
# Under torchrun every rank meets the same refusal (a bad flag, a missing file): rank 0 alone says
# it. Rank 0 posts its line to torchrun's own key-value store (the agent's, up before any process
# group and after it) before it prints; another rank that fails waits this long for rank 0's
# line and prints its own only if rank 0's differs or never came (it failed alone).
ONCE_WAIT_S = 10.0
STORE_CONNECT_S = 5.0  # to reach torchrun's store; without it every rank says its own line
_ONCE_KEY = "rank0"


# the flags that take a file or folder: each is checked before anything runs for what no
# command could open (a symbolic-link loop, a name too long), naming the flag
PATH_DESTS = frozenset({"checkpoint", "config", "data", "data_dir", "font", "hub", "images",
                        "inception_weights", "make_ref", "out", "ref", "resume", "reuse",
                        "save_images", "scores", "source"})  # fmt: skip

# actions meant to be given more than once (--set, sample --out); others keep only their last
REPEATABLE = (argparse._AppendAction, argparse._ExtendAction, argparse._AppendConstAction,
              argparse._CountAction)  # fmt: skip


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block) and which refuses a flag
    given twice (argparse keeps the last silently: `--labels 0 --labels 3` sampled only class
    3); its sub-parsers inherit it."""

    def error(self, message: str):
        """One line, said once for the whole run under torchrun, where every rank parses the
        same command line (`say_once`), then argparse's exit status."""
        say_once_as(self.prog, f"error: {message} (see {self.prog} --help)")
        self.exit(USAGE_ERROR)

    def parse_known_args(self, args=None, namespace=None):
        self._given: dict[int, list[str]] = {}  # action → the values it was given, this parse
        return super().parse_known_args(args, namespace)

    def _get_values(self, action, arg_strings):
        """No value may be an empty string: `--out ''` would otherwise mean the current folder
        (or, where the code tests truth, the flag not given at all). argparse converts each
        action's strings here, so this sees them before any `type=` does (Path('') is '.')."""
        if "" in arg_strings and not isinstance(action, argparse._SubParsersAction):
            name = action.option_strings[0] if action.option_strings else action.metavar
            self.error(f"{name or action.dest} must not be empty")
        if action.option_strings and action.nargs != 0 and not isinstance(action, REPEATABLE):
            before = getattr(self, "_given", {}).get(id(action))
            if before is not None:
                flag = action.option_strings[-1]
                self.error(
                    f"{flag} given twice ({' '.join(before)}; then {' '.join(arg_strings)}): "
                    f"the last would silently replace the first; give {flag} once"
                    + (" with all its values" if action.nargs in ("+", "*") else "")
                )
            getattr(self, "_given", {})[id(action)] = list(arg_strings)
        if action.dest in PATH_DESTS:
            from pixeljit.cli.checks import path_problem

            name = action.option_strings[0] if action.option_strings else action.metavar
            for value in arg_strings:
                problem = path_problem(value)
                if problem:
                    self.error(f"{name or action.dest} {value}: {problem}; choose another path")
        return super()._get_values(action, arg_strings)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="pixeljit", description="JiT: pixel-space diffusion with x-prediction."
    )
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for module in VERBS.values():
        try:
            mod = importlib.import_module(f"pixeljit.cli.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"pixeljit.cli.{module}":
                raise
            continue
        mod.add_parser(sub)
    _add_debug(sub)
    return parser


def _deepest_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The parser of the (sub-)command `args` were parsed for: `pixeljit reproduce toy`'s, not
    the top one, so its errors name that command."""
    while True:
        found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, found[0].dest, None) if found else None
        if not found or name not in found[0].choices:
            return parser
        parser = found[0].choices[name]


def _add_debug(subparsers: argparse._SubParsersAction) -> None:
    """--debug on every verb (and nested sub-command), so it may follow the verb; SUPPRESS keeps
    a `pixeljit --debug VERB` from being reset by the verb's default."""
    for p in set(subparsers.choices.values()):
        if "--debug" in p._option_string_actions:  # the verb has its own
            continue
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=DEBUG_HELP)  # fmt: skip
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_debug(action)


def error_line(err: BaseException) -> str:
    """One line for the user: the message (an OSError's reason and path), no traceback."""
    if isinstance(err, OSError) and err.strerror:
        where = " → ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        text = f"{err.strerror}: {where}" if where else err.strerror
    else:
        text = str(err) or type(err).__name__
    text = " ".join(text.split())  # one line, whatever the message held
    if len(text) > MAX_ERROR_CHARS:
        cut = len(text) - MAX_ERROR_CHARS
        head = text[: MAX_ERROR_CHARS - ERROR_TAIL_CHARS]
        text = f"{head} …[{cut:,} characters left out]… {text[-ERROR_TAIL_CHARS:]}"
    return text


def check_launch(verb: str) -> None:
    """Refuse broken launch variables (`launch`; train and eval check the rest of what torchrun
    sets where their process group starts), and a single-process verb started by torchrun:
    each rank would do all of its work and write the same files (two `prepare`s raced on one
    folder)."""
    _, world = check_launch_variables()
    if world > 1 and verb not in DISTRIBUTED_VERBS:
        check_started_together()  # a WORLD_SIZE set by hand: that is the mistake to name
        raise ValueError(
            f"pixeljit {verb} runs in one process, and WORLD_SIZE={world} says torchrun started "
            f"{world}: each would do "
            f"all the work and write the same files; run it without torchrun (torchrun runs "
            f"`pixeljit train` and `pixeljit eval`; `torchrun ... -m pixeljit eval --checkpoint "
            f"CKPT --num-images N --save-images DIR --ref REF` generates images over several "
            "GPUs)"
        )


def rank_tag() -> str:
    """' (rank R of W)' under torchrun, so an error line says whose it is; '' for a single
    process, and where the launch variables are broken or name no rank (that is the error)."""
    launch = launch_or_none()
    if not launch or launch[1] == 1 or not os.environ.get("RANK"):
        return ""
    return f" (rank {launch[0]} of {launch[1]})"


def say_once(verb: str, text: str) -> None:
    """Print `pixeljit VERB (rank R of W): TEXT` to stderr once for the whole run: under
    torchrun, where every rank usually fails the same way, rank 0 prints its line and any other
    rank only a different one (`ONCE_WAIT_S`). The line is one write, so two ranks' lines never
    run together."""
    say_once_as(f"pixeljit {verb}", text)


def say_once_as(prog: str, text: str) -> None:
    """`say_once` for a line that opens with `prog` (a parser's, e.g. `pixeljit reproduce
    table2`) instead of `pixeljit VERB`."""
    launch = launch_or_none()
    rank, world = launch if launch else (0, 1)
    line = f"{prog}{rank_tag()}: {text}\n"
    if world > 1 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        with _sigterm_noted() as stopping:
            store = _run_store()
            if store is not None and rank == 0:
                _store_call(store.set, _ONCE_KEY, text)
            elif store is not None and _rank0_said(store, text, stopping):
                return
            write_stderr(line)
            return
    write_stderr(line)


@contextlib.contextmanager
def _sigterm_noted():
    """SIGTERM noted (the list yielded), not acted on, while the body runs: torchrun stops the
    other ranks once one exits, and a rank saying its error must finish its line first. (It
    is the process's last act: it exits right after.)"""
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: noted.append(signum))
    try:
        yield noted
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_store():
    """torchrun's key-value store for this run and restart (its agent's), or None."""
    try:
        from datetime import timedelta

        import torch.distributed as dist

        wait = timedelta(seconds=STORE_CONNECT_S)
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        store = dist.TCPStore(host, port, is_master=False, timeout=wait)
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        return dist.PrefixStore(f"pixeljit/said/attempt_{attempt}/", store)
    except Exception:  # no store to reach: every rank says its own line, as it always could
        return None


def _store_call(call, *args):
    try:
        return call(*args)
    except Exception:
        return None


def _rank0_said(store, text: str, stopping: list[int]) -> bool:
    """Whether rank 0 said `text` (waiting up to ONCE_WAIT_S for it to say anything, less once
    a SIGTERM says the run is being stopped: then rank 0 has said its line, or never will)."""
    deadline = time.monotonic() + ONCE_WAIT_S
    while True:
        if _store_call(store.check, [_ONCE_KEY]):
            said = _store_call(store.get, _ONCE_KEY)
            return said is not None and said.decode("utf-8", "replace") == text
        if stopping or time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def write_stderr(line: str) -> None:
    """`line` in a single write (a pipe takes up to 4 KiB whole): another rank's line, written
    at the same moment, lands before or after it, not inside it."""
    try:
        sys.stderr.flush()
        data = line.encode(sys.stderr.encoding or "utf-8", "backslashreplace")
        os.write(sys.stderr.fileno(), data)
    except (AttributeError, OSError, ValueError):  # a stderr with no file behind it (captured)
        sys.stderr.write(line)
        sys.stderr.flush()


class _Terminated:
    """SIGTERM (`kill PID`, `timeout`, a scheduler) as Ctrl-C: the verbs' own handling of an
    interruption (what a partial output holds, how to go on) is said, and the exit status stays
    SIGTERM's. Training and the grids listen for it themselves while they run (`stopsignal`).
    Under torchrun it keeps its default effect: a rank unwinding while the others are gone would
    wait for them at teardown."""

    def __init__(self):
        self.received: int | None = None

    def __call__(self, signum: int, frame) -> None:
        self.received = signum
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def __enter__(self):
        alone = (launch_or_none() or (0, 1))[1] == 1
        default = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        listening = alone and default and stopsignal.can_listen()
        self.previous = stopsignal.install(self, (signal.SIGTERM,)) if listening else {}
        return self

    def __exit__(self, *exc) -> None:
        stopsignal.restore(self.previous)


@contextlib.contextmanager
def one_line_warnings(verb: str, debug: bool):
    """A warning (the library's `warnings.warn`, torch's) as one line naming the verb, like the
    errors, not Python's 'FILE:LINE: UserWarning: …' with a source line under it; --debug keeps
    Python's form."""
    previous = warnings.formatwarning
    if not debug:
        warnings.formatwarning = lambda message, *_, **__: (
            f"pixeljit {verb}{rank_tag()}: warning: {error_line(Warning(message))}\n"
        )
    try:
        yield
    finally:
        warnings.formatwarning = previous


def main(argv: list[str] | None = None) -> int:
    try:  # the verbs' imports (torch) take seconds: a Ctrl-C there is no error either
        parser = build_parser()
    except KeyboardInterrupt:
        print("pixeljit: interrupted", file=sys.stderr)
        return SIGNAL_EXIT_BASE + signal.SIGINT
    args, extras = parser.parse_known_args(argv)
    if extras:  # said by the verb's own parser (`pixeljit train: …`), with its --help
        _deepest_parser(parser, args).error(f"unrecognized arguments: {' '.join(extras)}")
    terminated = _Terminated()
    try:
        check_launch(args.verb)
        with terminated, one_line_warnings(args.verb, args.debug):
            return int(args.run(args) or 0)
    except (ValueError, RuntimeError, OSError) as err:  # OSError: missing, unwritable, full disk
        if args.debug:
            raise
        say_once(args.verb, f"error: {error_line(err)} (--debug shows the traceback)")
        return 2
    except KeyboardInterrupt as err:  # a second Ctrl-C, or a grid cell stopped with a checkpoint
        if args.debug:
            raise
        detail = f": {error_line(err)}" if str(err) else ""
        say_once(args.verb, f"interrupted{detail}")
        signum = getattr(err, "signum", None) or terminated.received or signal.SIGINT
        return SIGNAL_EXIT_BASE + signum  # SIGTERM: 143


if __name__ == "__main__":
    sys.exit(main())
