"""The sampler's GPU paths, checked on the CPU: noise drawn per sample on the sampling device,
`compile_mode` (one compiled network, one graph per batch shape, equal to eager), the precision
defaults of `pixeljit sample` / `pixeljit eval`, and TF32 only inside its block."""

from __future__ import annotations

import pytest
import torch

import pixeljit
from pixeljit.cli import build_parser
from pixeljit.diffusion import execution
from pixeljit.diffusion.execution import default_amp_dtype, tf32_matmuls
from pixeljit.diffusion.noise import noise_from_seeds, sample_seeds
from pixeljit.diffusion.sampler import sample
from pixeljit.model import JiTConfig

TINY = JiTConfig(image_size=16, patch_size=4, hidden_size=32, depth=2, num_heads=2,
                 num_classes=4, bottleneck_dim=8, in_context_len=2, in_context_start=1)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    net = pixeljit.JiT(TINY)
    with torch.no_grad():  # randomise the zero-initialised layers: outputs depend on the input
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def test_seeded_noise_is_one_generator_per_sample_on_the_device():
    """On the CPU the rows are exactly the per-sample CPU draws (so images of a seed are the
    same as before the noise moved to the device), and any batch split gives the same rows."""
    seeds = sample_seeds(7, 5)
    shape = (3, 4, 4)
    rows = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    whole = noise_from_seeds(seeds, shape, "cpu")
    assert whole.dtype == torch.float32 and torch.equal(whole, torch.stack(rows))
    parts = torch.cat([noise_from_seeds(seeds[:2], shape), noise_from_seeds(seeds[2:], shape)])
    assert torch.equal(parts, whole)
    assert noise_from_seeds(seeds, shape, dtype=torch.float64).dtype == torch.float64


def recording_backend(compiled: list[tuple[int, ...]]):
    """A dynamo backend that runs the captured graph eagerly and records, per graph built, the
    shapes of its tensor inputs (so a test sees how often and for which batch it compiled)."""

    def backend(gm, example_inputs):
        compiled.append(
            tuple(tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor))
        )
        return gm.forward

    return backend


def test_compiled_sampling_equals_eager_and_compiles_once_per_batch_shape(tiny_net, monkeypatch):
    torch._dynamo.reset()
    graphs: list = []
    monkeypatch.setattr(execution, "_COMPILE_BACKEND", recording_backend(graphs))
    labels = [0, 1, 2]
    kwargs = dict(steps=6, method="heun", cfg=2.0, interval=(0.3, 1.0), seed=3)
    eager = sample(tiny_net, labels, **kwargs)
    keys = set(tiny_net.state_dict())
    compiled = sample(tiny_net, labels, compile_mode="reduce-overhead", **kwargs)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
    assert graphs, "the compiled path did not compile anything"
    batches = sorted(shapes[0][0] for shapes in graphs)
    assert batches == [3, 6]  # one graph for N outside the interval, one for 2N inside: no more
    built = len(graphs)
    again = sample(tiny_net, labels, compile_mode="reduce-overhead", **{**kwargs, "seed": 4})
    assert len(graphs) == built  # the same net, mode and shapes: nothing compiled again
    assert not torch.allclose(again, compiled)
    assert set(tiny_net.state_dict()) == keys  # the cached compiled net is not a submodule
    torch._dynamo.reset()


def test_compile_mode_is_checked_before_sampling(tiny_net):
    with pytest.raises(ValueError, match="compile_mode must be None"):
        sample(tiny_net, [0], steps=1, compile_mode="fast")


def test_precision_defaults():
    assert default_amp_dtype("cuda") == torch.bfloat16
    assert default_amp_dtype(torch.device("cuda", 1)) == torch.bfloat16
    assert default_amp_dtype("cpu") is None
    parser = build_parser()
    for verb in (["sample", "x.safetensors"], ["eval", "--checkpoint", "x.safetensors"]):
        assert parser.parse_args(verb).amp == "auto"
        assert parser.parse_args([*verb, "--amp", "none"]).amp == "none"


def test_tf32_only_inside_the_block_and_only_on_cuda():
    before = torch.get_float32_matmul_precision()
    with tf32_matmuls("cpu"):
        assert torch.get_float32_matmul_precision() == before
    with tf32_matmuls("cuda"):  # a flag: no CUDA device is needed to set it
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
