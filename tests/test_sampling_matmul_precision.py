"""`--matmul-precision` of `pixeljit sample` / `eval`: float32 matrix products at torch's levels
while the network generates (highest: full float32; high: TF32 on CUDA; medium: bf16 inputs
with float32 sums, on CUDA and on CPUs with AMX-BF16), the caller's setting restored after.
Default auto is the behaviour before the flag (high on CUDA under autocast, as the process has
it otherwise: highest on a CPU, the same bytes). Eval holds it on every rank while generating
only (never while scoring) and records it; `eval --images` / `--make-ref` refuse it."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pixeljit.cli.evaluate as eval_cli
from conftest import TINY_MODEL, run_group, varied_model_and_ref
from pixeljit.checkpoints.load import load_trained
from pixeljit.cli import main
from pixeljit.diffusion.execution import matmul_precision
from pixeljit.diffusion.sampler import SamplerConfig, sample
from pixeljit.evaluation import GenerationSpec
from pixeljit.files.images import to_uint8
from pixeljit.model import JiT

SAMPLER = ["--steps", "3", "--method", "euler", "--cfg", "1", "--device", "cpu"]
# bf16 keeps 8 bits of mantissa: a 2-block net over 3 Euler steps moves few uint8 levels
MEDIUM_MAX_LEVELS, MEDIUM_MEAN_LEVELS = 4, 0.5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny class-conditional model (16 px RGB) whose images differ by seed and class, and
    reference statistics at its size."""
    return varied_model_and_ref(tmp_path_factory.mktemp("matmul-precision"), TINY_MODEL, 16)


@pytest.fixture
def seen(monkeypatch):
    """The float32 matmul precision in effect at each forward of the network (JiT.forward)."""
    assert torch.get_float32_matmul_precision() == "highest"  # the process's default
    precisions, real = [], JiT.forward

    def forward(self, *args, **kwargs):
        precisions.append(torch.get_float32_matmul_precision())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(JiT, "forward", forward)
    yield precisions
    torch.set_float32_matmul_precision("highest")  # whatever a failed test left


def medium_acts_here() -> bool:
    """Whether 'medium' changes a float32 matrix product on this machine (bf16 inputs: CUDA,
    or a CPU whose oneDNN has AMX-BF16); elsewhere it computes as 'highest'."""
    a = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    with matmul_precision("medium"):
        reduced = F.linear(a, a)
    return not torch.equal(reduced, F.linear(a, a))


def draw(setup, tmp_path, name: str, capsys, *flags: str) -> tuple[np.ndarray, str]:
    """`pixeljit sample` of 4 images in one batch → (uint8 images, the summary line)."""
    out = tmp_path / f"{name}.npz"
    argv = ["sample", str(setup / "tiny.safetensors"), "--labels", "1", "3", "--num", "4",
            "--seed", "5", "--out", str(out), *SAMPLER, *flags]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    return np.load(out)["arr_0"], capsys.readouterr().out


def test_sample_holds_the_precision_in_the_forward_and_restores_the_callers(
    setup, tmp_path, capsys, seen
):
    torch.set_float32_matmul_precision("high")  # the caller's, to be restored
    _, said = draw(setup, tmp_path, "medium", capsys, "--matmul-precision", "medium")
    assert seen and set(seen) == {"medium"}
    assert torch.get_float32_matmul_precision() == "high"
    assert "(seed 5, float32, matmuls at medium precision)" in said


def test_auto_on_a_cpu_is_highest_and_the_same_bytes_as_before(setup, tmp_path, capsys, seen):
    before, said = draw(setup, tmp_path, "default", capsys)
    assert set(seen) == {"highest"} and "(seed 5, float32)" in said
    for value in ("auto", "highest"):
        got, said = draw(setup, tmp_path, value, capsys, "--matmul-precision", value)
        assert np.array_equal(got, before), value
        assert "(seed 5, float32)" in said and "matmuls" not in said
    # the images `sample()` gives at the process's own precision (the command before the flag)
    model = load_trained(setup / "tiny.safetensors")
    sampler = dataclasses.replace(model.sampler or SamplerConfig(), steps=3, method="euler",
                                  cfg=1.0)  # fmt: skip
    expected = sample(model.net, [1, 1, 3, 3], **sampler.kwargs(), seed=5,
                      noise_scale=model.noise_scale, prediction=model.prediction,
                      preconditioner=model.preconditioner, sigma_data=model.sigma_data)  # fmt: skip
    assert np.array_equal(before, to_uint8(expected).permute(0, 2, 3, 1).numpy())
    assert len(np.unique(before)) > 10  # not a flat image


