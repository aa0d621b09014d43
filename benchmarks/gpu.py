"""Training and sampling speed of JiT on one GPU: the project's own benchmark (no dataset).

Training (JiT-B/16, JiT-L/16 by default; batch 128, 256 px, 1000 classes, random images): the
training engine's own pieces in the loop's order: the JiT, `flow_matching_loss` under bf16
autocast with a per-step generator, backward, AdamW (fused on CUDA), the EMA update of every
decay. Reported: img/s, TFLOP/s and MFU (3 × the forward FLOPs per image, counted from the
config by `pixeljit.model.forward_flops`, over the card's bf16 dense peak), peak memory, the
first step's time (the compile, for compiled runs), eager and `torch.compile(dynamic=False)`;
after each model's rows its `--extra` rows, MODEL:MODE: by default JiT-B/16 compiled with a bf16
residual stream (`-bf16res`, `run.bf16_residual`: what the authors' fp32 stream costs) and
JiT-L/16 compiled with activation checkpointing (`-ckpt`, `run.activation_checkpointing`: what
recomputing every block saves and costs).

Sampling (JiT-B/16 with perturbed random weights): `pixeljit.sample` with Heun-50 and CFG 2.9 on
the interval (0.1, 1], and the few-step solver; img/s, network rows per image, TFLOP/s, the
ceiling (peak / FLOPs per image), eager and compiled (`compile_mode`, CUDA graphs by default).

Prints a table and writes JSON (after every measurement, so a cut-short run keeps what it has).

    python benchmarks/gpu.py [--out DIR] [--models JiT-B/16 JiT-L/16] [--batch 128]
                             [--extra JiT-L/16:compiled-ckpt ...] [--skip-sampling]
    python benchmarks/gpu.py --smoke     # a tiny model on the CPU in seconds (tested in CI)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from pixeljit.diffusion import execution
from pixeljit.diffusion.objective import ObjectiveConfig, flow_matching_loss
from pixeljit.diffusion.sampler import sample
from pixeljit.files.atomic import atomic_write_text
from pixeljit.model import JiT, JiTConfig, forward_flops, model_config
from pixeljit.rng import derive_seed
from pixeljit.training.config import PAPER_EMA_DECAYS
from pixeljit.training.ema import EMA

H200_BF16_PEAK_TFLOPS = 790.0  # dense bf16, the figure (788 measured on an 8k³ GEMM)
TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (≈ 2 × forward)
# a base mode, then options: -ckpt checkpointed blocks, -bf16res a bf16 residual stream
TRAIN_MODES = ("compiled", "eager", "compiled-ckpt", "eager-ckpt", "compiled-bf16res",
               "eager-bf16res")  # fmt: skip
EXTRA_ROWS = ("JiT-B/16:compiled-bf16res", "JiT-L/16:compiled-ckpt")
IMAGENET_CLASSES = 1000
LEARNING_RATE, BETAS, WEIGHT_DECAY = 2e-4, (0.9, 0.95), 0.0  # JiT-B/16 at batch 1024 (Tab. 9)
PAPER_SAMPLER = dict(method="heun", steps=50, cfg=2.9, interval=(0.1, 1.0))  # the issue's
FAST_SAMPLER = dict(method="dpm++2m", steps=10, cfg=2.9, interval=(0.1, 1.0))
WEIGHT_JITTER = 0.02  # random weights for sampling (zero-initialised layers would output zeros)
GIB = 2**30
AUTHORS_BATCH = 128  # the batch of the authors' figures below
# the authors' code on one H200 (issue 12): torch 2.11, bf16 autocast, batch 128, 256 px
AUTHORS = {
    ("train", "JiT-B/16"): 1415.0,
    ("train", "JiT-L/16"): 445.0,
    ("sample", "JiT-B/16", "heun", 50): 21.2,
}
SMOKE = JiTConfig(image_size=32, patch_size=8, hidden_size=64, depth=2, num_heads=2,
                  num_classes=10, bottleneck_dim=16, in_context_len=4,
                  in_context_start=1)  # fmt: skip


# ------------------------------------------------------------------------------ timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device: torch.device) -> None:
    """Free what earlier rows left (compiled graphs and CUDA-graph pools too), reset the peak."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def _rates(images_per_s: float, flops_per_image: float, peak_tflops: float | None) -> dict:
    tflops = images_per_s * flops_per_image / 1e12
    return {
        "img_per_s": images_per_s,
        "tflops": tflops,
        "mfu": tflops / peak_tflops if peak_tflops else None,
    }


