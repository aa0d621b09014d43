"""Shared fixtures. The authors' parity vectors live in ../shared/reference beside the repo root."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import pixeljit
from pixeljit.data import prepare
from pixeljit.model import JiTConfig
from pixeljit.training.config import TrainConfig
from pixeljit.training.config_io import apply_overrides
from pixeljit.training.presets import get_preset

# The tests run tiny tensors, where intra-op threads only add overhead, and on a loaded 2-core
# machine they spin against each other (measured: one test 90 s with 2 threads, 2 s with 1).
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
REFERENCE_FILE = SHARED / "reference" / "jit_reference_tiny.pt"
# The README's claim: "relative error ≤ 3e-7 on their parity vectors" (network, loss, samplers).
# Measured in float32 on CPU: forward 1.2e-7, loss 6.5e-8, Euler 2.5e-7, Heun 2.4e-7.
PARITY_REL_ERR = 3e-7


# A conditional network with every part (bottleneck, in-context tokens) at 8 px: fast to build.
TINY_NET = JiTConfig(
    image_size=8, patch_size=4, hidden_size=16, depth=2, num_heads=2, num_classes=3,
    bottleneck_dim=4, in_context_len=2, in_context_start=1,
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """`TINY_NET` (seed 0) saved as .safetensors (modules needing another net define their own)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    pixeljit.save_safetensors(pixeljit.JiT(TINY_NET), path)
    return path


@pytest.fixture(scope="session")
def reference() -> dict:
    """The parity vectors produced by the authors' code (never skipped: missing is a failure)."""
    if not REFERENCE_FILE.is_file():
        pytest.fail(
            f"parity vectors not found at {REFERENCE_FILE}: the tests expect the project's shared/ "
            "folder beside the repository root (../shared/reference/jit_reference_tiny.pt)."
        )
    return torch.load(REFERENCE_FILE, weights_only=True, map_location="cpu")


# ------------------------------------------------------------------------------ gpu marker

NO_CUDA_REASON = "needs a CUDA device (torch.cuda.is_available() is False): run on a GPU"


