"""Weight decay (`optim.weight_decay`) acts on parameters of two or more dimensions; 1-D ones
(biases, norm scales) are exempt unless `optim.decay_1d`, the common convention (before, AdamW
decayed every parameter). Without weight decay the optimiser is one group, as it always was, and
a run written before the field existed resumes doing what it did."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_run
from pixeljit.checkpoints.checksums import CHECKSUM_KEY, checksums
from pixeljit.checkpoints.run import load_checkpoint
from pixeljit.cli import build_parser, main
from pixeljit.cli.train import build_config
from pixeljit.training.loop import train
from pixeljit.training.optimizer import build_adamw

LR, DECAY = 0.1, 0.5


def one_step_without_gradient(decay_1d: bool, weight_decay: float = DECAY):
    """A linear layer and a norm scale after one AdamW step of zero gradients: Adam's own term is
    0, so each parameter is multiplied by 1 − lr·wd where it decays and kept where not."""
    torch.manual_seed(0)
    layer, scale = torch.nn.Linear(4, 3), torch.nn.Parameter(torch.rand(4) + 0.5)
    params = [layer.weight, layer.bias, scale]
    before = [p.detach().clone() for p in params]
    opt = build_adamw(params, LR, (0.9, 0.95), weight_decay, decay_1d)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    return [p.detach() for p in params], before, opt


def test_one_dimensional_parameters_do_not_decay_by_default():
    (weight, bias, scale), (w0, b0, s0), opt = one_step_without_gradient(decay_1d=False)
    assert torch.allclose(weight, w0 * (1 - LR * DECAY), rtol=0, atol=1e-7)
    assert torch.equal(bias, b0) and torch.equal(scale, s0)
    assert [g["weight_decay"] for g in opt.param_groups] == [DECAY, 0.0]


def test_decay_1d_decays_every_parameter():
    after, before, opt = one_step_without_gradient(decay_1d=True)
    for p, p0 in zip(after, before, strict=True):
        assert torch.allclose(p, p0 * (1 - LR * DECAY), rtol=0, atol=1e-7)
    assert len(opt.param_groups) == 1


def test_without_weight_decay_the_optimiser_is_one_group():
    after, before, opt = one_step_without_gradient(decay_1d=False, weight_decay=0.0)
    assert len(opt.param_groups) == 1
    assert all(torch.equal(p, p0) for p, p0 in zip(after, before, strict=True))


def test_decay_1d_without_weight_decay_is_refused():
    base = ["train", "--preset", "fmnist-tiny", "--data", "fashion-mnist", "--out", "r"]
    parse = build_parser().parse_args
    with pytest.raises(ValueError, match=r"optim.decay_1d true has no effect while "
                       r"optim.weight_decay is 0"):  # fmt: skip
        build_config(parse([*base, "--set", "optim.decay_1d=true"]))
    cfg = build_config(parse([*base, "--set", "optim.decay_1d=true", "--set",
                              "optim.weight_decay=0.05"]))  # fmt: skip
    assert cfg.optim.decay_1d is True


def written_before_the_field(run) -> None:
    """Rewrite the run's checkpoint as a pixeljit before optim.decay_1d wrote it."""
    path = run / "latest.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    del state["config"]["optim"]["decay_1d"], state[CHECKSUM_KEY]
    state[CHECKSUM_KEY] = checksums(state)
    path.unlink()
    torch.save(state, path)


def decays_every_parameter(checkpoint: dict, weight_decay: float) -> None:
    """The checkpoint's optimiser is one group decaying every parameter by `weight_decay`, the
    1-D ones (biases, norm scales) included, as a run of `decay_1d` true (or no decay) trains."""
    groups = checkpoint["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [weight_decay]
    one_d = {k for k, v in checkpoint["model"].items() if v.ndim < 2}
    assert one_d and one_d <= set(groups[0]["params"]), one_d - set(groups[0]["params"])


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_a_run_from_before_the_field_resumes_as_it_trained(fmnist16, tmp_path, weight_decay):
    """With weight decay, such a run decayed every parameter: it continues so, bit for bit as a
    run of `decay_1d` true; without, nothing changes and it resumes as it is."""
    data, settings = fmnist16(64), {"optim.weight_decay": weight_decay, "optim.lr": 1e-2}
    if weight_decay:
        settings["optim.decay_1d"] = True
    run, straight = tmp_path / "run", tmp_path / "straight"
    train(tiny_run(data, run, **settings), progress=False)
    train(tiny_run(data, straight, **settings, **{"optim.steps": 4}), progress=False)
    (run / "config.yaml").unlink()  # judged by its checkpoint alone
    written_before_the_field(run)
    assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 0
    resumed, whole = load_checkpoint(run), load_checkpoint(straight)
    assert resumed["config"]["optim"]["decay_1d"] is bool(weight_decay)
    decays_every_parameter(whole, weight_decay)  # training honours decay_1d true
    decays_every_parameter(resumed, weight_decay)
    for key, value in whole["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_the_python_api_resumes_such_a_run_from_a_dict_without_the_field(fmnist16, tmp_path):
    """`train(dict, resume=...)`: a dict written before the field (a run's config.yaml read back)
    takes its old sense, as the CLI does, instead of a refused recipe change."""
    settings = {"optim.weight_decay": 0.05, "optim.lr": 1e-2, "optim.decay_1d": True}
    run, straight = tmp_path / "run", tmp_path / "straight"
    train(tiny_run(fmnist16(64), run, **settings), progress=False)
    train(tiny_run(fmnist16(64), straight, **settings, **{"optim.steps": 4}), progress=False)
    written_before_the_field(run)
    config = load_checkpoint(run, tensors=False)["config"]
    assert "decay_1d" not in config["optim"]
    config["optim"]["steps"] = 4
    train(config, resume=str(run), progress=False)
    resumed, whole = load_checkpoint(run), load_checkpoint(straight)
    decays_every_parameter(resumed, 0.05)
    for key, value in whole["model"].items():
        assert torch.equal(resumed["model"][key], value), key