# ---------------------------------------------------------------------------- training


def bench_training(name: str, cfg: JiTConfig, mode: str, ctx: SimpleNamespace) -> dict:
    """Time `ctx.steps` training steps at batch `ctx.batch` after `ctx.warmup` (the first step
    timed alone: it holds the compile)."""
    device, batch, steps, warmup = ctx.device, ctx.batch, ctx.steps, ctx.warmup
    _reset_memory(device)
    torch.manual_seed(0)
    raw = JiT(cfg).to(device)
    base, *options = mode.split("-")
    raw.checkpoint_blocks = "ckpt" in options  # activation checkpointing (FLOPs counted once)
    raw.bf16_residual = "bf16res" in options
    forward = raw if base == "eager" else torch.compile(raw, dynamic=False, backend=ctx.backend)
    ema = EMA(raw, PAPER_EMA_DECAYS)
    params = [p for p in raw.parameters() if p.requires_grad]
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    opt = torch.optim.AdamW(
        params, lr=LEARNING_RATE, betas=BETAS, weight_decay=WEIGHT_DECAY, **fused
    )
    bf16 = device.type == "cuda"
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )
    objective = ObjectiveConfig()
    g = torch.Generator(device=device).manual_seed(1)
    shape = (batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    x = torch.rand(shape, generator=g, device=device) * 2 - 1
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g, device=device)
    raw.train()

    def step(i: int) -> None:
        gen = torch.Generator(device=device).manual_seed(derive_seed(0, i))
        with autocast:
            per_sample, _ = flow_matching_loss(forward, x, y, objective, cfg.num_classes, gen)
            loss = per_sample.float().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(raw)

    start = time.perf_counter()
    step(0)
    _sync(device)
    first = time.perf_counter() - start
    for i in range(1, 1 + warmup):
        step(i)
    _sync(device)
    start = time.perf_counter()
    for i in range(1 + warmup, 1 + warmup + steps):
        step(i)
    _sync(device)
    elapsed = time.perf_counter() - start
    flops = TRAIN_FLOPS_PER_FORWARD * forward_flops(cfg)
    row = {
        "kind": "train",
        "model": name,
        "mode": mode,
        "batch": batch,
        "precision": "bf16 autocast" if bf16 else "fp32",
        "steps_timed": steps,
        "step_ms": 1e3 * elapsed / steps,
        "first_step_s": first,
        **_rates(batch * steps / elapsed, flops, ctx.peak),
        "peak_mem_gib": _peak_gib(device),
        "gflop_per_image": flops / 1e9,
    }
    return row


# ---------------------------------------------------------------------------- sampling


