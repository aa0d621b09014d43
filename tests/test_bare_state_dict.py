"""A bare state dict in a .pth (a mapping of tensors, e.g. one's own export) is one set of
unnamed weights: it loaded labelled 'model_ema1' whatever was asked, so its description, its
`TrainedModel.weights` and everything written from them (an EMA decay of 0.9999 in a hub
config.json) claimed the authors' EMA; and `weights='model_ema2'` silently loaded the bare dict.
Now it loads unnamed ('') by default and a weights choice is refused; the authors' dict is as
before."""

from __future__ import annotations

import pytest
import torch

import pixeljit
from cli_errors import check_flags, cli_error
from conftest import TINY_NET
from pixeljit.checkpoints.authors import extract_state_dict
from pixeljit.checkpoints.hub_write import hub_config
from pixeljit.checkpoints.load import AUTHORS_EMA_DECAYS, export_safetensors
from pixeljit.checkpoints.provenance import model_record
from pixeljit.cli import main
from pixeljit.diffusion.sampler import SamplerConfig

START = TINY_NET.in_context_start  # depth 2 has no standard in-context start: it is passed
CHOICES = ("model", "model_ema1", "model_ema2")
REFUSAL = (
    "holds one bare state dict \\(no 'model' / 'model_ema1' / 'model_ema2' entries\\), not "
    "'{}' weights: drop the weights choice .*--weights \\(Python: weights=None\\)"
)


