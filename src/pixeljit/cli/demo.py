"""`pixeljit demo`: train a small class-conditional JiT on Fashion-MNIST, then show the result.

No arguments needed. On a CPU it trains the `fmnist-small` preset (x-prediction, v-loss) for
1000 steps (measured: 12 min 5 s end to end on 2 cores); on a GPU a wider model for longer.
Writes a labelled sample grid (one row per class), the loss curve and the final checkpoint.
Like `pixeljit train`, it never trains over an earlier run: an --out folder that holds one is
refused, with the choice of --restart (move the old run aside to DIR.old-<time>, train again),
another --out, or `pixeljit train --resume DIR` to continue an interrupted demo.
"""

from __future__ import annotations

from pathlib import Path

CPU_PRESET, CPU_STEPS = "fmnist-small", 1000
GPU_PRESET_OVERRIDES = {"model.hidden_size": 384, "model.depth": 8, "optim.global_batch": 256}
GPU_STEPS = 4000


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train a small JiT on Fashion-MNIST and write a sample grid")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--steps", type=int, default=None, help="override the step budget")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--restart", action="store_true",
                   help="--out holds an earlier run: move it aside to a new sibling "
                        "DIR.old-<time> (nothing is deleted) and train again")  # fmt: skip
    p.set_defaults(run=run)


def demo_config(out: str, steps: int | None, device: str):
    import torch

    from pixeljit.training.config import apply_overrides, get_preset

    gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    overrides = {"run.out": out, "run.device": device, "sample.per_class": 8,
                 "sample.max_classes": 10, "run.ckpt_every": 200}  # fmt: skip
    if gpu:
        overrides.update(GPU_PRESET_OVERRIDES)
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be ≥ 1, got {steps} (omit it for the default budget)")
    overrides["optim.steps"] = steps if steps is not None else (GPU_STEPS if gpu else CPU_STEPS)
    return apply_overrides(get_preset(CPU_PRESET), overrides)


def run(args) -> int:
    from pixeljit.cli.checks import check_device
    from pixeljit.training.loop import train

    check_device("--device", args.device)  # before the first line is printed
    cfg = demo_config(args.out, args.steps, args.device)
    m = cfg.model
    print(
        f"pixeljit demo: training a depth-{m.depth}, width-{m.hidden_size} JiT on Fashion-MNIST "
        f"({m.image_size}px, patch {m.patch_size}) for {cfg.optim.steps} steps → {cfg.run.out}"
    )
    result = train(cfg, restart=args.restart)
    if result.stopped_on_nan:
        return 1
    out = Path(cfg.run.out)
    grids = sorted(out.glob("samples-*.png"))
    print("\nwrote:")
    print(f"  samples     {grids[-1] if grids else '(none)'}   (one row per class)")
    print(f"  loss curve  {out / 'loss.png'}")
    print(f"  checkpoint  {result.checkpoint}")
    print(f"  metrics     {out / 'metrics.jsonl'}")
    return 0