def pytest_report_header(config) -> str:
    if torch.cuda.is_available():
        return f"gpu tests: on {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return f"gpu tests: skipped, {NO_CUDA_REASON}"


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `gpu` are skipped, with the reason, where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA_REASON)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """`$PIXELJIT_CACHE` in a session folder: the tests never read or write the user's cache
    (FD statistics cached there by an earlier run, or by another test, are never reused)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIXELJIT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


# ------------------------------------------------------------------------- tiny training runs

TINY_PRESET = "fmnist-tiny"
# what every tiny CPU training run of the tests shares (a module adds its own on top); no
# warm-up, whose first step moves nothing (the authors' schedule): both steps train
TINY_RUN = {
    "run.device": "cpu", "run.tensorboard": False, "run.log_every": 1, "run.ckpt_every": 2,
    "optim.global_batch": 16, "optim.steps": 2, "optim.warmup_epochs": 0.0,
    "sample.steps": 1, "sample.per_class": 1, "sample.max_classes": 1,
}  # fmt: skip
FMNIST_TEST_SIZE = 16  # px: the packed Fashion-MNIST test images the runs train on
# for runs whose samples a test compares: without the EMA warm-up, the default weights (EMA 0.995)
# stay 99 % adaLN-Zero's zero output after 2 steps, so every image is one constant grey whatever
# the seed, label or solver, and such a test could not fail
SAMPLED_RUN = {"optim.ema_warmup": True}


def tiny_run(data: Path, out: Path, **overrides) -> TrainConfig:
    """The `fmnist-tiny` preset training on `data` into `out`, sized for seconds on one CPU
    core, with `overrides` (dotted keys, e.g. **{"optim.steps": 6}) on top of `TINY_RUN`."""
    settings = {**TINY_RUN, "data.source": str(data), "run.out": str(out), **overrides}
    return apply_overrides(get_preset(TINY_PRESET), settings)


def check_samples_vary(model) -> None:
    """A fixture's guard: the trained model's images depend on the seed and the label."""
    from pixeljit.diffusion.sampler import sample

    def draw(seed: int, label: int) -> torch.Tensor:
        return sample(model.net, [label, label], steps=2, cfg=1.0, seed=seed)

    assert not torch.equal(draw(0, 0), draw(1, 0)), "the seed does not change the images"
    assert not torch.equal(draw(0, 0), draw(0, 1)), "the label does not change the images"
    assert not torch.equal(*draw(0, 0)), "two images of one batch are equal"


@pytest.fixture(scope="session")
def fmnist16(tmp_path_factory):
    """`fmnist16(limit)`: the first `limit` real Fashion-MNIST test images packed at 16 px, made
    once per session for each `limit` (tests read the folder, never write into it)."""
    made: dict[int, Path] = {}

    def get(limit: int) -> Path:
        if limit not in made:
            out = tmp_path_factory.mktemp("data") / f"fmnist{FMNIST_TEST_SIZE}-{limit}"
            prepare("fashion-mnist", FMNIST_TEST_SIZE, out, split="test", limit=limit)
            made[limit] = out
        return made[limit]

    return get


# ------------------------------------------------------------------ subprocesses with children


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from Linux's /proc ([] elsewhere): torchrun starts each worker
    in a session of its own, which a signal to torchrun's process group does not reach (a
    worker left alive holds the test's pipes open, so reading them waits forever)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # after "pid (name)"
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group `pgid` (a `run_group` command's) and every process below its
    leader, wherever their own group."""
    below = _descendants(pgid)
    for kill, target in [(os.killpg, pgid)] + [(os.kill, pid) for pid in below]:
        with contextlib.suppress(ProcessLookupError):  # exited already
            kill(target, signal.SIGKILL)


