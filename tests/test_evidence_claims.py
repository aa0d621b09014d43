"""The paper's claims that the sweeps (`reproduce noise / resolution / bottleneck`) make, checked
at CPU scale with the measured configs (slow: minutes each; run with `pytest -m slow`)."""

from __future__ import annotations

import pytest
import torch

from extractors import PoolExtractor
from pixeljit.experiments import bottleneck, noise, resolution

# The claims at CPU scale, measured with the HF energy ratio (FD-EffNetLite0 of 64 samples did
# not rank them at 200 steps: see docs/evidence.md). These configs are the measured ones (seed 0,
# 200 steps, 64 samples, Heun-10, 256 real images); the HF ratio does not depend on the
# extractor, so the pooling one stands in for EffNet. CLAIM_RATIO is table2's (2.0).
CLAIM_RATIO = 2.0
# the grid defaults of those runs: batch 32, lr 1e-3, EMA 0.99
MEASURED = dict(
    steps=200, batch=32, lr=1e-3, ema_decays=(0.99,), num_samples=64, sampler_steps=10,
    real_count=256, device="cpu",
)  # fmt: skip


@pytest.mark.slow
def test_noise_x_prediction_has_no_residual_noise_at_any_mu(tmp_path):
    """Measured: x 0.82–0.86, v 2.37–2.71, ε 43.9–44.1 at μ ∈ {0, −0.4, −0.8, −1.2}; the
    smallest v / x is 2.76."""
    torch.set_num_threads(1)
    report = noise.run_noise(noise.NoiseConfig(**MEASURED), tmp_path, extractor=PoolExtractor())
    hf = {(c["labels"]["p_mean"], c["labels"]["prediction"]): c["hf_ratio"]
          for c in report["cells"]}  # fmt: skip
    for mu in noise.PAPER_MUS:
        assert hf[(mu, "x")] < CLAIM_RATIO  # near the data's own high-frequency energy
        assert hf[(mu, "v")] > CLAIM_RATIO * hf[(mu, "x")]
        assert hf[(mu, "eps")] > CLAIM_RATIO * hf[(mu, "x")]


GROWTH = 1.5  # measured v-pred HF ratio per size step: ×2.4 (16 → 32 px) and ×5.2 (32 → 64 px)


@pytest.mark.slow
def test_resolution_v_prediction_noise_grows_with_the_patch(tmp_path):
    """Measured (s = size/256): v 0.20, 0.49, 2.55 and x 0.02, 0.10, 0.84 at 16/2, 32/4, 64/8."""
    torch.set_num_threads(1)
    config = resolution.ResolutionConfig(noise=("scaled",), **MEASURED)
    report = resolution.run_resolution(config, tmp_path, extractor=PoolExtractor())
    hf = {(c["labels"]["image_size"], c["labels"]["prediction"]): c["hf_ratio"]
          for c in report["cells"]}  # fmt: skip
    sizes = config.sizes
    for small, big in zip(sizes, sizes[1:], strict=False):
        assert hf[(big, "v")] > GROWTH * hf[(small, "v")]
    assert hf[(sizes[-1], "v")] > CLAIM_RATIO * hf[(sizes[-1], "x")]
    assert all(hf[(size, "x")] < 1.0 for size in sizes)  # never noisier than the data


@pytest.mark.slow
def test_bottleneck_has_no_catastrophic_failure_at_16(tmp_path):
    """Fig. 4's 'no catastrophic failure even at 16-d': a 16-d embedding of the 192-d patches
    gives no residual noise (measured HF ratio 0.71 at these 200 steps, 0.95 at the default
    1000; none 0.84 and 1.09), where ε- and v-prediction's failures are 44× and 2.4–2.7×."""
    torch.set_num_threads(1)
    config = bottleneck.BottleneckConfig(dims=(16,), **MEASURED)
    report = bottleneck.run_bottleneck(config, tmp_path, extractor=PoolExtractor())
    (cell,) = report["cells"]
    assert cell["labels"]["bottleneck_dim"] == 16
    assert cell["hf_ratio"] < 1.0  # no noisier than the data
