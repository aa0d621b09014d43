"""How a sampler runs the network: optional `torch.compile` (one compiled net per mode, kept on
the net), autocast precision (bf16 by default on CUDA, the sampling state staying float32), TF32
for the float32 parts on CUDA, and the pre-conditioned call (`NetDenoiser`)."""

from __future__ import annotations

import contextlib

import torch

from pixeljit.diffusion.objective import SIGMA_DATA, precondition

Tensor = torch.Tensor

AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)  # what amp_dtype may name


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_COMPILE_BACKEND = "inductor"  # the tests swap in "eager" (no C++/Triton build on CI)
_COMPILED_ATTR = "_pixeljit_compiled"  # net.__dict__ entry: {(mode, backend): compiled net}


class _CompiledCache(dict):
    """The compiled nets kept on a net. A copy or a pickle of the net gets an empty cache (the
    compiled wrappers point back to the original net and cannot be copied or pickled), so
    `copy.deepcopy(net)` and `torch.save(net)` still work after compiled sampling."""

    def __deepcopy__(self, memo) -> _CompiledCache:
        return _CompiledCache()

    def __reduce__(self):
        return (_CompiledCache, ())


def check_compile_mode(mode: str | None) -> None:
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(
            f"compile_mode must be None (eager) or one of {COMPILE_MODES}, got {mode!r}"
        )


def check_amp_dtype(amp_dtype: torch.dtype | None) -> None:
    if amp_dtype is not None and amp_dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"amp_dtype must be None (float32) or one of {AUTOCAST_DTYPES}, got "
                         f"{amp_dtype!r}")  # fmt: skip


def compiled_network(net, mode: str):
    """`torch.compile(net, mode=mode, dynamic=False)`, built once per (net, mode) and kept in the
    net's `__dict__` (not a submodule: its state_dict is unchanged; copies and pickles of the net
    leave it behind) for later `sample` calls; dynamo compiles each batch shape it meets once
    (N and 2N). The net itself stays eager."""
    check_compile_mode(mode)
    cache = getattr(net, "__dict__", {}).setdefault(_COMPILED_ATTR, _CompiledCache())
    key = (mode, _COMPILE_BACKEND)
    if key not in cache:
        options = {"mode": mode} if _COMPILE_BACKEND == "inductor" else {}  # modes: inductor's
        cache[key] = torch.compile(net, dynamic=False, backend=_COMPILE_BACKEND, **options)
    return cache[key]


class NetDenoiser:
    """net(z, t, y) with the pre-conditioner (its σ_data: the value the network was trained with,
    used by 'edm') and optional autocast; float output in z's dtype.

    A compiled network (CUDA graphs under "reduce-overhead") writes its outputs into memory the
    next replay reuses: each call marks a new step and copies the output out of it.
    """

    def __init__(self, net, preconditioner: str, noise_scale: float, amp_dtype, compiled=False,
                 *, sigma_data: float = SIGMA_DATA):  # fmt: skip
        self.net, self.preconditioner = net, preconditioner
        self.noise_scale, self.amp_dtype = noise_scale, amp_dtype
        self.compiled, self.sigma_data = compiled, sigma_data

    def __call__(self, z: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()
        if self.amp_dtype is None:
            out = self.net(z, t, y)
        else:
            with torch.autocast(device_type=z.device.type, dtype=self.amp_dtype):
                out = self.net(z, t, y)
        if self.compiled and out.dtype == z.dtype:  # (a cast copies already)
            out = out.clone()
        out = out.to(z.dtype)
        return precondition(out, z, t, self.preconditioner, self.noise_scale, self.sigma_data)


def default_amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """The network's precision when none is asked for: bf16 autocast on CUDA (the authors
    sample in bf16; the sampling state stays float32), float32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else None


MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's


@contextlib.contextmanager
def matmul_precision(precision: str):
    """Within the block, float32 matrix products run at `precision` (torch's
    `set_float32_matmul_precision`: 'highest' full float32; 'high' TF32 on CUDA; 'medium' bf16
    inputs with float32 sums, on CUDA and on CPUs whose oneDNN has AMX-BF16); restored after."""
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul precision must be one of {MATMUL_PRECISIONS}, got {precision!r}")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


@contextlib.contextmanager
def tf32_matmuls(device: torch.device | str):
    """Within the block, on CUDA, float32 matrix products may use TF32 (the parts that autocast
    leaves in float32, or the whole network with no autocast); the setting is restored after."""
    if torch.device(device).type != "cuda":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
