"""The packing progress bar of `prepare`: it counts every image tried (packed or skipped), and a
warning said while it runs (Pillow's, naming the file) gets a line of its own, not the end of
the bar's line."""

from __future__ import annotations

import sys
import warnings

from .source import SourceStream


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class PackProgress:
    """`with PackProgress(stream, enabled) as bar:` ... `bar.advance(packed)` per batch; the bar
    (tqdm, on stderr) ends its line on leaving, before any error message is printed."""

    def __init__(self, stream: SourceStream, enabled: bool):
        self.stream, self.enabled = stream, enabled
        self.packed = self.shown = 0
        self.bar = None
        self._warnings: warnings.catch_warnings | None = None

    def __enter__(self) -> PackProgress:
        if not self.enabled:
            return self
        from tqdm import tqdm

        self.bar = tqdm(total=self.stream.total, unit="img", desc="prepare")
        self._warnings = warnings.catch_warnings()  # restores `showwarning` on leaving
        self._warnings.__enter__()
        show = warnings.showwarning

        def on_own_line(*args, **kwargs) -> None:
            with tqdm.external_write_mode(file=sys.stderr):  # the bar cleared, then redrawn
                if not _is_terminal(sys.stderr):  # a log: `\r` would not end the bar's line
                    sys.stderr.write("\n")
                show(*args, **kwargs)

        warnings.showwarning = on_own_line
        return self

    def advance(self, packed: int = 0) -> None:
        """`packed` more images written; skipped ones (the stream's list) count as tried."""
        self.packed += packed
        done = self.packed + len(self.stream.skipped)
        if self.bar is not None and done > self.shown:
            self.bar.update(done - self.shown)
            self.shown = done

    def __exit__(self, *exc) -> None:
        if self.bar is None:
            return
        try:
            if exc[0] is None:
                self.advance()  # images skipped after the last batch
            self.bar.close()
        finally:
            self._warnings.__exit__(*exc)
