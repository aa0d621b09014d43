"""The `pixeljit` command line: one sub-module per verb.

Each verb module exposes `add_parser(subparsers)` and `run(args) -> int`; `run` turns the
argparse Namespace into typed library calls, so nothing below the CLI sees a Namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import warnings

from pixeljit.launch import launch_rank, launch_world_size
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
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

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
    """Refuse a single-process verb started by torchrun: each rank would do all of its work and
    write the same files (two `prepare`s raced on one folder)."""
    world = launch_world_size()
    if world > 1 and verb not in DISTRIBUTED_VERBS:
        raise ValueError(
            f"pixeljit {verb} runs in one process, and torchrun started {world}: each would do "
            f"all the work and write the same files; run it without torchrun (torchrun runs "
            f"`pixeljit train` and `pixeljit eval`; `torchrun ... -m pixeljit eval --checkpoint "
            f"CKPT --num-images N --save-images DIR --ref REF` generates images over several "
            "GPUs)"
        )


def rank_tag() -> str:
    """' (rank R of W)' under torchrun, so each rank's error line says whose it is (every rank
    fails on a bad config, each with its own line); '' for a single process."""
    world = launch_world_size()
    return f" (rank {launch_rank()} of {world})" if world > 1 else ""


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
        alone = launch_world_size() == 1
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
    args = parser.parse_args(argv)
    terminated = _Terminated()
    try:
        check_launch(args.verb)
        with terminated, one_line_warnings(args.verb, args.debug):
            return int(args.run(args) or 0)
    except (ValueError, RuntimeError, OSError) as err:  # OSError: missing, unwritable, full disk
        if args.debug:
            raise
        print(f"pixeljit {args.verb}{rank_tag()}: error: {error_line(err)} (--debug shows the "
              "traceback)", file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt as err:  # a second Ctrl-C, or a grid cell stopped with a checkpoint
        if args.debug:
            raise
        detail = f": {error_line(err)}" if str(err) else ""
        print(f"pixeljit {args.verb}{rank_tag()}: interrupted{detail}", file=sys.stderr)
        signum = getattr(err, "signum", None) or terminated.received or signal.SIGINT
        return SIGNAL_EXIT_BASE + signum  # SIGTERM: 143


if __name__ == "__main__":
    sys.exit(main())
