"""CUDA checks (marked `gpu`: skipped, with the reason, where no CUDA device is; never needed by
CI). Run on a GPU with `pytest -m gpu -rs` (benchmarks/gpu_suite.sh does, then the benchmark).

The parity vectors are read from $PIXELJIT_REFERENCE when set (a GPU session carries a copy of
../shared/reference into the working tree), else from where the CPU tests read them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

import pixeljit
from conftest import REFERENCE_FILE, rel_err, states_equal, tiny_run
from pixeljit.checkpoints.load import load_trained
from pixeljit.checkpoints.run import load_checkpoint
from pixeljit.cli import main
from pixeljit.data import pack_arrays
from pixeljit.diffusion.noise import noise_from_seeds, sample_seeds
from pixeljit.diffusion.objective import ObjectiveConfig, flow_matching_loss
from pixeljit.diffusion.sampler import sample
from pixeljit.files.images import to_uint8
from pixeljit.model import JiTConfig
from pixeljit.training.ema import EMA
from pixeljit.training.loop import train
from pixeljit.training.presets import get_preset

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::UserWarning")]
# cuBLAS needs this before its first handle for deterministic products (the resume test)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

CUDA_PARITY_REL_ERR = 1e-4  # fp32 on CUDA (no TF32) against the authors' CPU vectors
BF16_REL_ERR = 3e-2  # a bf16 network against the float32 one, same noise
COMPILE_FP32_REL_ERR = 1e-4  # inductor reorders float32 reductions
TINY = JiTConfig(image_size=32, patch_size=4, in_channels=3, hidden_size=64, depth=2,
                 num_heads=4, num_classes=10, bottleneck_dim=16, in_context_len=4,
                 in_context_start=1)  # fmt: skip


@pytest.fixture(scope="module")
def cuda():
    torch.set_float32_matmul_precision("highest")  # no TF32 in the parity checks
    return torch.device("cuda", torch.cuda.current_device())


def random_net(cfg: JiTConfig, device, seed: int = 0) -> pixeljit.JiT:
    """A JiT whose zero-initialised layers are perturbed, so its output depends on the input."""
    torch.manual_seed(seed)
    net = pixeljit.JiT(cfg)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return net.to(device)


# ----------------------------------------------------------------------------- training


def test_bf16_training_step(cuda):
    """One step as the loop does it (bf16 autocast, fused AdamW, EMA): float32 weights and
    optimiser state, a finite loss close to the float32 loss, every trainable weight moved; also
    with a bf16 residual stream (`run.bf16_residual`)."""
    losses, nets = {}, {}
    for bf16 in (False, True, "bf16 residual"):
        net = random_net(TINY, cuda).train()
        net.bf16_residual = bf16 == "bf16 residual"
        before = [p.detach().clone() for p in net.parameters()]
        ema = EMA(net, (0.999, 0.9999))
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3,
                                fused=True)  # fmt: skip
        x = torch.rand(8, 3, 32, 32, device=cuda) * 2 - 1
        y = torch.arange(8, device=cuda)
        gen = torch.Generator(device=cuda).manual_seed(0)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bool(bf16)):
            per_sample, _ = flow_matching_loss(net, x, y, ObjectiveConfig(), 10, gen)
            loss = per_sample.float().mean()
        loss.backward()
        opt.step()
        ema.update(net)
        losses[bf16], nets[bf16] = float(loss), net
        assert all(p.dtype == torch.float32 for p in net.parameters())
        assert all(s.dtype == torch.float32 for st in opt.state.values() for s in st.values())
        moved = [not torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True)
                 if p.requires_grad]  # fmt: skip
        assert all(moved)
    for bf16 in (True, "bf16 residual"):
        assert np.isfinite(losses[bf16])
        assert losses[bf16] == pytest.approx(losses[False], rel=BF16_REL_ERR)


def test_activation_checkpointing_on_cuda_cuts_memory_not_gradients(cuda):
    """A bf16 step of an 8-block model with 256 tokens, with and without checkpointed blocks:
    the same loss, gradients equal to bf16 rounding, and a lower peak of allocated memory."""
    cfg = dataclasses.replace(TINY, image_size=64, hidden_size=256, depth=8, num_heads=4)
    results = {}
    for flag in (False, True):
        net = random_net(cfg, cuda).train()
        net.checkpoint_blocks = flag
        x = torch.rand(32, 3, 64, 64, device=cuda, generator=torch.Generator(cuda).manual_seed(1))
        y = torch.arange(32, device=cuda) % 10
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(cuda)
        base = torch.cuda.memory_allocated(cuda)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            gen = torch.Generator(device=cuda).manual_seed(0)
            per_sample, _ = flow_matching_loss(net, x, y, ObjectiveConfig(), 10, gen)
            loss = per_sample.float().mean()
        loss.backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(cuda) - base
        grads = torch.cat([p.grad.flatten() for p in net.parameters() if p.requires_grad])
        results[flag] = (float(loss), grads, peak)
        del net, grads
    (loss_a, grads_a, peak_a), (loss_b, grads_b, peak_b) = results[False], results[True]
    assert loss_a == loss_b
    assert rel_err(grads_b, grads_a) < BF16_REL_ERR
    assert peak_b < 0.6 * peak_a, (peak_a, peak_b)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """256 random 16-px grey images in 10 classes (no download on a GPU machine)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (256, 1, 16, 16), dtype=np.uint8)
    out = tmp_path_factory.mktemp("data") / "random16"
    return pack_arrays(images, out, labels=np.arange(256) % 10).out_dir


