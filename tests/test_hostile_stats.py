"""Hostile and malformed statistics and image files: headers are bounded and checked before any
array is loaded; keys, dtypes, shapes and values are checked; one-line errors name the file."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pixeljit.metrics import iter_folder_images, iter_npz_images, load_dataset_stats, npz_archive


def _npy(shape, dtype="<f8", data: bytes = b"") -> bytes:
    """An .npy member whose header declares `shape` / `dtype` whatever data follows."""
    buf = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _npz(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, raw in members.items():
            zf.writestr(name + ".npy", raw)
    return path


def _array(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


EXTRACTOR = SimpleNamespace(name="toy", stats_name="toy", dim=4)


def _good(d=4):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, d))
    return x.mean(0), np.cov(x, rowvar=False)


def test_declared_sizes_are_refused_before_loading(tmp_path, monkeypatch):
    # 200-byte files claiming a (10**5, 10**5) float64 sigma (80 GB) or a 10**9-long mu
    huge_sigma = _npz(tmp_path / "a.npz", {"mu": _array(np.zeros(10**5)),
                                            "sigma": _npy((10**5, 10**5))})  # fmt: skip
    long_mu = _npz(tmp_path / "b.npz", {"mu": _npy((10**9,)), "sigma": _npy((2, 2))})
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load ran"))
    for path in (huge_sigma, long_mu):
        with pytest.raises(ValueError, match=r"declares shape .* truncated or corrupt") as err:
            load_dataset_stats(path)
        assert str(path) in str(err.value)


SMALL_FREE_BYTES = 2**20  # members inflating past this are held to the ratio (64 MiB in use)


def test_zip_bomb_and_pickles_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(npz_archive, "MAX_FREE_INFLATED_BYTES", SMALL_FREE_BYTES)
    mu, _ = _good(1200)
    bomb = _npz(tmp_path / "bomb.npz",
                {"mu": _array(mu), "sigma": _array(np.zeros((1200, 1200)))},
                zipfile.ZIP_DEFLATED)  # fmt: skip
    with pytest.raises(ValueError, match="refusing a zip bomb"):
        load_dataset_stats(bomb)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, mu=np.array([object()] * 4, dtype=object), sigma=np.eye(4))
    with pytest.raises(ValueError, match="holds Python objects"):
        load_dataset_stats(pickled)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"m": np.zeros(4), "s": np.eye(4)}, "lacks 'mu'/'sigma'"),
        ({"mu": np.zeros(4, dtype=np.int64), "sigma": np.eye(4)}, "mu must be floating point"),
        ({"mu": np.zeros((4, 1)), "sigma": np.eye(4)}, r"mu must have shape \(D,\)"),
        ({"mu": np.zeros(4), "sigma": np.eye(3)}, r"sigma must have shape \(4, 4\)"),
        ({"mu": np.zeros(5), "sigma": np.eye(5)}, "5-d statistics but extractor 'toy' gives 4-d"),
        ({"mu": np.full(4, np.nan), "sigma": np.eye(4)}, "mu holds NaN or Inf"),
        ({"mu": np.zeros(4), "sigma": np.diag([1.0, np.inf, 1, 1])}, "sigma holds NaN or Inf"),
        ({"mu": np.zeros(4), "sigma": np.triu(np.ones((4, 4)))}, "sigma is not symmetric"),
        ({"mu": np.zeros(4), "sigma": np.eye(4), "count": np.zeros(2)}, "count must be an int"),
        ({"mu": np.zeros(4), "sigma": np.eye(4), "features": np.zeros((3, 5))},
         r"features must have shape \(M, 4\)"),
        ({"mu": np.zeros(4), "sigma": np.eye(4), "extractor": np.array(["x" * 5000])},
         "extractor must be a short text scalar"),
    ],
)  # fmt: skip
def test_malformed_statistics_are_named(tmp_path, arrays, message):
    path = tmp_path / "stats.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message) as err:
        load_dataset_stats(path, EXTRACTOR)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_good_statistics_still_load(tmp_path):
    mu, sigma = _good()
    path = tmp_path / "ok.npz"
    np.savez(path, mu=mu, sigma=sigma, count=np.int64(50), extractor=np.array("toy"))
    ref = load_dataset_stats(path, EXTRACTOR)
    assert ref.count == 50 and np.allclose(ref.sigma, sigma)


def test_not_a_zip_is_one_line(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="junk.npz is not a readable .npz file"):
        load_dataset_stats(junk)


@pytest.mark.parametrize(
    "member, message",
    [
        (_array(np.zeros((2, 8, 8, 3), dtype=np.float32)), "NHWC uint8"),
        (_array(np.zeros((2, 8, 8, 4), dtype=np.uint8)), "NHWC uint8 with 1 or 3 channels"),
        (_array(np.zeros((2, 0, 8, 3), dtype=np.uint8)), "NHWC uint8"),
        (_npy((10**6, 256, 256, 3), "|u1"), r"declares shape .* truncated or corrupt"),
    ],
)
def test_image_npz_headers_are_checked_first(tmp_path, member, message):
    path = _npz(tmp_path / "images.npz", {"arr_0": member})
    with pytest.raises(ValueError, match=message):
        next(iter_npz_images(path))


def test_image_npz_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(npz_archive, "MAX_FREE_INFLATED_BYTES", SMALL_FREE_BYTES)
    path = _npz(tmp_path / "bomb.npz", {"arr_0": _array(np.zeros((400, 64, 64, 3), np.uint8))},
                zipfile.ZIP_DEFLATED)  # fmt: skip
    with pytest.raises(ValueError, match="zip bomb"):
        next(iter_npz_images(path))


def test_unreadable_image_in_a_folder_is_named(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(ValueError, match=r"b.png is not a readable image"):
        list(iter_folder_images(tmp_path))


def test_a_cached_reference_without_its_image_size_is_measured_again(tmp_path, fmnist16):
    """A cache entry written before statistics recorded their image size was reused, and with
    no size to compare the size check passed whatever the model's images were."""
    import dataclasses

    from extractors import GreyPoolExtractor as PoolExtractor
    from pixeljit.evaluation import dataset_stats_for
    from pixeljit.files.cache import cache_root
    from pixeljit.metrics import save_dataset_stats

    data, extractor = str(fmnist16(16)), PoolExtractor()
    fresh = dataset_stats_for(data, extractor, 16, 1)
    assert fresh.image_shape == (1, 16, 16) and extractor.calls > 0
    cached = list((cache_root() / "refstats").glob(f"{Path(data).name}-*pool4*.npz"))
    assert len(cached) == 1
    old = dataclasses.replace(fresh, image_shape=None, mu=fresh.mu + 1)  # an older entry
    save_dataset_stats(cached[0], old, overwrite=True)
    calls = extractor.calls
    again = dataset_stats_for(data, extractor, 16, 1)
    assert extractor.calls > calls and again.image_shape == (1, 16, 16)
    assert np.array_equal(again.mu, fresh.mu)
    assert load_dataset_stats(cached[0], extractor).image_shape == (1, 16, 16)  # rewritten
    calls = extractor.calls
    dataset_stats_for(data, extractor, 16, 1)
    assert extractor.calls == calls  # a current entry is reused


def test_computing_a_reference_shows_progress_and_a_cached_one_nothing(
    tmp_path, fmnist16, capfd, monkeypatch
):
    """`reproduce nfe` / `eval` sat silent for minutes while a data set's reference statistics
    were measured: with progress=True a bar counts the images, and only when they are computed."""
    from extractors import GreyPoolExtractor as PoolExtractor
    from pixeljit.evaluation import dataset_stats_for

    monkeypatch.setenv("PIXELJIT_CACHE", str(tmp_path / "cache"))  # nothing cached yet

    data, extractor = str(fmnist16(16)), PoolExtractor()
    dataset_stats_for(data, extractor, 16, 1, progress=True)
    err = capfd.readouterr().err
    assert f"reference statistics of {data}" in err and "img" in err, err
    dataset_stats_for(data, extractor, 16, 1, progress=True)  # from the cache
    assert "reference statistics" not in capfd.readouterr().err
