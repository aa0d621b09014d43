"""`pixeljit convert`: an authors' checkpoint → a pixeljit .safetensors (weights + config)."""

from __future__ import annotations

from pixeljit.reference import WEIGHT_ENTRIES, load_reference, save_safetensors


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an authors' checkpoint-last.pth (or its folder) to .safetensors",
    )
    p.add_argument("source", help="checkpoint-last.pth or the folder holding it")
    p.add_argument("out", help="destination .safetensors file")
    p.add_argument("--weights", default="model_ema1", choices=WEIGHT_ENTRIES)
    p.add_argument(
        "--in-context-start",
        type=int,
        default=None,
        help="block that receives the in-context tokens (default: standard for the depth)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    if not args.out.endswith(".safetensors"):
        raise ValueError(f"output {args.out!r} must end in .safetensors")
    net = load_reference(args.source, weights=args.weights, in_context_start=args.in_context_start)
    path = save_safetensors(net, args.out)
    cfg = net.config
    print(
        f"wrote {path}: {args.weights} of a depth-{cfg.depth}, width-{cfg.hidden_size} JiT "
        f"at {cfg.image_size}px, patch {cfg.patch_size}, {cfg.num_classes} classes"
    )
    return 0