@contextlib.contextmanager
def deterministic_kernels():
    """CUDA kernels with run-to-run identical results (atomics make some backward passes vary
    in the last bit, which no resume can reproduce); yields the warnings naming the ops that
    have no such kernel."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        torch.use_deterministic_algorithms(False)


def test_resume_is_bit_exact_on_cuda(packed, tmp_path):
    """The training engine on CUDA (bf16 autocast by run.precision=auto): 6 steps straight
    equal 3 steps + resume + 3 steps, bit for bit (weights, every EMA, optimiser state)."""
    run = {"run.device": "cuda", "run.compile": False, "run.ckpt_every": 3, "optim.steps": 6,
           "run.log_every": 2, "model.dropout": 0.1}  # fmt: skip
    with deterministic_kernels() as caught:
        straight = train(tiny_run(packed, tmp_path / "a", **run), progress=False)
        first = train(tiny_run(packed, tmp_path / "b", **{**run, "optim.steps": 3}),
                      progress=False)  # fmt: skip
        resumed = train(tiny_run(packed, tmp_path / "b", **run), resume=str(tmp_path / "b"),
                        progress=False)  # fmt: skip
    nondeterministic = sorted({str(w.message).split(".")[0] for w in caught
                               if "deterministic" in str(w.message)})  # fmt: skip
    assert (straight.step, first.step, resumed.step) == (6, 3, 6)
    why = f"; ops without a deterministic CUDA kernel: {nondeterministic}"
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "weights" + why
    for sa, sb in zip(a["ema"]["shadows"], b["ema"]["shadows"], strict=True):
        assert all(torch.equal(u, v) for u, v in zip(sa, sb, strict=True)), "EMA" + why
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert opt_a and opt_a.keys() == opt_b.keys()  # every parameter's moments, in both
    assert all(states_equal(opt_a[k], opt_b[k]) for k in opt_a), "optimiser" + why


# ----------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def vectors() -> dict:
    path = Path(os.environ.get("PIXELJIT_REFERENCE", REFERENCE_FILE))
    if not path.is_file():
        pytest.fail(f"parity vectors not found at {path}: set PIXELJIT_REFERENCE to a copy of "
                    "shared/reference/jit_reference_tiny.pt")  # fmt: skip
    return torch.load(path, weights_only=True, map_location="cpu")


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_sampler_parity_fp32_cuda_vs_cpu(vectors, cuda, method):
    """The authors' vectors (CPU, float32) reproduced on CUDA in float32 to 1e-4; and the
    bf16 network with float32 state stays within bf16 tolerance of them."""
    ref = vectors["sample"][method]
    net = pixeljit.load_reference(vectors["checkpoint"], weights="model", attention="fp32",
                                  in_context_start=2, device=cuda)  # fmt: skip
    kwargs = dict(steps=ref["steps"], method=method, cfg=ref["cfg"], t_eps=ref["t_eps"],
                  interval=tuple(ref["interval"]), noise_scale=ref["noise_scale"])  # fmt: skip
    noise = ref["noise"].to(cuda)
    fp32 = sample(net, ref["labels"].to(cuda), noise=noise, **kwargs)
    assert fp32.device.type == "cuda" and fp32.dtype == torch.float32
    assert rel_err(fp32.cpu(), ref["out"]) <= CUDA_PARITY_REL_ERR
    bf16 = sample(net, ref["labels"].to(cuda), noise=noise, amp_dtype=torch.bfloat16, **kwargs)
    assert bf16.dtype == torch.float32  # the state stays float32
    assert rel_err(bf16.cpu(), ref["out"]) <= BF16_REL_ERR


def test_device_noise_is_independent_of_the_batch_split(cuda):
    seeds = sample_seeds(5, 6)
    whole = noise_from_seeds(seeds, (3, 8, 8), cuda)
    assert whole.device.type == "cuda"
    split = [
        noise_from_seeds(seeds[:4], (3, 8, 8), cuda),
        noise_from_seeds(seeds[4:], (3, 8, 8), cuda),
    ]
    assert torch.equal(torch.cat(split), whole)
    assert float(whole.std()) == pytest.approx(1.0, abs=0.1)
    net = random_net(TINY, cuda)
    labels = [0, 1, 2, 3, 4]
    kw = dict(steps=4, cfg=2.0, seed=9)
    parts = torch.cat([sample(net, labels[:2], **kw), sample(net, labels[2:], first_index=2, **kw)])
    torch.testing.assert_close(parts, sample(net, labels, **kw), rtol=1e-5, atol=1e-5)


def test_pixeljit_sample_on_cuda_defaults_to_bf16(cuda, tmp_path):
    """`pixeljit sample --device cuda` with its default `--amp auto` (bf16 network, float32
    state): the images match the library's bf16 call, and differ from float32 by bf16 error."""
    net = random_net(TINY, "cpu")
    path = tmp_path / "tiny.safetensors"
    pixeljit.save_safetensors(net, path)
    npz = tmp_path / "s.npz"
    argv = ["sample", str(path), "--labels", "1", "3", "--num", "4", "--steps", "4", "--cfg",
            "2", "--device", "cuda", "--seed", "3", "--out", str(npz)]  # fmt: skip
    assert main(argv) == 0
    got = torch.from_numpy(np.load(npz)["arr_0"]).permute(0, 3, 1, 2).int()
    model = load_trained(path, device=cuda)
    kw = dict(steps=4, cfg=2.0, interval=(0.1, 1.0), seed=3, noise_scale=model.noise_scale,
              prediction=model.prediction)  # fmt: skip
    on_cuda = model.net
    bf16 = to_uint8(sample(on_cuda, [1, 1, 3, 3], amp_dtype=torch.bfloat16, **kw)).int()
    assert (got - bf16).abs().max() <= 1
    fp32 = to_uint8(sample(on_cuda, [1, 1, 3, 3], **kw)).int()
    assert (got - fp32).abs().float().mean() < 2  # bf16 rounding, not other images
    assert (got != fp32).any()  # and not the float32 network