class _RowCounter(nn.Module):
    """A stand-in network (1-pixel images) that returns its input and counts its rows."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.config = SimpleNamespace(num_classes=num_classes, in_channels=1, image_size=1)
        self.rows = 0

    def forward(self, z, t, y):
        self.rows += z.shape[0]
        return z


def rows_per_image(cfg: JiTConfig, settings: dict) -> int:
    """Network rows per image of `settings` (a host-only dry run of `sample` on one image)."""
    counter = _RowCounter(cfg.num_classes)
    sample(counter, [0], **settings)
    return counter.rows


def sampling_net(cfg: JiTConfig, device: torch.device) -> JiT:
    """A JiT with every weight perturbed (zero-initialised layers would output zeros)."""
    _reset_memory(device)
    torch.manual_seed(0)
    net = JiT(cfg).to(device)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(WEIGHT_JITTER * torch.randn_like(p))
    return net


def bench_sampling(name: str, net: JiT, settings: dict, mode: str, ctx: SimpleNamespace) -> dict:
    """Images per second of `sample()` at batch `ctx.sample_batch` (bf16 network on CUDA,
    float32 state, seeded noise on the device); the first call (both batch shapes, the compile)
    is timed alone, then one untimed call and `ctx.repeats` timed ones."""
    device, batch, cfg = ctx.device, ctx.sample_batch, net.config
    if device.type == "cuda":  # the peak of this row (over what earlier rows still hold)
        torch.cuda.reset_peak_memory_stats(device)
    amp = torch.bfloat16 if device.type == "cuda" else None
    labels = [i % cfg.num_classes for i in range(batch)]
    compile_mode = None if mode == "eager" else mode

    def run(seed: int, **overrides) -> torch.Tensor:
        return sample(net, labels, **{**settings, **overrides}, seed=seed, amp_dtype=amp,
                      compile_mode=compile_mode, noise_scale=None)  # fmt: skip

    start = time.perf_counter()
    run(0, steps=2)  # both shapes: t = 0 unguided (N rows), t = 0.5 guided (2N rows)
    _sync(device)
    first = time.perf_counter() - start
    run(1)
    _sync(device)
    start = time.perf_counter()
    for seed in range(2, 2 + ctx.repeats):
        images = run(seed)
    _sync(device)
    elapsed = time.perf_counter() - start
    if not bool(torch.isfinite(images).all()):
        raise RuntimeError(f"{name} {mode} sampling gave non-finite images")
    rows = rows_per_image(cfg, settings)
    flops = rows * forward_flops(cfg)
    return {"kind": "sample", "model": name, "mode": mode, "batch": batch,
            "method": settings["method"], "steps": settings["steps"], "cfg": settings["cfg"],
            "interval": list(settings["interval"]), "rows_per_image": rows,
            "precision": "bf16 network, fp32 state" if amp else "fp32",
            **_rates(batch * ctx.repeats / elapsed, flops, ctx.peak), "first_call_s": first,
            "ceiling_img_per_s": ctx.peak * 1e12 / flops if ctx.peak else None,
            "peak_mem_gib": _peak_gib(device)}  # fmt: skip


# ------------------------------------------------------------------------------ report


def _vs_authors(row: dict, device: torch.device, batch_matches: bool) -> float | None:
    """img/s over the authors' on the same card, batch and model (None where not comparable)."""
    key = (
        ("train", row["model"])
        if row["kind"] == "train"
        else ("sample", row["model"], row["method"], row["steps"])
    )
    ref = AUTHORS.get(key)
    return row["img_per_s"] / ref if ref and device.type == "cuda" and batch_matches else None


def _fmt(value, spec: str) -> str:
    """`value` formatted by `spec` ("6.1%"), or a dash of the same width when there is none."""
    return format(value, spec) if value is not None else "-".rjust(int(spec.split(".")[0]))


def table(rows: list[dict]) -> str:
    head = (
        f"{'what':<34} {'mode':<16} {'img/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'×auth':>6} "
        f"{'peak GiB':>8} {'first s':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        what = (
            f"train {r['model']} b{r['batch']}"
            if r["kind"] == "train"
            else (f"sample {r['model']} {r['method']}-{r['steps']} cfg{r['cfg']} b{r['batch']}")
        )
        first = r.get("first_step_s", r.get("first_call_s"))
        lines.append(
            f"{what:<34} {r['mode']:<16} {r['img_per_s']:9.1f} {r['tflops']:8.1f} "
            f"{_fmt(r['mfu'], '6.1%')} {_fmt(r.get('vs_authors'), '6.2f')} "
            f"{_fmt(r['peak_mem_gib'], '8.1f')} {first:8.1f}"
        )
    return "\n".join(lines)


def environment(device: torch.device, peak: float | None) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "device": str(device), "peak_bf16_tflops": peak}  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, cuda=torch.version.cuda, capability=[props.major, props.minor],
                   memory_gib=props.total_memory / GIB)  # fmt: skip
    else:
        env.update(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu_benchmark", help="folder for gpu_benchmark.json")
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    p.add_argument("--models", nargs="+", default=["JiT-B/16", "JiT-L/16"])
    p.add_argument("--batch", type=int, default=128, help="training batch")
    p.add_argument("--sample-batch", type=int, default=128)
    p.add_argument("--sample-model", default="JiT-B/16")
    p.add_argument(
        "--train-modes",
        nargs="+",
        default=["compiled", "eager"],
        choices=TRAIN_MODES,
        help="in this order per model (compiled first: the targets' figure, if time runs out)",
    )
    p.add_argument(
        "--extra",
        nargs="*",
        default=list(EXTRA_ROWS),
        help="MODEL:MODE training rows timed last (models of --models; none: --extra)",
    )
    p.add_argument("--skip-sampling", action="store_true", help="training rows only")
    p.add_argument(
        "--sample-modes",
        nargs="+",
        default=["eager", "reduce-overhead"],
        choices=["eager", *execution.COMPILE_MODES],
    )
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after the first")
    p.add_argument("--repeats", type=int, default=2, help="timed sampling calls")
    p.add_argument("--fast-method", default=FAST_SAMPLER["method"])
    p.add_argument("--fast-steps", type=int, default=FAST_SAMPLER["steps"])
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help=f"bf16 dense peak for MFU (default {H200_BF16_PEAK_TFLOPS} on CUDA)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny model, few steps, compile with the 'eager' backend (CI-sized)",
    )
    return p.parse_args(argv)


