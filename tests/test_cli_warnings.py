"""A warning on the command line is one line naming the verb, like an error: Python's form
('FILE:LINE: UserWarning: …' and the source line under it) showed pixeljit's internals to a user
whose labels.csv missed a row."""

from __future__ import annotations

import subprocess
import sys
import warnings

from conftest import noise_pngs
from pixeljit.cli import one_line_warnings


def test_a_warning_is_one_line_naming_the_verb_and_debug_keeps_pythons_form():
    with one_line_warnings("eval", debug=False):
        text = warnings.formatwarning("half\nof it", UserWarning, "/x/evaluation.py", 7)
    assert text == "pixeljit eval: warning: half of it\n"
    with one_line_warnings("eval", debug=True):
        text = warnings.formatwarning("half", UserWarning, "/x/evaluation.py", 7)
    assert "/x/evaluation.py:7: UserWarning: half" in text
    assert warnings.formatwarning("m", UserWarning, "f.py", 1).startswith("f.py:1: UserWarning")


def test_the_command_line_prints_a_library_warning_as_one_line(tmp_path):
    folder = noise_pngs(tmp_path / "images", 10)
    (folder / "labels.csv").write_text("file,label,class\n000000.png,0,T-shirt/top\n")
    argv = ["eval", "--images", str(folder), "--extractor", "fmnist-cnn", "--metrics", "is"]
    done = subprocess.run([sys.executable, "-m", "pixeljit", *argv], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "pixeljit eval: warning: class accuracy left out: " in done.stderr
    assert "UserWarning" not in done.stderr and "warnings.warn" not in done.stderr
