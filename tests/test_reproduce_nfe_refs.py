"""`pixeljit reproduce nfe --ref STATS.npz`: every row scores precision / recall, so statistics
without the data set's features are refused before the checkpoint is loaded, with advice that
applies to this verb (it has no --metrics to leave precision / recall out)."""

from __future__ import annotations

import numpy as np
import pytest

from pixeljit.cli import main
from pixeljit.metrics import DatasetStats, save_dataset_stats

DIM = 8


class Loaded(Exception):
    """Raised in place of loading the checkpoint: the flags were all accepted."""


def _loaded(*args, **kwargs):
    raise Loaded


@pytest.fixture
def argv(tmp_path, monkeypatch):
    monkeypatch.setattr("pixeljit.checkpoints.load.load_trained", _loaded)
    run = tmp_path / "run"
    run.mkdir()  # exists: the flags' check looks no further before loading
    return ["reproduce", "nfe", "--checkpoint", str(run), "--quick", "--out",
            str(tmp_path / "study")]  # fmt: skip


def _stats(path, features: bool):
    save_dataset_stats(path, DatasetStats(
        np.zeros(DIM), np.eye(DIM), 100, "pool",
        features=np.zeros((16, DIM), np.float32) if features else None,
    ))  # fmt: skip
    return str(path)


def test_statistics_without_features_are_refused_before_loading(argv, tmp_path, capsys):
    ref = _stats(tmp_path / "musigma.npz", features=False)
    assert main([*argv, "--ref", ref]) == 2  # an error line, not Loaded
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"--ref {ref} holds only mu/sigma" in err and "precision / recall" in err
    # advice this verb can follow: no --metrics here
    assert "--metrics" not in err
    assert "pixeljit eval --make-ref DATASET" in err and "data set itself as --ref" in err
    assert not (tmp_path / "study").exists()


def test_statistics_with_features_pass_on_to_loading(argv, tmp_path):
    with pytest.raises(Loaded):
        main([*argv, "--ref", _stats(tmp_path / "full.npz", features=True)])