def plan(args: argparse.Namespace) -> tuple[SimpleNamespace, dict, tuple, list[dict]]:
    """What to run: the context (device, sizes, steps), the training models, the sampling model
    and the sampler settings (paper's Heun-50 + interval, the few-step solver)."""
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    peak = args.peak_tflops or (H200_BF16_PEAK_TFLOPS if device.type == "cuda" else None)
    ctx = SimpleNamespace(device=device, peak=peak, backend="inductor", batch=args.batch,
                          sample_batch=args.sample_batch, steps=args.steps, warmup=args.warmup,
                          repeats=args.repeats, sample_modes=args.sample_modes)  # fmt: skip
    fast = {**FAST_SAMPLER, "method": args.fast_method, "steps": args.fast_steps}
    if args.smoke:  # the compiled code path without a C++ / Triton build, tiny everything
        ctx.backend, ctx.batch, ctx.sample_batch = "eager", 4, 4
        ctx.steps, ctx.warmup, ctx.repeats, ctx.sample_modes = 2, 1, 1, ["eager", "default"]
        ctx.extra = [("smoke", "compiled-ckpt"), ("smoke", "compiled-bf16res")]
        return ctx, {"smoke": SMOKE}, ("smoke", SMOKE), [
            {**PAPER_SAMPLER, "steps": 4}, {**fast, "steps": 2}]  # fmt: skip
    models = {m: model_config(m, num_classes=IMAGENET_CLASSES) for m in args.models}
    ctx.extra = [tuple(row.split(":", 1)) for row in args.extra]
    for model, mode in ctx.extra:
        if model not in models or mode not in TRAIN_MODES:
            raise SystemExit(f"--extra {model}:{mode}: the model must be one of --models "
                             f"{list(models)} and the mode one of {list(TRAIN_MODES)}")  # fmt: skip
    sampled = (args.sample_model, model_config(args.sample_model, num_classes=IMAGENET_CLASSES))
    return ctx, models, sampled, [dict(PAPER_SAMPLER), fast]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx, models, (sample_name, sample_cfg), samplers = plan(args)
    execution._COMPILE_BACKEND = ctx.backend
    if ctx.device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 parts, as `sample` does
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "gpu_benchmark.json"
    report = {"environment": environment(ctx.device, ctx.peak), "smoke": args.smoke,
              "rows": [], "errors": [],
              "authors": {" ".join(map(str, k)): v for k, v in AUTHORS.items()}}  # fmt: skip

    def record(what: str, fn, *fn_args) -> None:
        try:
            row = fn(*fn_args, ctx)
            row["vs_authors"] = _vs_authors(row, ctx.device, row["batch"] == AUTHORS_BATCH)
            report["rows"].append(row)
            print(table([row]).splitlines()[-1], flush=True)
        except Exception as err:  # one failed configuration (out of memory, say) is recorded
            report["errors"].append(f"{what}: {type(err).__name__}: {err}")
            print(f"FAILED {what}: {type(err).__name__}: {err}", flush=True)
        atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")

    def train_rows(names) -> None:
        """Each model's --train-modes, then its --extra rows."""
        for model in names:
            extra = [mode for name, mode in ctx.extra if name == model]
            for mode in [*args.train_modes, *extra]:
                record(f"train {model} {mode}", bench_training, model, models[model], mode)

    print(table([]), flush=True)
    train_rows(list(models)[:1])  # the first model, then sampling, then the larger models
    if args.skip_sampling:
        samplers = []
    try:
        net = sampling_net(sample_cfg, ctx.device) if samplers else None
        for settings in samplers:
            for mode in ctx.sample_modes:
                what = f"sample {settings['method']}-{settings['steps']} {mode}"
                record(what, bench_sampling, sample_name, net, settings, mode)
        del net
    except Exception as err:
        report["errors"].append(f"sampling net: {type(err).__name__}: {err}")
    train_rows(list(models)[1:])
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    print("\n" + table(report["rows"]))
    print(f"\n{report['environment']}\n→ {json_path}")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
