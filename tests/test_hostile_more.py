"""Red-team findings about inputs and messages: each test reproduces one hostile input and checks
the one-line error (or the refusal) that replaces the old traceback, hang or silent result."""

from __future__ import annotations

import os
import stat

import pytest
import torch

import pixeljit
from pixeljit.cli import main
from pixeljit.data.folders import scan_image_folder
from pixeljit.diffusion.sampler import SamplerConfig
from pixeljit.files.images import make_grid
from pixeljit.model import JiTConfig
from pixeljit.training.config import TrainConfig
from pixeljit.training.config_io import apply_overrides, load_yaml, parse_set

TINY = JiTConfig(image_size=8, patch_size=4, hidden_size=16, depth=1, num_heads=2,
                 num_classes=2, bottleneck_dim=4, in_context_len=0)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    pixeljit.save_safetensors(pixeljit.JiT(TINY), path)
    return path


def _image(path):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 128).save(path)


def _cli_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "Warning" not in err, err
    return err.splitlines()[-1]  # after any progress bar


# ------------------------------------------------------------------------------ A7: split


@pytest.mark.parametrize("split", ["..", "../..", "a/../..", "/tmp", "."])
def test_a_split_cannot_escape_the_source_folder(tmp_path, split):
    _image(tmp_path / "outside" / "x.png")
    _image(tmp_path / "src" / "a" / "y.png")
    (tmp_path / "src" / "a" / "..").resolve()
    with pytest.raises(ValueError, match="not a folder name"):
        scan_image_folder(tmp_path / "src", split=split)


# ------------------------------------------------------------------- B8: safetensors writes


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_safetensors_write_failure_is_an_oserror_naming_the_file():
    target = "/proc/pixeljit-test.safetensors"  # the folder exists; no file can be created there
    with pytest.raises(OSError) as caught:
        pixeljit.save_safetensors(pixeljit.JiT(TINY), target)
    assert caught.value.filename == target  # the path asked for, not the hidden temporary file


def test_safetensors_overwrite_keeps_the_umask_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        path = tmp_path / "w.safetensors"
        net = pixeljit.JiT(TINY)
        pixeljit.save_safetensors(net, path)
        with pytest.raises(FileExistsError, match="pass overwrite=True"):
            pixeljit.save_safetensors(net, path)
        pixeljit.save_safetensors(net, path, overwrite=True)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# --------------------------------------------------------------------- B10 / B11 / C21 / D27 YAML

# "billion laughs": 400 bytes of YAML that alias their way to 9**9 strings; their repr in an
# error message took gigabytes (a MemoryError traceback under a 3 GB ulimit, else the OOM killer)
LAUGHS = (
    "["
    + ", ".join(
        ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        + [f"&a{k} [" + ",".join([f"*a{k - 1}"] * 9) + "]" for k in range(1, 9)]
    )
    + "]"
)


def test_a_set_value_with_aliases_is_refused_before_it_expands():
    from pixeljit.training.config_io import parse_set

    with pytest.raises(ValueError, match=r"--set 'optim.lr=.*' is not valid YAML: alias \*a0"):
        parse_set([f"optim.lr={LAUGHS}"])