def _varied_net(seed: int) -> pixeljit.JiT:
    """TINY_NET with every parameter perturbed (its zero-initialised layers too), in eval mode."""
    torch.manual_seed(seed)
    net = pixeljit.JiT(TINY_NET)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def _state(net: pixeljit.JiT, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def nets():
    return {name: _varied_net(seed) for seed, name in enumerate(CHOICES)}


@pytest.fixture(scope="module")
def bare(nets, tmp_path_factory):
    """model_ema1's weights saved as one bare state dict (no 'net.' prefix, as one's export)."""
    path = tmp_path_factory.mktemp("bare") / "mine.pth"
    torch.save(_state(nets["model_ema1"]), path)
    return path


@pytest.fixture(scope="module")
def authors(nets, tmp_path_factory):
    """An authors'-style checkpoint-last.pth: three weight sets, keys prefixed 'net.'."""
    folder = tmp_path_factory.mktemp("authors")
    checkpoint = {name: _state(net, "net.") for name, net in nets.items()}
    torch.save({**checkpoint, "epoch": 3}, folder / "checkpoint-last.pth")
    return folder / "checkpoint-last.pth"


def _outputs(net: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(7)
    cfg = net.config
    z = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    t, y = torch.tensor([0.3, 0.8]), torch.tensor([0, 2])
    with torch.no_grad():
        return net(z, t, y)


def test_a_bare_state_dict_loads_unnamed(bare, nets):
    model = pixeljit.load_trained(bare, in_context_start=START)
    assert model.weights == ""
    assert model.description == str(bare)
    assert "model_ema" not in model.description and "model_ema" not in repr(model)
    assert "weights=None" in repr(model)
    assert model.ema_decay is None
    assert torch.equal(_outputs(model.net), _outputs(nets["model_ema1"]))
    net = pixeljit.load_reference(bare, in_context_start=START)  # the default: None
    assert torch.equal(_outputs(net), _outputs(nets["model_ema1"]))
    loaded = pixeljit.load_reference(_state(nets["model"]), in_context_start=START)  # a mapping
    assert torch.equal(_outputs(loaded), _outputs(nets["model"]))


@pytest.mark.parametrize("weights", CHOICES)
def test_a_weights_choice_for_a_bare_state_dict_is_refused(bare, nets, weights):
    with pytest.raises(ValueError, match=REFUSAL.format(weights)) as err:
        pixeljit.load_trained(bare, weights, in_context_start=START)
    assert str(bare) in str(err.value)
    with pytest.raises(ValueError, match=REFUSAL.format(weights)):
        pixeljit.load_reference(bare, weights, in_context_start=START)
    with pytest.raises(ValueError, match=REFUSAL.format(weights)):
        pixeljit.load_reference(_state(nets["model"]), weights=weights, in_context_start=START)
    with pytest.raises(ValueError, match=REFUSAL.format(weights)):
        extract_state_dict(_state(nets["model"]), weights)


def test_extract_state_dict_takes_a_bare_dict_without_a_choice(authors, nets):
    state = _state(nets["model"], "net.")
    assert extract_state_dict(state).keys() == nets["model"].state_dict().keys()
    checkpoint = torch.load(authors, weights_only=True)
    ema1 = extract_state_dict(checkpoint)  # None: the authors' default
    assert all(torch.equal(v, checkpoint["model_ema1"]["net." + k]) for k, v in ema1.items())


def test_the_authors_dict_loads_as_before(authors, nets):
    default = pixeljit.load_trained(authors, in_context_start=START)
    assert default.weights == "model_ema1" and default.description == f"{authors} (model_ema1)"
    assert default.ema_decay == AUTHORS_EMA_DECAYS["model_ema1"]
    assert torch.equal(_outputs(default.net), _outputs(nets["model_ema1"]))
    for weights in CHOICES:
        model = pixeljit.load_trained(authors.parent, weights, in_context_start=START)
        assert model.weights == weights and model.description.endswith(f"({weights})")
        assert model.ema_decay == AUTHORS_EMA_DECAYS.get(weights)
        assert torch.equal(_outputs(model.net), _outputs(nets[weights]))
        net = pixeljit.load_reference(authors, weights, in_context_start=START)
        assert torch.equal(_outputs(net), _outputs(nets[weights]))
    net = pixeljit.load_reference(authors, in_context_start=START)  # the default: model_ema1
    assert torch.equal(_outputs(net), _outputs(nets["model_ema1"]))
    with pytest.raises(ValueError, match="no 'ema' weights: pass weights= 'model' / "):
        pixeljit.load_reference(authors, "ema", in_context_start=START)


def test_nothing_written_from_a_bare_dict_claims_a_weights_name_or_decay(bare, tmp_path):
    """What is written from the loaded model: a .safetensors export, a hub config.json, a score
    file's model record."""
    model = pixeljit.load_trained(bare, in_context_start=START)
    config = hub_config(model, SamplerConfig(), "")
    assert config["weights"] == {"name": "", "ema_decay": None, "step": None}
    assert model_record(model, str(bare))["weights"] is None
    out = export_safetensors(model, tmp_path / "mine.safetensors")
    again = pixeljit.load_trained(out)
    assert again.weights == "" and again.ema_decay is None
    assert torch.equal(_outputs(again.net), _outputs(model.net))


def test_convert_of_a_bare_dict(bare, tmp_path, capsys):
    out = tmp_path / "mine.safetensors"
    err = cli_error(capsys, ["convert", str(bare), str(out), "--weights", "model_ema2",
                             "--in-context-start", str(START)])  # fmt: skip
    assert "holds one bare state dict" in err and "drop the weights choice" in err
    assert "--weights" in check_flags("convert", err)
    assert not out.exists()
    assert main(["convert", str(bare), str(out), "--in-context-start", str(START)]) == 0
    assert "model_ema" not in capsys.readouterr().out
    model = pixeljit.load_trained(out)
    assert model.weights == "" and model.ema_decay is None


def test_a_hub_export_of_a_bare_dict_is_not_called_the_authors_release(bare, authors, tmp_path):
    for source, released in ((bare, False), (authors, True)):
        out = tmp_path / f"hub-{released}"
        assert (
            main(["convert", str(source), "--hub", str(out), "--in-context-start", str(START)]) == 0
        )
        card = (out / "README.md").read_text()
        assert ("from the authors' released checkpoint" in card) is released
        assert ("from a bare state dict in a torch file" in card) is not released
        assert ("imagenet-1k" in card) is released  # the dataset tag


def test_emas_all_of_a_bare_dict_is_refused_by_name(bare, authors):
    import argparse

    from pixeljit.cli.evaluate import _emas

    args = argparse.Namespace(emas=["all"], weights=None)
    assert _emas(args, str(authors)) == ["model_ema1", "model_ema2"]
    with pytest.raises(ValueError, match="--emas all: .* holds one bare state dict.*drop --emas"):
        _emas(args, str(bare))
