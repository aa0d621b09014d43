"""A full disk (or a Ctrl-C) while a command writes its outputs: a folder's image set is written
whole or not at all (an earlier set there kept as it was), the reference-statistics cache that
cannot take its file costs no results, and the packer's messages show the sizes and a fix that
fits the caller. The disk is simulated: the write functions raise ENOSPC after N files."""

from __future__ import annotations

import collections
import errno
import importlib
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import pixeljit
from conftest import TINY_NET, dead_pid
from pixeljit.cli import main
from pixeljit.files.cache import CACHE_ENV

FAST = ["--steps", "1", "--method", "euler", "--device", "cpu", "--batch-size", "4"]
NUM = 12  # images per set: three batches of 4


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """`TINY_NET` with its zero-initialised layers randomised: the seed changes every image, so
    an earlier set and a new one differ in every file."""
    torch.manual_seed(0)
    net = pixeljit.JiT(TINY_NET)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    pixeljit.save_safetensors(net, path)
    return path


def disk_full_after(monkeypatch, files: int) -> None:
    """Every file the image writers (PNGs, labels.csv) write after the first `files` fails as a
    full disk does, naming the file."""
    images = importlib.import_module("pixeljit.files.images")
    written = []

    def failing(real):
        def write(path, *args, **kwargs):
            if len(written) >= files:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            written.append(path)
            return real(path, *args, **kwargs)

        return write

    for name in ("atomic_write_stream", "atomic_write_text"):
        monkeypatch.setattr(images, name, failing(getattr(images, name)))


def contents(folder: Path) -> dict[str, bytes]:
    """Every entry of `folder` (hidden ones too) with its bytes."""
    return {p.name: p.read_bytes() if p.is_file() else b"<dir>" for p in folder.iterdir()}


def sample_argv(model, out: Path, *extra: str) -> list[str]:
    return ["sample", str(model), "--num", str(NUM), "--out", f"{out}/", *FAST, *extra]


def eval_argv(model, out: Path, *extra: str) -> list[str]:
    return ["eval", "--checkpoint", str(model), "--metrics", "is", "--num", str(NUM),
            "--save-images", str(out), *FAST, *extra]  # fmt: skip


def error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1]  # after the progress bar


# ------------------------------------------------------------------ 1: a folder's image set


@pytest.mark.parametrize("verb, argv, flag", [("sample", sample_argv, "--out"),
                                              ("eval", eval_argv, "--save-images")])  # fmt: skip
@pytest.mark.parametrize("files", [5, NUM])  # a PNG of the second batch; the labels.csv
def test_a_full_disk_keeps_the_earlier_set_whole(
    model_file, tmp_path, capsys, monkeypatch, verb, argv, flag, files
):
    """`--overwrite` over an earlier set, the disk full after 5 PNGs (or at the labels.csv):
    the folder held new 000000-000004 beside the old rest and the old labels.csv, looking
    complete; the earlier set is now kept whole, and the one-line error says so and the fix."""
    out = tmp_path / "pngs"
    assert main(argv(model_file, out)) == 0
    earlier = contents(out)
    assert len([n for n in earlier if n.endswith(".png")]) == NUM and "labels.csv" in earlier
    guard = tmp_path / "guard"  # the new set differs from the earlier in every image
    assert main(argv(model_file, guard, "--seed", "1")) == 0
    assert all(contents(guard)[n] != earlier[n] for n in earlier if n.endswith(".png"))
    capsys.readouterr()
    disk_full_after(monkeypatch, files)
    assert main(argv(model_file, out, "--overwrite", "--seed", "1")) == 2
    assert contents(out) == earlier  # nothing new, nothing hidden left behind
    err = error_line(capsys)
    assert err.startswith(f"pixeljit {verb}: error: {flag} {out}/: writing the {NUM} images "
                          "failed (No space left on device); nothing was written and its "
                          "earlier set is kept as it was: free space on its disk, or pass "
                          f"another {flag}"), err  # fmt: skip


@pytest.mark.parametrize("verb, argv", [("sample", sample_argv), ("eval", eval_argv)])
def test_a_full_disk_leaves_no_partial_set(model_file, tmp_path, capsys, monkeypatch, verb,
                                           argv):  # fmt: skip
    """Into a new folder: 5 of 12 PNGs and no labels.csv were left, the error naming one PNG."""
    out = tmp_path / "new" / "pngs"
    disk_full_after(monkeypatch, 5)
    assert main(argv(model_file, out)) == 2
    assert not (tmp_path / "new").exists()  # the folders it made are gone with the staging
    err = error_line(capsys)
    assert f"{out}/: writing the {NUM} images failed (No space left on device); nothing was " \
           "written: free space on its disk" in err, err  # fmt: skip
    assert "earlier set" not in err


