"""`pixeljit sample --fast`: DPM-Solver++(3M), 10 steps, uniform grid (docs/sampling.md)."""

from __future__ import annotations

import numpy as np
import torch

import pixeljit
from conftest import TINY_MODEL as TINY
from pixeljit.cli import main
from pixeljit.diffusion.sampler import FAST_SAMPLER, sample
from pixeljit.files.images import to_uint8


def test_sample_fast_is_dpmpp_3m_with_ten_steps(tmp_path, capsys):
    torch.manual_seed(0)
    net = pixeljit.JiT(TINY)
    with torch.no_grad():  # adaLN-Zero's output is 0 at initialisation: every solver gives grey
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "tiny.safetensors"
    pixeljit.save_safetensors(net, path)
    out = tmp_path / "s.npz"
    argv = ["sample", str(path), "--labels", "1", "2", "--num", "2", "--cfg", "2", "--seed", "3",
            "--device", "cpu", "--fast"]  # fmt: skip
    assert main([*argv, "--out", str(out)]) == 0
    assert "dpm++3m, 10 steps" in capsys.readouterr().out
    assert FAST_SAMPLER == {"method": "dpm++3m", "steps": 10, "grid": "uniform"}
    expected = sample(pixeljit.load_safetensors(path), [1, 2], cfg=2.0, seed=3, **FAST_SAMPLER)
    got = np.load(out)["arr_0"].astype(int)
    assert np.abs(got - to_uint8(expected).permute(0, 2, 3, 1).numpy().astype(int)).max() <= 1
    # farther than that tolerance from other solvers: Euler at 10 steps, and the default Heun-50
    for other in ({"method": "euler", "steps": 10}, {}):
        theirs = sample(pixeljit.load_safetensors(path), [1, 2], cfg=2.0, seed=3, **other)
        assert np.abs(got - to_uint8(theirs).permute(0, 2, 3, 1).numpy().astype(int)).max() > 4
    # a flag that --fast sets, given with another value, is refused; the same value is fine
    assert main([*argv, "--steps", "20", "--out", str(tmp_path / "b.npz")]) == 2
    assert "--fast sets --steps 10, but --steps 20 was given" in capsys.readouterr().err
    assert main([*argv, "--method", "dpm++3m", "--out", str(tmp_path / "c.npz")]) == 0
