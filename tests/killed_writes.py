"""Image sets and hub exports written by a child process that SIGKILLs itself partway
through moving its staged files in (tests of `files.staged_commit` and of its readers)."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from PIL import Image

from pixeljit.files.image_set import staged_image_set

# The child: os.replace of a file from one folder into another (a staged file moving in) kills
# the process once `after` files have moved, and so does the removal of a samples.png then.
KILLER = """
import os, signal, sys
from pathlib import Path
after, real, real_unlink, moved = int(sys.argv[1]), os.replace, os.unlink, []
def replace(src, dst):
    if Path(src).parent != Path(dst).parent:
        if len(moved) == after:
            os.kill(os.getpid(), signal.SIGKILL)
        moved.append(dst)
    return real(src, dst)
def unlink(path, *args, **kwargs):
    if len(moved) == after and Path(path).name == "samples.png":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_unlink(path, *args, **kwargs)
os.replace, os.unlink = replace, unlink
"""

WRITE_SET = """
import io, json
from PIL import Image
from safetensors import safe_open
from pixeljit.files.image_set import staged_image_set
folder, values, labels = Path(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
with staged_image_set(folder) as staging:
    rows = ["file,label,class"]
    for i, (v, label) in enumerate(zip(values, labels)):
        Image.new("L", (4, 4), v).save(staging / f"{i:06d}.png")
        rows.append(f"{i:06d}.png,{label},class {label}")
    (staging / "labels.csv").write_text("\\n".join(rows) + "\\n")
"""


def killed_after(moves: int, script: str, *args) -> None:
    """Run `script` in a child process that SIGKILLs itself after `moves` files moved in."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLER + script), str(moves),
                           *map(str, args)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (4, 4), value).save(buf, format="PNG")
    return buf.getvalue()


def stage_set(staging, values, labels) -> None:
    """Numbered grey PNGs of `values`, and a labels.csv of `labels`, written into `staging`."""
    rows = ["file,label,class"]
    for i, (v, label) in enumerate(zip(values, labels, strict=True)):
        (Path(staging) / f"{i:06d}.png").write_bytes(png(v))
        rows.append(f"{i:06d}.png,{label},class {label}")
    (Path(staging) / "labels.csv").write_text("\n".join(rows) + "\n")


def write_set(folder, values, labels) -> None:
    with staged_image_set(folder) as staging:
        stage_set(staging, values, labels)


def kill_while_writing_set(folder, values, labels, after: int) -> Path:
    """The set killed after `after` of its files moved into `folder`; its staging folder."""
    killed_after(after, WRITE_SET, folder, list(values), list(labels))
    staging = [p for p in Path(folder).iterdir() if p.name.startswith(".new-set.staging-")]
    assert len(staging) == 1  # the rest of the set
    return staging[0]
