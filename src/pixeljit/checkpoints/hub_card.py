"""The model card (README.md) of a hub folder: YAML front matter the Hub reads (library name, an
empty license for the publisher to fill in, tags), then what the model is, how to sample it, its
sample grid and its evaluation scores, each stated as known or as unknown.

The grid comes from the run folder when there is one (`run_grid`): the preview grid the run drew
at the exported step, said to be of other weights when it is. The scores are a `pixeljit eval
--out` file of these very weights (`checkpoints.provenance` checks the digest it records).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from pixeljit.files.images import png_file_problem

PAPER = (
    '"Back to Basics: Let Denoising Generative Models Denoise" (Li & He, 2025, '
    "[arXiv:2511.13720](https://arxiv.org/abs/2511.13720))"
)
BASE_TAGS = ("diffusion", "image-generation", "jit", "pixel-space")
# scores a run folder may hold, in order of preference: `pixeljit eval --checkpoint RUN ... --out
# RUN/eval.json`, and the demo's own score.json
RUN_SCORES_FILES = ("eval.json", "score.json")
RUN_GRID = "samples-{step:07d}.png"  # the preview a run draws at a step (training.loop)
MAX_NAMES_SHOWN = 20  # class names listed in the card (all of them are in config.json)
GRID_SKIPPED = "so it was not exported"  # a grid not fit to publish (`png_file_problem`)
LICENSE_LINE = "license:  # fill in before publishing, e.g. mit, apache-2.0, cc-by-4.0"


# config.json's sampler_source when the exported weights recommend no sampler settings
DEFAULTS_SOURCE = "pixeljit's defaults (the source records none)"


@dataclass(frozen=True)
class CardExtras:
    """What the card shows beyond config.json."""

    grid: Path | None = None  # a PNG to publish as samples.png
    grid_caption: str = ""
    grid_missing: str = "no sample grid was exported with these weights"
    scores: dict | None = None  # name → number or short text
    scores_source: str = ""
    scores_about: str = ""  # what they were measured on (images, seed, sampler, reference)
    scores_note: str = ""  # why there are none, or that they are unverified
    source: str = ""  # what was converted
    authors: bool = False  # an authors' released checkpoint (ImageNet-1k)
    bare: bool = False  # a bare state dict in a torch file (no named weights, no training data)
    sampler_source: str = ""  # where the recommended sampler settings come from


# ------------------------------------------------------------------------ grid and scores


def run_grid(run_folder: Path, model, preview_weights: str | None) -> CardExtras:
    """The grid the run drew at the exported step, if it did (`model` is the exported
    TrainedModel, `preview_weights` the weights the run's previews draw from, e.g. 'ema:0.995')."""
    if model.step is None:
        return CardExtras()
    candidate = run_folder / RUN_GRID.format(step=model.step)
    if not os.path.lexists(candidate):
        return CardExtras(grid_missing=f"the run folder holds no preview grid of step {model.step}")
    problem = png_file_problem(candidate)  # a link is never followed into what is published
    if problem:
        missing = f"the run's preview grid {candidate.name} {problem}, {GRID_SKIPPED}"
        return CardExtras(grid_missing=missing)
    if preview_weights is None:  # not recorded: only raw weights are surely not the EMA
        drawn = "its sampling EMA" + (", not these raw weights" if model.weights == "model" else "")
    else:
        drawn = f"its sampling average ({preview_weights})"
        if preview_weights != model.weights:
            drawn += f", not these weights ({model.weights or 'unnamed'})"
    caption = (
        f"The preview grid the training run drew at step {model.step} ({candidate.name}), "
        f"from {drawn}, with the sampler settings above."
    )
    return CardExtras(grid=candidate, grid_caption=caption)


# ------------------------------------------------------------------------------ the card


def front_matter(config: dict, authors: bool) -> str:
    tags = list(BASE_TAGS) + [f"{config['objective']['prediction']}-prediction"]
    classes = config["architecture"]["num_classes"]
    tags.append("class-conditional" if classes else "unconditional-image-generation")
    meta: dict = {"library_name": config["library_name"]}
    tail: dict = {"tags": tags}
    if authors:
        tail["datasets"] = ["imagenet-1k"]
    if not classes:
        tail["pipeline_tag"] = "unconditional-image-generation"
    body = yaml.safe_dump(meta, sort_keys=False) + LICENSE_LINE + "\n"
    return "---\n" + body + yaml.safe_dump(tail, sort_keys=False) + "---\n"


def model_title(arch: dict, size: str | None) -> str:
    standard = size is not None and arch["image_size"] == arch["patch_size"] * 16
    if standard:
        return f"JiT-{size}/{arch['patch_size']}"
    return (
        f"JiT (depth {arch['depth']}, width {arch['hidden_size']}, patch "
        f"{arch['patch_size']}, {arch['image_size']} px)"
    )


def _classes_line(config: dict, authors: bool) -> str:
    count = config["architecture"]["num_classes"]
    names = config["class_names"]
    if not count:
        return "none (unconditional)"
    if names:
        shown = ", ".join(_cell(n) for n in names[:MAX_NAMES_SHOWN])
        if len(names) < count:  # a model with more class slots than its data named
            more = f", … ({len(names)} of the {count} classes named; the names are in config.json)"
        elif count > MAX_NAMES_SHOWN:
            more = f", … ({count} in all; every name is in config.json)"
        else:
            more = ""
        return f"{count}: {shown}{more}"
    which = "ImageNet-1k class indices" if authors else "class indices"
    return f"{count} ({which} 0–{count - 1}; no class names recorded)"


MARKUP = str.maketrans({c: f"&#{ord(c)};" for c in "<>[]`|*"})  # shown as text, never markup


def _cell(text: str) -> str:
    """`text` from a file shown as text in the card: one line, no table column break, no HTML,
    link or code markup."""
    return " ".join(str(text).split()).translate(MARKUP)


def _origin(extras: CardExtras) -> str:
    """What the exported weights came from, as the card's first paragraph says it."""
    if extras.authors:
        return "the authors' released checkpoint"
    return "a bare state dict in a torch file" if extras.bare else "a pixeljit checkpoint"


def model_card(config: dict, params: int, extras: CardExtras, size: str | None) -> str:
    """README.md of a hub folder for its `config` (config.json as written)."""
    arch, obj, weights, s = (config[k] for k in ("architecture", "objective", "weights", "sampler"))
    title = model_title(arch, size)
    decay = f" (EMA decay {weights['ema_decay']})" if weights["ema_decay"] is not None else ""
    step = f", training step {weights['step']}" if weights["step"] is not None else ""
    origin = _origin(extras)
    guidance = (
        f"CFG {s['cfg']} on t in ({s['interval'][0]}, {s['interval'][1]})"
        if s["cfg"] != 1
        else "no guidance"
    )
    grid = (
        f"![samples](samples.png)\n\n{extras.grid_caption}"
        if extras.grid is not None
        else f"None: {extras.grid_missing}."
    )
    lines = [
        front_matter(config, extras.authors),
        f"# {title}",
        "",
        f"A JiT (Just image Transformer), the pixel-space diffusion model of {PAPER}, exported "
        f"by [pixeljit](https://pypi.org/project/pixeljit/) from {origin}"
        + (f" (`{extras.source}`)." if extras.source else "."),
        "",
        "## Use",
        "",
        "```bash",
        "pip install 'pixeljit[hub]'",
        "pixeljit sample hf://ORG/NAME --out samples.png   # or a local copy of this folder",
        "```",
        "",
        "In Python: `pixeljit.load_trained('hf://ORG/NAME')` returns the network with its "
        "objective, class names and the recommended sampler settings (`.sampler`).",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| image | {arch['image_size']} × {arch['image_size']} px, {arch['in_channels']} "
        f"channel{'s' if arch['in_channels'] != 1 else ''} |",
        f"| patch | {arch['patch_size']} |",
        f"| depth × width | {arch['depth']} × {arch['hidden_size']}, {arch['num_heads']} heads |",
        f"| parameters | {params:,} |",
        f"| classes | {_classes_line(config, extras.authors)} |",
        f"| objective | {obj['prediction']}-prediction, noise scale {obj['noise_scale']}, "
        f"preconditioner {obj['preconditioner']}"
        + (f" (sigma_data {obj['sigma_data']})" if "sigma_data" in obj else "")
        + " |",
        f"| weights | {weights['name'] or 'not recorded'}{decay}{step} |",
        "",
        "## Recommended sampling"
        if config["sampler_source"] != DEFAULTS_SOURCE
        else "## Sampling (no recommendation: pixeljit's defaults)",
        "",
        f"{s['method']} solver, {s['steps']} step{'s' if s['steps'] != 1 else ''}, "
        f"{s['grid']} time grid"
        + (f" (shift {s['shift']})" if s["grid"] == "shifted" else "")
        + f", {guidance}, t_eps {s['t_eps']}. Source: {config['sampler_source']}.",
        "",
        "## Samples",
        "",
        grid,
        "",
        "## Evaluation",
        "",
        *_scores_lines(extras, weights["name"]),
        "",
        "## License",
        "",
        "Not set: the publisher fills in `license:` above, respecting the terms of the training "
        "data and of the original weights.",
        "",
    ]
    return "\n".join(lines)


def _scores_lines(extras: CardExtras, weights: str | None) -> list[str]:
    if not extras.scores:
        why = f" ({_cell(extras.scores_note)})" if extras.scores_note else ""
        chosen = f" --weights {weights}" if weights else ""
        return [
            f"Unknown: no evaluation of these weights was recorded with this export{why}. "
            f"`pixeljit eval --checkpoint SOURCE{chosen} ... --out FILE.json`, then `pixeljit "
            "convert SOURCE --hub DIR --scores FILE.json --overwrite`, puts their scores here."
        ]
    rows = [
        f"| {_cell(k)} | {v:.6g} |" if not isinstance(v, str) else f"| {_cell(k)} | {_cell(v)} |"
        for k, v in extras.scores.items()
    ]
    about = f" ({_cell(extras.scores_about)})" if extras.scores_about else ""
    note = [f"Unverified: {_cell(extras.scores_note)}.", ""] if extras.scores_note else []
    return [
        f"As recorded in `{Path(extras.scores_source).name}` (the evaluation's output when this "
        f"folder was written; not part of it){about}:",
        "",
        *note,
        "| score | value |",
        "|---|---|",
        *rows,
    ]