def test_medium_draws_images_close_to_highest(setup, tmp_path, capsys, seen):
    highest, _ = draw(setup, tmp_path, "highest", capsys, "--matmul-precision", "highest")
    medium, _ = draw(setup, tmp_path, "medium", capsys, "--matmul-precision", "medium")
    levels = np.abs(medium.astype(int) - highest.astype(int))
    assert levels.max() <= MEDIUM_MAX_LEVELS and levels.mean() <= MEDIUM_MEAN_LEVELS
    if medium_acts_here():  # (elsewhere medium computes as highest)
        assert not np.array_equal(medium, highest)


def eval_argv(setup, out, *flags: str) -> list[str]:
    return ["eval", "--checkpoint", str(setup / "tiny.safetensors"), "--num-images", "4",
            "--ref", str(setup / "ref.npz"), "--metrics", "fd", "--batch-size", "2",
            "--out", str(out), *SAMPLER, *flags]  # fmt: skip


@pytest.mark.slow
def test_eval_generates_at_the_precision_scores_at_the_callers_and_records_it(
    setup, tmp_path, capsys, seen, monkeypatch
):
    scoring, real = [], eval_cli._extractor

    def extractor(*args, **kwargs):
        made = real(*args, **kwargs)
        inner = made.extract

        def extract(images):
            scoring.append(torch.get_float32_matmul_precision())
            return inner(images)

        made.extract = extract
        return made

    monkeypatch.setattr(eval_cli, "_extractor", extractor)
    out = tmp_path / "medium.json"
    assert main(eval_argv(setup, out, "--matmul-precision", "medium")) == 0
    assert seen and set(seen) == {"medium"}
    assert scoring and set(scoring) == {"highest"}  # the extractor runs between batches
    assert torch.get_float32_matmul_precision() == "highest"
    record = json.loads(out.read_text())
    assert (record["matmul_precision"], record["amp"]) == ("medium", "none")
    assert "4 images (seed 0, float32, matmuls at medium precision)" in capsys.readouterr().out
    seen.clear()
    assert main(eval_argv(setup, tmp_path / "auto.json")) == 0
    assert set(seen) == {"highest"}
    assert json.loads((tmp_path / "auto.json").read_text())["matmul_precision"] == "highest"
    assert "matmuls" not in capsys.readouterr().out


def test_a_generation_spec_refuses_an_unknown_precision():
    with pytest.raises(ValueError, match=r"GenerationSpec.matmul_precision must be None or one "
                       r"of \('highest', 'high', 'medium'\), got 'low'"):  # fmt: skip
        GenerationSpec(num=1, matmul_precision="low")


def test_eval_of_images_or_make_ref_refuses_it(tmp_path, capsys):
    images = ["eval", "--images", str(tmp_path / "x.npz"), "--ref", str(tmp_path / "r.npz")]
    make_ref = ["eval", "--make-ref", "fashion-mnist", "--size", "8", "--channels", "1",
                "--out", str(tmp_path / "s.npz")]  # fmt: skip
    for argv, mode in ((images, "--images"), (make_ref, "--make-ref")):
        assert main([*argv, "--matmul-precision", "medium"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"--matmul-precision has no effect with {mode}" in err
        assert "drop --matmul-precision" in err
    assert not any(tmp_path.iterdir())  # nothing read or written


# each rank records the precision at its network's forwards and after the command
RANK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from pixeljit.cli import main
    from pixeljit.model import JiT

    seen, real = set(), JiT.forward

    def forward(self, *args, **kwargs):
        seen.add(torch.get_float32_matmul_precision())
        return real(self, *args, **kwargs)

    JiT.forward = forward
    code = main(sys.argv[2:])
    facts = {"forward": sorted(seen), "after": torch.get_float32_matmul_precision()}
    with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(facts, f)
    sys.exit(code)
    """
)


@pytest.mark.slow
def test_every_torchrun_rank_generates_at_the_precision(setup, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    out = tmp_path / "two.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    argv = eval_argv(setup, out, "--matmul-precision", "medium")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(tmp_path), *argv]  # fmt: skip
    done = run_group(cmd, 240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):  # 4 images: 2 each
        facts = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert facts == {"forward": ["medium"], "after": "highest"}, rank
    assert json.loads(out.read_text())["matmul_precision"] == "medium"