def test_a_full_disk_keeps_each_folder_of_one_command(model_file, tmp_path, capsys, monkeypatch):
    """Two --out folders: the second's failure leaves the first as it was too."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["sample", str(model_file), "--num", str(NUM), "--out", f"{one}/", *FAST]) == 0
    earlier = contents(one)
    disk_full_after(monkeypatch, NUM + 3)  # the first folder's whole set, then 3 of the second's
    argv = ["sample", str(model_file), "--num", str(NUM), "--out", f"{one}/", "--out", f"{two}/",
            *FAST, "--overwrite", "--seed", "1"]  # fmt: skip
    assert main(argv) == 2
    assert contents(one) == earlier and not two.exists()


def test_ctrl_c_keeps_the_earlier_set_whole(model_file, tmp_path, capsys, monkeypatch):
    import pixeljit.cli.sample as sample_cli

    out = tmp_path / "pngs"
    assert main(sample_argv(model_file, out)) == 0
    earlier = contents(out)
    real, calls = sample_cli.sample, []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sample_cli, "sample", stopping)
    assert main(sample_argv(model_file, out, "--overwrite", "--seed", "1")) == 130
    assert contents(out) == earlier
    err = error_line(capsys)
    assert (
        f"nothing was written to --out {out}/ (its earlier set of {NUM} numbered PNGs is kept "
        f"as it was): stopped before all {NUM} images were made (and their labels.csv)"
    ) in err


def test_ctrl_c_during_the_moves_is_held_until_the_set_is_in_place(model_file, tmp_path, capsys,
                                                                   monkeypatch):  # fmt: skip
    """A Ctrl-C while the staged files are renamed into the folder would leave a mix: it is
    held until the whole new set is there, then stops the command, saying so."""
    out, clean = tmp_path / "pngs", tmp_path / "clean"
    assert main(sample_argv(model_file, out)) == 0
    assert main(sample_argv(model_file, clean, "--seed", "1")) == 0
    capsys.readouterr()
    real, sent = os.replace, []

    def replace(src, dst):  # a rename from one folder into another: the set being moved in
        if Path(src).parent != Path(dst).parent and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert main(sample_argv(model_file, out, "--overwrite", "--seed", "1")) == 130
    assert sent and contents(out) == contents(clean)  # the whole new set, nothing else
    assert f"stopped once the new set was in place: {out}/ holds all of it" in error_line(capsys)


def test_a_failed_move_says_the_folder_holds_a_mix(model_file, tmp_path, capsys, monkeypatch):
    """Should a rename of the staged files fail (they take no space, so hardly ever), the error
    does not claim the earlier set is whole: it says the folder holds a mix, and the staging
    folder goes."""
    out = tmp_path / "pngs"
    assert main(sample_argv(model_file, out)) == 0
    capsys.readouterr()
    real, moved = os.replace, []

    def replace(src, dst):
        if Path(src).parent != Path(dst).parent:
            if len(moved) == 3:
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))
            moved.append(dst)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert main(sample_argv(model_file, out, "--overwrite", "--seed", "1")) == 2
    err = error_line(capsys)
    assert f"moving the new set into {out} failed after 3 of {NUM + 1} files" in err, err
    assert "holds a mix of the new and the earlier set" in err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_stale_staging_folder_is_swept_and_never_read(model_file, tmp_path, capsys):
    """`kill -9` while writing leaves `.new-set.staging-<pid>-<hex>` in the folder: readers and
    the foreign-file check skip it, the next set written there removes it (a live process's,
    or one holding a file a set never has, stays)."""
    from pixeljit.metrics.image_sources import count_path_images

    out = tmp_path / "pngs"
    assert main(sample_argv(model_file, out)) == 0
    stale = out / f".new-set.staging-{dead_pid()}-0123abcd"
    live = out / f".new-set.staging-{os.getpid()}-fedcba98"
    foreign = out / f".new-set.staging-{dead_pid()}-4567cdef"
    for folder in (stale, live, foreign):
        folder.mkdir()
        (folder / "000000.png").write_bytes((out / "000000.png").read_bytes())
    (stale / f".000001.png.tmp-{dead_pid()}-89abcdef").write_bytes(b"half")
    (foreign / "notes.txt").write_text("mine")
    assert count_path_images(out) == NUM  # `eval --images` reads only the set
    assert main(sample_argv(model_file, out, "--overwrite", "--seed", "1")) == 0
    assert not stale.exists() and live.is_dir() and (foreign / "notes.txt").is_file()


# ------------------------------------------------- 2: the reference-statistics cache is full


def test_a_full_statistics_cache_warns_and_scores_from_memory(tmp_path, monkeypatch, fmnist16):
    """40 s of reference statistics were lost to a bare 'No space left on device' on the cache
    file: now a warning names the cache file, PIXELJIT_CACHE and the fixes, and the statistics
    computed are used."""
    from extractors import GreyPoolExtractor
    from pixeljit.evaluation import dataset_stats_for

    stats = importlib.import_module("pixeljit.metrics.dataset_stats")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))

    def full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(stats, "atomic_write", full)
    data = str(fmnist16(16))
    with pytest.warns(UserWarning) as caught:
        ref = dataset_stats_for(data, GreyPoolExtractor(), 16, 1)
    text = str(caught[0].message)
    assert f"saving the reference statistics to the {CACHE_ENV} cache failed (No space left on " \
           f"device: {tmp_path / 'cache' / 'refstats'}" in text, text  # fmt: skip
    assert "scoring goes on with them in memory" in text and f"set {CACHE_ENV} to" in text
    assert "--make-ref" in text and "--ref STATS.npz" in text
    monkeypatch.undo()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    saved = dataset_stats_for(data, GreyPoolExtractor(), 16, 1)  # computed again, now cached
    assert ref.count == saved.count and np.array_equal(ref.mu, saved.mu)
    assert list((tmp_path / "cache" / "refstats").glob("*.npz"))
    # only the cache's write is forgiven: any other error (a bug) is not hidden
    monkeypatch.setattr(stats, "save_dataset_stats", lambda *a, **k: (_ for _ in ()).throw(
        ValueError("a bug")))  # fmt: skip
    images = lambda: torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)  # noqa: E731
    with pytest.raises(ValueError, match="a bug"):
        stats.cached_dataset_stats(tmp_path / "s.npz", images, GreyPoolExtractor())


# ---------------------------------------------------------- 3: packing onto a small disk


def _small_disk(monkeypatch, free: int) -> None:
    usage = collections.namedtuple("usage", "total used free")
    prepare_module = importlib.import_module("pixeljit.data.prepare")
    monkeypatch.setattr(prepare_module.shutil, "disk_usage", lambda path: usage(free, 0, free))


@pytest.fixture
def image_folder(red_pngs):
    return red_pngs


def test_the_space_check_shows_small_sizes_and_the_prepare_fix(image_folder, tmp_path,
                                                                monkeypatch):  # fmt: skip
    """'needs 0.0 GiB, but … has 0.0 GiB free': the sizes now show in a unit that shows them."""
    from pixeljit.data.prepare import prepare

    _small_disk(monkeypatch, 100)
    with pytest.raises(ValueError, match=r"packing 3 images of 3×4×4 needs 144 bytes, but .* "
                       r"has 100 bytes free: pack at a smaller size, fewer images \(--limit\), "
                       r"or into another folder$"):  # fmt: skip
        prepare(str(image_folder), 4, tmp_path / "packed")
    _small_disk(monkeypatch, 3 * 2**20 // 2)
    with pytest.raises(ValueError, match=r"has 1\.5 MiB free"):
        prepare(str(image_folder), 512, tmp_path / "packed")  # 3 × 3 × 512² = 2.25 MiB


def test_the_space_check_of_the_data_cache_names_pixeljit_cache(image_folder, monkeypatch):
    """Under `train` / `eval --ref` (packed into the cache at the model's size) --limit and
    'another folder' are not the caller's options: PIXELJIT_CACHE is."""
    from pixeljit.data.open import open_dataset

    _small_disk(monkeypatch, 100)
    with pytest.raises(ValueError, match=r"needs 144 bytes, .* has 100 bytes free: set "
                       rf"{CACHE_ENV} to a folder with room") as err:  # fmt: skip
        open_dataset(str(image_folder), 4, 3)
    assert "--limit" not in str(err.value)


@pytest.mark.parametrize("cache", [False, True])
def test_a_full_disk_while_packing_says_the_fix(image_folder, tmp_path, monkeypatch, cache):
    """'nothing was written: [Errno 28] …' named the hidden staging file and no fix."""
    from pixeljit.data.open import open_dataset
    from pixeljit.data.prepare import prepare
    from pixeljit.data.shards import ShardWriter

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/.out.partial-1-ab/shard.bin")

    monkeypatch.setattr(ShardWriter, "add", full)
    fix = f"set {CACHE_ENV} to a folder" if cache else "pack at a smaller size, fewer images"
    with pytest.raises(ValueError, match=r"nothing was written \(No space left on device\): "
                       rf"free space on its disk, or {fix}") as err:  # fmt: skip
        if cache:
            open_dataset(str(image_folder), 4, 3)
        else:
            prepare(str(image_folder), 4, tmp_path / "packed")
    assert ".partial-" not in str(err.value)