# ----------------------------------------------------------------------------- compile


def test_compiled_network_equals_eager(cuda):
    net = random_net(TINY, cuda).eval()
    z = torch.randn(6, 3, 32, 32, device=cuda)
    t, y = torch.rand(6, device=cuda), torch.arange(6, device=cuda)
    compiled = torch.compile(net, dynamic=False)
    with torch.no_grad():
        assert rel_err(compiled(z, t, y), net(z, t, y)) <= COMPILE_FP32_REL_ERR
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert rel_err(compiled(z, t, y).float(), net(z, t, y).float()) <= BF16_REL_ERR


def test_cuda_graph_sampling_equals_eager(cuda):
    """compile_mode='reduce-overhead' (CUDA graphs, two shapes) against the eager sampler with
    the bf16 network and the float32 one; a second call compiles nothing new."""
    torch._dynamo.reset()
    net = random_net(TINY, cuda)
    labels = list(range(8))
    kw = dict(steps=10, method="heun", cfg=2.5, interval=(0.1, 1.0), seed=1,
              amp_dtype=torch.bfloat16)  # fmt: skip
    eager = sample(net, labels, **kw)
    graphs = sample(net, labels, compile_mode="reduce-overhead", **kw)
    assert rel_err(graphs, eager) <= BF16_REL_ERR
    fp32 = sample(net, labels, **{**kw, "amp_dtype": None})  # the eager float32 sampler
    assert rel_err(graphs, fp32) <= BF16_REL_ERR
    graphs_built = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs_built >= 2  # N and 2N rows
    with torch._dynamo.config.patch(error_on_recompile=True):  # a recompile raises
        again = sample(net, labels, compile_mode="reduce-overhead", **{**kw, "seed": 2})
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs_built
    assert torch.isfinite(again).all()


# ----------------------------------------------------------------------------- NCCL


def test_nccl_single_process_group(cuda, tmp_path):
    """A one-rank NCCL group: all-reduce, and DDP gradients equal the plain model's."""
    assert dist.is_nccl_available()
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1, device_id=cuda)  # fmt: skip
    try:
        value = torch.arange(4.0, device=cuda)
        dist.all_reduce(value)
        assert torch.equal(value, torch.arange(4.0, device=cuda))
        cfg = dataclasses.replace(get_preset("fmnist-tiny").model, num_classes=10)
        plain, wrapped = random_net(cfg, cuda), random_net(cfg, cuda)
        ddp = torch.nn.parallel.DistributedDataParallel(wrapped, device_ids=[cuda.index])
        x = torch.randn(4, 1, 16, 16, device=cuda)
        t, y = torch.rand(4, device=cuda), torch.arange(4, device=cuda)
        plain(x, t, y).square().mean().backward()
        ddp(x, t, y).square().mean().backward()
        for p, q in zip(plain.parameters(), wrapped.parameters(), strict=True):
            if p.grad is not None:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7)
    finally:
        dist.destroy_process_group()
