"""Helpers shared by the Hugging Face layout tests (test_hub.py, test_hub_remote.py): the tiny
run both convert, its hub folder, and comparisons of loaded models. Each test module makes its
own run through these (fixtures are not imported from module to module)."""

from __future__ import annotations

import json

import torch

from conftest import SAMPLED_RUN, check_samples_vary, tiny_run
from pixeljit.checkpoints.hub import CONFIG_NAME, WEIGHTS_NAME
from pixeljit.checkpoints.load import load_trained
from pixeljit.cli import main
from pixeljit.diffusion.sampler import sample

OBJECTIVE = {"objective.prediction": "v", "objective.noise_scale": 0.5}
PREVIEW = {"sample.cfg": 1.5, "sample.steps": 2, "sample.method": "heun"}  # set, not the preset's
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a snapshot's commit hash (40 hex digits)
SAMPLE_ARGS = ["--steps", "2", "--cfg", "1.5", "--num", "4", "--labels", "0", "3", "--seed", "5"]


def eval_args(source, ref, out, *extra) -> list[str]:
    """`pixeljit eval` of `source`: FD of 8 two-step samples against `ref`, into `out`."""
    return ["eval", "--checkpoint", str(source), "--num", "8", "--steps", "2", "--ref", str(ref),
            "--metrics", "fd", "--batch-size", "8", "--out", str(out), *extra]  # fmt: skip


def make_run(tmp_path_factory, fmnist16):
    """A 2-step v-prediction run (noise scale 0.5) with its preview grid and an eval.json of its
    default weights."""
    from pixeljit.training.loop import train

    out = tmp_path_factory.mktemp("hubrun") / "run"
    train(tiny_run(fmnist16(64), out, **OBJECTIVE, **PREVIEW, **SAMPLED_RUN), progress=False)
    check_samples_vary(load_trained(out))  # else class names could map anywhere unnoticed
    assert main(eval_args(out, fmnist16(64), out / "eval.json")) == 0
    return out


def make_hub(run, tmp_path_factory):
    """`run` converted to a hub folder."""
    out = tmp_path_factory.mktemp("hub") / "tiny-jit"
    assert main(["convert", str(run), "--hub", str(out)]) == 0
    return out


def same_weights(a, b) -> bool:
    sa, sb = a.net.state_dict(), b.net.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def images(model, seed=5):
    objective = model.objective_metadata()
    return sample(model.net, [0, 3, 3, 7], steps=2, cfg=1.5, seed=seed, **objective)


def broken(hub, tmp_path, edit) -> str:
    """A copy of `hub` whose config.json is `edit(config dict)` (a str is written as is)."""
    folder = tmp_path / "broken"
    folder.mkdir(exist_ok=True)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        (folder / name).write_bytes((hub / name).read_bytes())
    config = json.loads((hub / CONFIG_NAME).read_text())
    text = edit(config)
    (folder / CONFIG_NAME).write_text(text if isinstance(text, str) else json.dumps(text))
    return str(folder)


def set_field(config, dotted, value):
    *path, last = dotted.split(".")
    node = config
    for key in path:
        node = node[key]
    node[last] = value
    return config
