"""A grid's cells are folders named by their axis values: two values that print alike would be
one folder, and the second cell would report the first's results (`reproduce noise --mus -0.8
-0.8000001` did, exit 0). Such values are refused before anything is written, and a grid whose
cells share a name is refused before any cell trains."""

from __future__ import annotations

import pytest

from extractors import PoolExtractor, Recorder
from pixeljit.experiments import grid, grid_data, noise

TINY = dict(
    width=32, depth=1, heads=2, steps=2, batch=8, num_samples=8, sampler_steps=2,
    weights="model", real_count=16, data_limit=32, device="cpu",
)  # fmt: skip


@pytest.mark.parametrize("mus", [(-0.8, -0.8000001), (0.1, 0.10000004, -1.0), (1e-7, 1.0000001e-7)])
def test_mus_that_name_one_cell_are_refused(mus):
    with pytest.raises(ValueError, match=r"μ values .* are one value to the 6 significant digits"):
        noise.NoiseConfig(p_means=mus, **TINY)


def test_mus_apart_within_six_digits_name_distinct_cells(tmp_path):
    config = noise.NoiseConfig(p_means=(-0.8, -0.80001), predictions=("x",), **TINY)
    names = [cell.name for cell in noise.build_cells(config, tmp_path, {64: "data"})]
    assert names == ["mu-0.8-xpred-seed0", "mu-0.80001-xpred-seed0"]


def test_a_grid_whose_cells_share_a_folder_is_refused_before_training(tmp_path):
    config = noise.NoiseConfig(size=16, patch=4, p_means=(-0.8,), predictions=("x",), **TINY)
    twice = grid.GridExperiment("noise", lambda c, o, s: noise.build_cells(c, o, s) * 2)
    with pytest.raises(ValueError, match="share the folder name mu-0.8-xpred-seed0"):
        twice.run(config, tmp_path, extractor=PoolExtractor(), train_fn=Recorder(allowed=False))
    assert not (tmp_path / grid.CELLS_FOLDER).exists()


def test_a_grid_says_what_it_packs_and_measures_before_the_cells(tmp_path):
    """Packing the data and measuring the real images take a while: each is said before it
    starts (the grid was silent there), and a resumed grid, having both, says neither again."""
    config = noise.NoiseConfig(size=16, patch=4, p_means=(-0.8,), predictions=("x",), **TINY)
    lines: list[str] = []
    noise.run_noise(config, tmp_path, extractor=PoolExtractor(), progress=lines.append)
    packing = f"data: packing the first 32 images of {config.data} at 16 px into"
    assert lines[0].startswith(packing) and str(tmp_path / grid_data.DATA_FOLDER) in lines[0]
    assert lines[1] == "real reference: measuring the real images with pool4"
    assert lines[2].startswith("real reference: 16 images")
    again: list[str] = []
    noise.run_noise(config, tmp_path, extractor=PoolExtractor(), progress=again.append,
                    train_fn=Recorder(allowed=False))  # fmt: skip
    assert not any(line.startswith(("data:", "real reference: measuring")) for line in again)
