"""Seconds per JiT training step and per sampler step on this CPU, optionally against another
commit side by side.

A training step is what `pixeljit train` does per step in fp32 on a CPU: `flow_matching_loss`
(label drop, t, ε, forward), backward, AdamW, and the EMA update of the paper's three decays;
each phase is timed on its own (the CPU runs synchronously). The sampler is Heun with CFG on the
paper's interval (0.1, 1], timed per solver step. Each measurement runs in a fresh subprocess
whose PYTHONPATH points at one source tree; with `--baseline REV` the commit REV is checked out
into a temporary `git worktree` and the two trees take turns, round after round, in alternating
order, so that load on a shared machine hits both alike. Medians over every timed step are
reported, with the ratio baseline / working tree.

    python benchmarks/cpu_step.py [--baseline main] [--rounds 5] [--steps 3] [--batch 2]
                                  [--model JiT-B/16] [--threads 2] [--sample-steps 4]
                                  [--compile] [--matmul-precision medium]
                                  [--json results.json]

`--matmul-precision` times the float32 step with torch's reduced-precision matrix products
(`run.matmul_precision`: `medium` takes bf16 inputs with float32 sums, through oneDNN's AMX-BF16
kernels on CPUs that have them); the baseline tree runs at the same setting only if it knows it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 1  # untimed steps first (allocator, first-touch of the optimiser state)
PAPER_EMA_DECAYS = (0.9996, 0.9998, 0.9999)
PAPER_CFG_B16 = 2.9
PAPER_INTERVAL = (0.1, 1.0)
LEARNING_RATE = 1e-4
BETAS = (0.9, 0.95)


# ------------------------------------------------------------------------------ the worker


def _optimizer(params):
    """The tree's own optimiser construction; a commit without `training.optimizer` (older main)
    built AdamW(foreach=True) inline in loop.py, which is reproduced here."""
    import torch

    try:
        from pixeljit.training.optimizer import build_adamw
    except ImportError:
        return torch.optim.AdamW(params, lr=LEARNING_RATE, betas=BETAS, foreach=True), "inline"
    return build_adamw(params, lr=LEARNING_RATE, betas=BETAS, weight_decay=0.0), "build_adamw"


def worker(args) -> dict:
    """Time `args.steps` training steps and the sampler in this process (one source tree)."""
    import torch

    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision(args.matmul_precision)
    from pixeljit import create_model, sample
    from pixeljit.diffusion.objective import ObjectiveConfig, flow_matching_loss
    from pixeljit.training.ema import EMA

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=1000)
    cfg = model.config
    ema = EMA(model, PAPER_EMA_DECAYS)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, how = _optimizer(params)
    objective = ObjectiveConfig()
    x = torch.rand(args.batch, cfg.in_channels, cfg.image_size, cfg.image_size) * 2 - 1
    y = torch.arange(args.batch) % cfg.num_classes
    gen = torch.Generator().manual_seed(0)
    phases: dict[str, list[float]] = {"forward_backward": [], "adamw": [], "ema": [], "step": []}
    model.train()
    net = torch.compile(model, dynamic=False) if args.compile else model  # inductor on a CPU
    first_step = None
    for i in range(WARMUP_STEPS + args.steps):
        t0 = time.perf_counter()
        per_sample, _ = flow_matching_loss(net, x, y, objective, cfg.num_classes, gen)
        per_sample.float().mean().backward()
        t1 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        ema.update(model)
        t3 = time.perf_counter()
        if i == 0:
            first_step = t3 - t0  # with --compile: the compile time
        if i >= WARMUP_STEPS:
            for key, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                phases[key].append(value)
    out = {"train": phases, "optimizer": how, "torch": torch.__version__, "first_step": first_step}
    if args.sample_steps:
        labels = list(range(args.batch))
        start = time.perf_counter()
        sample(model, labels, steps=args.sample_steps, cfg=PAPER_CFG_B16, interval=PAPER_INTERVAL,
               seed=0)  # fmt: skip
        out["sample_per_step"] = (time.perf_counter() - start) / args.sample_steps
    return out


# ------------------------------------------------------------------------ the orchestrator


def _run_tree(src: Path, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--worker", "--model", args.model, "--batch", str(args.batch),
           "--steps", str(args.steps), "--threads", str(args.threads),
           "--sample-steps", str(args.sample_steps)]  # fmt: skip
    cmd += ["--compile"] if args.compile else []
    cmd += ["--matmul-precision", args.matmul_precision]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the worker for {src} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _baseline_tree(rev: str, tmp: Path) -> Path:
    folder = tmp / "baseline"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(folder), rev],
                   check=True, capture_output=True, text=True)  # fmt: skip
    return folder


def _summary(runs: list[dict]) -> dict:
    phases = {k: [v for r in runs for v in r["train"][k]] for k in runs[0]["train"]}
    out = {k: statistics.median(v) for k, v in phases.items()}
    out["first_step"] = statistics.median(r["first_step"] for r in runs)
    samples = [r["sample_per_step"] for r in runs if "sample_per_step" in r]
    if samples:
        out["sample_per_step"] = statistics.median(samples)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a git revision to time side by side (e.g. main)")
    parser.add_argument("--rounds", type=int, default=5, help="worker processes per tree")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per worker")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--model", default="JiT-B/16")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--sample-steps", type=int, default=4, help="Heun steps (0: no sampling)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile(dynamic=False) the model (inductor; minutes on a CPU)",
    )
    parser.add_argument(
        "--matmul-precision",
        choices=("highest", "high", "medium"),
        default="highest",
        help="float32 matmul precision of the step and the sampler (run.matmul_precision)",
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for flag, value in (("--rounds", args.rounds), ("--steps", args.steps),
                        ("--batch", args.batch), ("--threads", args.threads)):  # fmt: skip
        if value < 1:
            parser.error(f"{flag} must be ≥ 1, got {value}")
    if args.sample_steps < 0:
        parser.error(f"--sample-steps must be ≥ 0, got {args.sample_steps}")
    if args.worker:
        print(json.dumps(worker(args)))
        return

    with tempfile.TemporaryDirectory(prefix="pixeljit-bench-") as tmp:
        trees = {"working tree": REPO / "src"}
        if args.baseline:
            trees = {args.baseline: _baseline_tree(args.baseline, Path(tmp)) / "src", **trees}
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        try:
            for r in range(args.rounds):
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for name in order:
                    runs[name].append(_run_tree(trees[name], args))
                    print(f"round {r + 1}/{args.rounds} {name}: "
                          f"step {runs[name][-1]['train']['step']}", file=sys.stderr)  # fmt: skip
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                str(Path(tmp) / "baseline")], check=False)  # fmt: skip
    result = {name: _summary(r) for name, r in runs.items()}
    first = runs["working tree"][0]
    print(f"{args.model} fp32 (matmuls at {args.matmul_precision} precision), batch "
          f"{args.batch}, {args.threads} thread(s), "
          f"torch {first['torch']}; medians of {args.rounds} × {args.steps} steps (s)")  # fmt: skip
    keys = list(result["working tree"])
    print("| " + " | ".join(["tree", *keys]) + " |")
    print("|" + "---|" * (len(keys) + 1))
    for name, summary in result.items():
        print("| " + " | ".join([name, *(f"{summary[k]:.3f}" for k in keys)]) + " |")
    if args.baseline:
        new, old = result["working tree"], result[args.baseline]
        speedup = {k: old[k] / new[k] for k in keys if new[k] > 0}
        result["speedup"] = speedup
        print("| speed-up | " + " | ".join(f"{speedup[k]:.2f}×" for k in keys) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