def test_error_messages_show_a_bounded_repr_of_shared_structures():
    """A saved config (a checkpoint's, unpickled with its memo) can share one list many times:
    the error names the field and shows a few entries, whatever the structure expands to."""
    from pixeljit.training.config import TrainConfig
    from pixeljit.training.config_io import apply_overrides

    shared: list = ["lol"] * 9
    for _ in range(8):
        shared = [shared] * 9  # 9**9 strings if expanded
    with pytest.raises(ValueError, match="optim.lr must be a number, got") as caught:
        apply_overrides(TrainConfig(), {"optim": {"lr": shared}})
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    "text, match",
    [
        ("optim: {lr: [1\n", "not valid YAML"),
        ("optim: !!python/object:os.system {}\n", "not valid YAML"),
        ("optim: {lr: 1.0}\noptim: {lr: 2.0}\n", "appears twice"),
        ("optim: {lr: 1.0, lr: 2.0}\n", "appears twice"),
        (f"optim: {{lr: {LAUGHS}}}\n", "alias \\*a0 is not allowed"),
        ("optim: {lr: " + "[" * 50_000 + "]" * 50_000 + "}\n", "nested too deeply"),
        ("# " + "x" * (1 << 20) + "\n", "over 1,048,576 bytes"),
    ],
)
def test_bad_yaml_config_is_one_line_naming_the_file(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as caught:
        load_yaml(path)
    assert str(path) in str(caught.value)


def test_config_folder_and_binary_file_are_described(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        load_yaml(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ValueError, match="not UTF-8") as caught:
        load_yaml(binary)
    assert str(binary) in str(caught.value)


def test_set_with_malformed_yaml_value_names_the_set():
    with pytest.raises(ValueError, match="--set 'optim.lr=\\[1'"):
        parse_set(["optim.lr=[1"])


def test_non_string_keys_and_scalar_sections_are_refused():
    with pytest.raises(ValueError, match="section name"):
        apply_overrides(TrainConfig(), {1: 2})
    with pytest.raises(ValueError, match="must be a name"):
        apply_overrides(TrainConfig(), {"optim": {1: 2}})
    with pytest.raises(ValueError, match="section 'optim' must be a mapping"):
        apply_overrides(TrainConfig(), {"optim": 3})


# ------------------------------------------------------------------------ B16: upper bounds


@pytest.mark.parametrize(
    "key, value",
    [
        ("model.hidden_size", 10**8),
        ("model.depth", 100_000),
        ("model.num_classes", 10**11),
        ("data.num_classes", 10**11),
        ("sample.steps", 10**11),
        ("sample.per_class", 10**9),
    ],
)
def test_config_sizes_have_upper_bounds_naming_the_field(key, value):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        apply_overrides(TrainConfig(), {key: value})


def test_sampler_bounds():
    with pytest.raises(ValueError, match="steps must lie in"):
        SamplerConfig(steps=10**12)
    with pytest.raises(ValueError, match="shift must lie in"):
        SamplerConfig(grid="shifted", shift=1e-300)
    with pytest.raises(ValueError, match="cfg must lie in"):
        SamplerConfig(cfg=1e308)


def test_sample_cli_bounds_name_the_flag_before_loading(tmp_path, capsys):
    missing = str(tmp_path / "missing.safetensors")
    for flag, value in [("--num", "100000000000"), ("--steps", "1000000000000"),
                        ("--ncols", "1000000000"), ("--device", "meta")]:  # fmt: skip
        err = _cli_error(["sample", missing, flag, value], capsys)
        assert flag in err and "missing" not in err


def test_sample_grid_too_large_is_refused_before_sampling(tiny_file, tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("sampled before the grid size was checked")

    monkeypatch.setattr("pixeljit.cli.sample.sample", never)
    out = tmp_path / "g.png"
    argv = ["sample", str(tiny_file), "--num", "20000", "--scale", "32", "--ncols", "1000000",
            "--steps", "1", "--device", "cpu", "--out", str(out)]  # fmt: skip
    err = _cli_error(argv, capsys)
    assert "--ncols" in err and "pixels" in err
    assert not out.exists()
    with pytest.raises(ValueError, match="pixels"):
        make_grid(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), ncols=10**9)


def test_sample_grid_of_millions_is_refused_before_its_labels(tiny_file, tmp_path, capsys,
                                                               monkeypatch):  # fmt: skip
    """--num 10000000 --out x.png laid out ten million labels (~16 s) before the grid's size,
    which its cells alone exceed, was checked."""

    def never(*args, **kwargs):
        raise AssertionError("labels laid out before the grid size was checked")

    monkeypatch.setattr("pixeljit.cli.sample.choose_labels", never)
    out = tmp_path / "g.png"
    argv = ["sample", str(tiny_file), "--num", "10000000", "--scale", "4", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    err = _cli_error(argv, capsys)
    assert "the grid of 10000000 images at --scale 4 would have" in err
    assert not out.exists()


# -------------------------------------------------------------------- C19: non-finite samples


def test_non_finite_samples_are_refused():
    from pixeljit.diffusion.sampler import check_finite

    images = torch.zeros(3, 1, 4, 4)
    images[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 of the 3 images from sample 5 on are not finite"):
        check_finite(images, 5)


def test_sampling_an_exploded_checkpoint_writes_nothing(tiny_file, tmp_path, capsys):
    net = pixeljit.load_safetensors(tiny_file)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1e30)  # a finite but exploded checkpoint
    exploded = tmp_path / "exploded.safetensors"
    pixeljit.save_safetensors(net, exploded)
    out = tmp_path / "s.npz"
    argv = ["sample", str(exploded), "--num", "2", "--steps", "1", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    assert "not finite" in _cli_error(argv, capsys)
    assert not out.exists()


# ------------------------------------------------------------------ C21 / D26: eval flag rules


def test_eval_flags_without_effect_or_too_few_images(tmp_path, capsys):
    missing = str(tmp_path / "none.pt")
    err = _cli_error(["eval", "--checkpoint", missing, "--ref", "x.npz", "--emas", "all"], capsys)
    assert "--emas" in err and "--sweep-cfg" in err
    argv = ["eval", "--checkpoint", missing, "--ref", "x.npz", "--metrics", "is", "--num", "4"]
    err = _cli_error(argv, capsys)
    assert "--num" in err and "10" in err


# ------------------------------------------------------------------- C20: covariance not PSD


def test_statistics_with_a_non_psd_covariance_are_refused(tmp_path):
    import numpy as np

    from pixeljit.metrics import load_dataset_stats

    path = tmp_path / "neg.npz"
    np.savez(path, mu=np.zeros(4), sigma=-np.eye(4))
    with pytest.raises(ValueError, match="negative eigenvalue"):
        load_dataset_stats(path)


# ------------------------------------------------------------- B15: eval --images pixel cap


def _declared_png(path, width: int, height: int) -> None:
    """A tiny PNG whose header declares width × height (IHDR patched, CRC recomputed)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    start = 8 + 8  # signature, then the IHDR length and type
    data[start : start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[start - 4 : start + 13]))
    data[start + 13 : start + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


def test_eval_images_refuses_a_decompression_bomb(tmp_path):
    import warnings

    from PIL import Image

    from pixeljit.metrics import iter_folder_images

    folder = tmp_path / "imgs"
    folder.mkdir()
    _declared_png(folder / "bomb.png", 13300, 13300)  # 177 MP: PIL alone only warns
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # no multi-line warning
        with pytest.raises(ValueError, match="over the limit") as caught:
            list(iter_folder_images(folder))
    assert "bomb.png" in str(caught.value)


# ------------------------------------------------------------- D28: argparse errors in one line


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["sample", "x.pt", "--steps", "many"])
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert err.startswith("pixeljit sample: error: argument --steps") and "--help" in err


# -------------------------------------------------------------- D25: outputs probed by writing


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_unwritable_output_folder_is_found_by_a_probe_not_the_mode_bits(capsys):
    from pixeljit.cli.checks import check_output

    with pytest.raises(ValueError, match="cannot write in /proc"):
        check_output("--out", "/proc/pixeljit-x.png")  # root passes os.access here


# ---------------------------------------------------------- D28 / D23 / D27 / D24: messages


def test_dangling_link_is_skipped_by_skip_bad(tmp_path):
    from pixeljit.data.prepare import prepare

    for i in range(2):
        _image(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "dead.png").symlink_to(tmp_path / "nowhere.png")
    out = tmp_path / "pk"
    prepare(str(tmp_path / "imgs"), 8, out, channels=1, skip_bad=True)
    manifest = (out / "manifest.json").read_text()
    assert "dead.png" in manifest


def test_font_folder_is_described_as_a_folder(tmp_path):
    from pixeljit.data.emoji import find_emoji_font

    with pytest.raises(ValueError, match="is a folder"):
        find_emoji_font(tmp_path)


def test_kid_without_features_names_the_cli_step():
    import numpy as np

    from pixeljit.metrics.dataset_stats import DatasetStats
    from pixeljit.metrics.score import _dataset_features

    with pytest.raises(ValueError, match="pixeljit eval --make-ref"):
        _dataset_features(DatasetStats(np.zeros(2), np.eye(2)), "KID")


# ------------------------------------------------------------- B16 / C21: more flags checked


def test_toy_bounds_name_the_flag(tmp_path, capsys):
    out = str(tmp_path / "toy")
    assert "--dims" in _cli_error(["reproduce", "toy", "--dims", "100000000", "--out", out], capsys)
    err = _cli_error(["reproduce", "toy", "--threads", "100000", "--out", out], capsys)
    assert "--threads" in err
    assert not (tmp_path / "toy").exists()


def test_flags_without_effect_are_refused(tiny_file, tmp_path, capsys):
    argv = ["sample", str(tiny_file), "--in-context-start", "5", "--device", "cpu",
            "--out", str(tmp_path / "s.png")]  # fmt: skip
    assert "--in-context-start has no effect" in _cli_error(argv, capsys)
    base = ["eval", "--checkpoint", str(tiny_file), "--ref", "ref.npz", "--device", "cpu"]
    err = _cli_error(base + ["--inception-weights", "/nonexistent"], capsys)
    assert "--inception-weights has no effect" in err
    assert "--ref-split has no effect" in _cli_error(base + ["--ref-split", "foo"], capsys)


# -------------------------------------------------- refusals come before the first line printed


def test_demo_and_make_ref_refuse_before_printing_anything(tmp_path, capsys):

    assert main(["demo", "--device", "tpu", "--out", str(tmp_path / "d")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--device 'tpu'" in captured.err
    argv = ["eval", "--make-ref", "fashion-mnist", "--size", "100000", "--channels", "1",
            "--out", str(tmp_path / "x.npz")]  # fmt: skip
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--size must be" in captured.err
    assert not list(tmp_path.iterdir())