def run_group(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True)`, but `cmd` starts its own process
    group and, on a timeout, an exception or a non-zero exit, the whole group is killed: the
    children it spawned (torchrun's DDP workers) never outlive the test."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        **kwargs,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:  # the timeout, or the test interrupted
        _kill_group(proc.pid)
        proc.communicate()
        raise
    if proc.returncode != 0:
        _kill_group(proc.pid)  # a failed launcher may leave its workers running
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped): a killed writer's, for sweeps."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def children_of(pid: int) -> set[int]:
    """The live child processes of `pid` (from /proc: psutil may be missing)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found.update(int(c) for c in (task / "children").read_text().split())
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, waiting for whoever adopted it to reap it, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pids: set[int], seconds: float) -> set[int]:
    """Those of `pids` still running after waiting up to `seconds` for them to exit."""
    deadline = time.monotonic() + seconds
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return {pid for pid in pids if alive(pid)}


def end_processes(proc: subprocess.Popen, pids: set[int]) -> None:
    """Kill `pids` (workers in their own process groups) and `proc`'s group, and reap `proc`:
    nothing a test started outlives it, whatever happened."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _kill_group(proc.pid)
    if proc.poll() is None:
        proc.communicate()


def free_port() -> int:
    """A TCP port free on this host now, for an in-test gloo group (MASTER_PORT)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(
    args: list[str], timeout: float = 300, monitor_s: float | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc_per_node=2 -m pixeljit ARGS` on
    CPU, one thread per worker, in its own process group (see `run_group`). `monitor_s`:
    torchrun's polling interval; once it sees one worker fail it stops the others, so a test
    that reads what every rank says gives a late rank (a loaded machine) that long to say it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    monitor = [] if monitor_s is None else [f"--monitor-interval={monitor_s}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *monitor, "-m", "pixeljit", *args]  # fmt: skip
    return run_group(cmd, timeout, env=env, **kwargs)


# ------------------------------------------------------------------ memory kept for backward


class LiveStorages(TorchDispatchMode):
    """Weak references to the storage of every tensor an op creates under this mode."""

    def __init__(self):
        super().__init__()
        self.storages: list[tuple[StorageWeakRef, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                self.storages.append((StorageWeakRef(storage), storage.nbytes()))
        return out

    def live_bytes(self, existing) -> int:
        """Bytes of the distinct storages made under the mode that are still alive, leaving out
        the `existing` tensors' (a weight's transpose is a view of the weight's storage)."""
        old = {StorageWeakRef(t.untyped_storage()).cdata for t in existing}
        alive = {ref.cdata: size for ref, size in self.storages if not ref.expired()}
        return sum(size for cdata, size in alive.items() if cdata not in old)


def states_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


# a two-block JiT for CLI and solver tests (16 px, patch 4, 4 classes)
TINY_MODEL = JiTConfig(
    image_size=16,
    patch_size=4,
    hidden_size=32,
    depth=2,
    num_heads=2,
    num_classes=4,
    bottleneck_dim=8,
    in_context_len=2,
    in_context_start=1,
)


@pytest.fixture(scope="session")
def hub_run(tmp_path_factory, fmnist16):
    """A 2-step v-prediction run with its preview grid and eval.json (hub_helpers.make_run)."""
    from hub_helpers import make_run

    return make_run(tmp_path_factory, fmnist16)


@pytest.fixture(scope="session")
def hub(hub_run, tmp_path_factory):
    """`hub_run` converted to a Hugging Face layout folder (read, never written, by tests)."""
    from hub_helpers import make_hub

    return make_hub(hub_run, tmp_path_factory)


@pytest.fixture
def red_pngs(tmp_path, monkeypatch) -> Path:
    """A raw folder of three 6 × 6 RGB PNGs, red 0, 10 and 20 (0.png, 1.png, 2.png), with
    `$PIXELJIT_CACHE` in this test's own folder (what is packed from it is this test's alone)."""
    from PIL import Image

    from pixeljit.files.cache import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    root = tmp_path / "images"
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (6, 6), (10 * i, 0, 0)).save(root / f"{i}.png")
    return root


def noise_pngs(folder: Path, count: int, size: int = 16) -> Path:
    """`folder` (made) holding `count` grey noise PNGs 000000.png, … of size × size px."""
    from PIL import Image

    folder.mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 256, (count, size, size), dtype=np.uint8)
    for k, image in enumerate(noise):
        Image.fromarray(image).save(folder / f"{k:06d}.png")
    return folder


def varied_model_and_ref(root: Path, config: JiTConfig, size: int) -> Path:
    """In `root`: tiny.safetensors, a JiT of `config` whose zero-initialised layers are
    randomised (so its images are not flat and vary with the seed), and ref.npz, the reference
    statistics of six noise PNGs at `size` px (RGB). Returns `root`."""
    from pixeljit.cli import main

    torch.manual_seed(0)
    net = pixeljit.JiT(config)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    pixeljit.save_safetensors(net, root / "tiny.safetensors")
    noise = noise_pngs(root / "noise", 6, size=size)
    argv = ["eval", "--make-ref", str(noise), "--size", str(size), "--channels", "3",
            "--out", str(root / "ref.npz")]  # fmt: skip
    assert main(argv) == 0
    return root


def write_raw_safetensors(net, path, **metadata) -> None:
    """`net` as a .safetensors holding `metadata` (each value JSON-encoded) unchecked: the file
    a careless or hostile writer could make, which `save_safetensors` refuses to."""
    import json

    from safetensors.torch import save_file

    from pixeljit.checkpoints.safetensors_io import SAFETENSORS_CONFIG_KEY, SAFETENSORS_FORMAT

    meta = {SAFETENSORS_CONFIG_KEY: json.dumps(net.config.to_dict()), "format": SAFETENSORS_FORMAT}
    meta |= {key: json.dumps(value) for key, value in metadata.items()}
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata=meta)
