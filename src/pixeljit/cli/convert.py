"""`pixeljit convert`: any checkpoint (a pixeljit run, or an authors' checkpoint-last.pth) → one
.safetensors file with the weights, the JiT config, the objective and the class names."""

from __future__ import annotations

from pixeljit.checkpoints.load import export_safetensors, load_trained
from pixeljit.cli.checks import check_int, check_output


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="export a run or an authors' checkpoint-last.pth (or its folder) to .safetensors",
    )
    p.add_argument("source", help="run folder / .pt, or checkpoint-last.pth / its folder")
    p.add_argument("out", help="destination .safetensors file")
    p.add_argument(
        "--weights",
        default=None,
        help="runs: ema (default), ema:<decay>, model; authors': model_ema1 (default), "
        "model_ema2, model",
    )
    p.add_argument(
        "--in-context-start",
        type=int,
        default=None,
        help="authors' checkpoints of non-standard depth: in-context start block",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT file")
    p.set_defaults(run=run)


def run(args) -> int:
    if not args.out.endswith(".safetensors"):
        raise ValueError(f"output {args.out!r} must end in .safetensors")
    check_int("--in-context-start", args.in_context_start, 0)
    check_output("OUT", args.out, False, args.overwrite, "--overwrite")  # before loading
    model = load_trained(args.source, args.weights, in_context_start=args.in_context_start)
    path = export_safetensors(model, args.out)
    cfg = model.net.config
    print(
        f"wrote {path}: {model.description}; depth {cfg.depth}, width {cfg.hidden_size}, "
        f"{cfg.image_size}px, patch {cfg.patch_size}, {cfg.num_classes} classes, "
        f"{model.prediction}-prediction, noise scale {model.noise_scale}"
    )
    return 0
