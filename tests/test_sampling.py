"""Samplers against the exact flow of Gaussian data, the CFG interval wrapper, sample() and
parity with the authors' sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pixeljit
from analytic import F64, NUM_CLASSES, SHAPE, AnalyticNet, D, Gaussian, error, noise
from conftest import PARITY_REL_ERR, rel_err
from pixeljit.diffusion.guidance import GuidedField, guidance_mask
from pixeljit.diffusion.noise import noise_from_seeds, sample_seeds
from pixeljit.diffusion.objective import PREDICTIONS, convert, preconditioner_coefficients
from pixeljit.diffusion.sampler import sample
from pixeljit.diffusion.solvers import dpmpp_2m, euler, evaluations, heun, time_grid

# ------------------------------------------------------------------------------ accuracy


def test_euler_first_order_heun_second_order():
    gauss = Gaussian()
    z0 = noise(64)
    exact = gauss.flow_map(z0)
    field = GuidedField(gauss.x_hat, None, t_eps=1e-12)  # no clamp: the exact ODE
    steps = np.array([8, 16, 32, 64])
    slopes = {}
    for name, solver in [("euler", euler), ("heun", heun)]:
        errs = [error(solver(field.velocity, z0, time_grid(int(n))), exact) for n in steps]
        slopes[name] = np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert -1.15 < slopes["euler"] < -0.85, slopes
    assert -2.2 < slopes["heun"] < -1.8, slopes


def test_dpmpp_2m_second_order_and_beats_heun_per_evaluation():
    gauss = Gaussian()
    z0 = noise(64, seed=1)
    exact = gauss.flow_map(z0)
    field = GuidedField(gauss.x_hat, None, t_eps=1e-12)
    # few steps, the authors' uniform grid: 10 evaluations beat Heun's 11 (6 steps)
    assert evaluations("dpm++2m", 10) == 10 and evaluations("heun", 6) == 11
    err_dpm = error(dpmpp_2m(field.denoised, z0, time_grid(10)), exact)
    err_heun = error(heun(field.velocity, z0, time_grid(6)), exact)
    assert err_dpm < 0.85 * err_heun, (err_dpm, err_heun)
    # second order away from the end points (where λ = log(t/(1−t)) is infinite)
    ta, tb = 0.1, 0.9
    za = gauss.flow_map(z0)  # any state works; transport it from ta to tb exactly below
    errs = []
    steps = np.array([8, 16, 32, 64])
    for n in steps:
        grid = torch.linspace(ta, tb, int(n) + 1, dtype=torch.float32)
        t0, t1 = float(grid[0]), float(grid[-1])
        mu = gauss.means[NUM_CLASSES]
        w = (za.reshape(-1, D) - t0 * mu) @ gauss.q
        sig = lambda t: (t**2 * gauss.lam + (1 - t) ** 2).sqrt()  # noqa: E731
        ref = (t1 * mu + (w * sig(t1) / sig(t0)) @ gauss.q.T).reshape(za.shape)
        errs.append(error(dpmpp_2m(field.denoised, za, grid), ref))
    slope = np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert -2.2 < slope < -1.7, slope


def test_time_grids():
    g = time_grid(50)
    assert torch.equal(g, torch.linspace(0, 1, 51, dtype=torch.float32))
    s = time_grid(10, "shifted", shift=3.0).double()
    u = torch.linspace(0, 1, 11, dtype=F64)
    torch.testing.assert_close(s, u / (u + 3 * (1 - u)), atol=1e-7, rtol=0)
    # the shift lowers log(t / (1 − t)) by log(shift)
    lam = lambda t: torch.log(t / (1 - t))  # noqa: E731
    torch.testing.assert_close(lam(s[1:-1]), lam(u[1:-1]) - np.log(3.0), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="grid"):
        time_grid(10, "cosine")


@pytest.mark.parametrize("method", ["euler", "heun", "dpm++2m"])
def test_predictions_give_identical_samples(method):
    """x-, ε- and v-prediction of the exact model give one sample (with guidance in v-space).
    The grid starts at t = 0.05: at t = 0 an ε-prediction carries no information about x."""
    gauss = Gaussian()
    z0 = noise(6, seed=2)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    grid = torch.linspace(0.05, 1.0, 11, dtype=torch.float32)
    outs = {}
    for pred in PREDICTIONS:
        net = AnalyticNet(gauss, pred)
        field = GuidedField(
            net, y, prediction=pred, cfg=2.0, interval=(0.1, 1.0), null_label=NUM_CLASSES
        )
        if method == "dpm++2m":
            outs[pred] = dpmpp_2m(field.denoised, z0, grid)
        else:
            outs[pred] = (euler if method == "euler" else heun)(field.velocity, z0, grid)
    assert error(outs["eps"], outs["x"]) < 1e-10
    assert error(outs["v"], outs["x"]) < 1e-10


# ------------------------------------------------------------------------------ guidance


def authors_guided_velocity(gauss, z, t, y, w, interval, t_eps):
    """The authors' _forward_sample: both branches always, mask applied to the scale."""
    t_rows = torch.full((z.shape[0],), float(t), dtype=torch.float32)
    tt = t_rows.to(z.dtype).view(-1, 1, 1, 1)
    x_c = gauss.x_hat(z, t_rows, y)
    x_u = gauss.x_hat(z, t_rows, torch.full_like(y, NUM_CLASSES))
    v_c = (x_c - z) / (1.0 - tt).clamp_min(t_eps)
    v_u = (x_u - z) / (1.0 - tt).clamp_min(t_eps)
    low, high = interval
    mask = (t_rows < high) & ((low == 0) | (t_rows > low))
    scale = torch.where(mask, w, 1.0).to(z.dtype).view(-1, 1, 1, 1)
    return v_u + scale * (v_c - v_u)


def test_guidance_interval_mask_matches_authors():
    t = torch.linspace(0, 1, 11, dtype=torch.float32)  # includes float32(0.1) and 1.0
    on = guidance_mask(t, (0.1, 1.0))
    assert not on[0] and not on[1] and on[2:10].all() and not on[10]
    assert guidance_mask(t, (0.0, 1.0))[:10].all()  # low = 0: no lower bound, t = 0 included
    assert not guidance_mask(t, (0.0, 1.0))[10]
    assert not guidance_mask(t, (0.3, 0.3)).any()


def test_guided_sampler_equals_authors_formula_and_skips_unconditional_pass():
    gauss = Gaussian()
    net = AnalyticNet(gauss)
    z0 = noise(4, seed=3)
    y = torch.tensor([0, 1, 2, 1])
    steps, w, interval = 10, 2.5, (0.35, 0.75)
    out = sample(net, y, noise=z0, steps=steps, method="euler", cfg=w, interval=interval)
    grid = time_grid(steps)
    z = z0
    for i in range(steps):
        v = authors_guided_velocity(gauss, z, grid[i], y, w, interval, 0.05)
        z = z + (grid[i + 1] - grid[i]) * v
    assert error(out, z) < 1e-12
    # one forward per step; unconditional rows only where 0.35 < t < 0.75
    inside = [0.35 < float(t) < 0.75 for t in grid[:-1]]
    assert net.calls == [8 if on else 4 for on in inside]
    assert 0 < sum(inside) < steps


def test_cfg_one_is_the_conditional_model():
    gauss = Gaussian()
    y = torch.tensor([2, 0, 1])
    z0 = noise(3, seed=4)
    plain = AnalyticNet(gauss)
    guided = AnalyticNet(gauss)
    a = sample(plain, y, noise=z0, steps=6, method="heun")
    b = sample(guided, y, noise=z0, steps=6, method="heun", cfg=1.0, interval=(0.1, 0.9))
    assert torch.equal(a, b)
    assert guided.calls == [3] * evaluations("heun", 6)  # never an unconditional row
    # and it follows the conditional data distribution: Heun-50 reaches the exact flow map
    c = sample(AnalyticNet(gauss), y, noise=z0, steps=50, method="heun", t_eps=1e-9)
    assert error(c, gauss.flow_map(z0, y)) < 1e-3


def test_per_row_times_guide_only_rows_in_interval():
    gauss = Gaussian()
    net = AnalyticNet(gauss)
    z = noise(5, seed=5)
    y = torch.tensor([0, 1, 2, 0, 1])
    t = torch.tensor([0.05, 0.3, 0.5, 0.95, 1.0], dtype=torch.float32)
    field = GuidedField(net, y, cfg=3.0, interval=(0.1, 0.9), null_label=NUM_CLASSES)
    got = field.velocity(z, t)
    assert net.calls == [2 * 5]  # one forward at the fixed shape: 5 conditional + 5 unconditional
    for i in range(5):
        ref = authors_guided_velocity(
            gauss, z[i : i + 1], t[i], y[i : i + 1], 3.0, (0.1, 0.9), 0.05
        )
        torch.testing.assert_close(got[i : i + 1], ref, rtol=1e-12, atol=1e-12)


def test_guidance_changes_samples_and_uses_one_batched_forward():
    gauss = Gaussian()
    net = AnalyticNet(gauss)
    y = torch.tensor([0, 1])
    z0 = noise(2, seed=6)
    guided = sample(net, y, noise=z0, steps=4, method="euler", cfg=3.0, interval=(0.0, 1.0))
    assert net.calls == [4, 4, 4, 4]  # cat([cond, uncond]) in one call per step
    paper = AnalyticNet(gauss)  # the default interval is the paper's (0.1, 1]: t = 0 unguided
    sample(paper, y, noise=z0, steps=4, method="euler", cfg=3.0)
    assert paper.calls == [2, 4, 4, 4]
    plain = sample(AnalyticNet(gauss), y, noise=z0, steps=4, method="euler")
    assert error(guided, plain) > 1e-2


# ------------------------------------------------------------------------------ sample()


def test_same_seed_same_images_whatever_the_batch_split():
    net = AnalyticNet(Gaussian())
    y = torch.tensor([0, 1, 2, 0, 1])
    whole = sample(net, y, seed=11, steps=4, method="euler")
    parts = torch.cat(
        [
            sample(net, y[:2], seed=11, steps=4, method="euler"),
            sample(net, y[2:], seed=11, first_index=2, steps=4, method="euler"),
        ]
    )
    assert whole.dtype == torch.float32 and whole.shape == (5, *SHAPE)
    torch.testing.assert_close(parts, whole, rtol=1e-6, atol=1e-6)
    other = sample(net, y, seed=12, steps=4, method="euler")
    assert not torch.allclose(other, whole)
    seeds = sample_seeds(11, 3)
    assert len(set(seeds)) == 3 and seeds == sample_seeds(11, 3)
    assert torch.equal(noise_from_seeds(seeds[1:], SHAPE), noise_from_seeds(seeds, SHAPE)[1:])


def test_noise_scale_and_unconditional_model():
    gauss = Gaussian(noise_scale=2.0)
    net = AnalyticNet(gauss, num_classes=0)
    out = sample(net, None, num=64, steps=40, noise_scale=2.0, seed=0, t_eps=1e-9)
    z0 = 2.0 * noise_from_seeds(sample_seeds(0, 64), SHAPE)
    # Heun-40 error ~6e-3 here (s = 2 makes the flow stiffer near t = 1); a wrong scale gives O(1)
    assert error(out.double(), gauss.flow_map(z0.double())) < 1e-2
    # None: the paper's s = image_size / 256 (here 2 px → 1/128)
    auto = sample(net, None, num=2, steps=3, seed=0, noise_scale=None)
    s = 2 / 256
    explicit = sample(net, None, noise=s * noise_from_seeds(sample_seeds(0, 2), SHAPE), steps=3)
    assert torch.equal(auto, explicit)
    assert torch.equal(sample(net, None, num=2, steps=3, seed=0), auto)  # the default
    assert error(sample(net, None, num=2, steps=3, seed=0, noise_scale=1.0), auto) > 1e-3
    with pytest.raises(ValueError, match="unconditional"):
        sample(net, None, num=2, cfg=2.0)
    with pytest.raises(ValueError, match="labels=None"):
        sample(net, [0, 1])


def test_sample_runs_the_net_in_eval_mode_and_restores_training_mode():
    class ModeRecorder(AnalyticNet):
        def forward(self, z, t, y):
            self.modes.append(self.training)
            return super().forward(z, t, y)

    net = ModeRecorder(Gaussian()).train()
    net.modes = []
    sample(net, [0], steps=2)
    assert net.modes and not any(net.modes)  # every network call in eval mode (no dropout)
    assert net.training  # and the caller's mode back afterwards


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cfg=-1.0), "cfg"),
        (dict(interval=(0.2, 1.5)), r"\[0, 1\]"),
        (dict(interval=(0.8, 0.2)), "low < high"),
        (dict(interval=(0.5, 0.5)), "hold no t"),
        (dict(steps=0), "steps"),
        (dict(method="rk4"), "method"),
        (dict(grid="cosine"), "grid"),
        (dict(prediction="score"), "prediction"),
        (dict(t_eps=0.0), "t_eps"),
        (dict(labels=[0, 3]), r"\[0, 3\)"),
        (dict(labels=[-1]), r"\[0, 3\)"),
        (dict(labels=[0.5, 1.0]), "integers"),
        (dict(noise_scale=0.0), "noise_scale"),
        (dict(labels=None), "class-conditional"),
        (dict(noise=torch.zeros(2, 1, 4, 4)), "noise must have shape"),
        (dict(num=5), "disagrees"),
    ],
)
def test_sample_rejects_bad_arguments(kwargs, message):
    args = dict(labels=[0, 1], steps=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        sample(AnalyticNet(Gaussian()), **args)


# ------------------------------------------------------------------------------ parity


@pytest.fixture(scope="module")
def reference_net(reference):
    return pixeljit.load_reference(
        reference["checkpoint"], weights="model", attention="fp32", in_context_start=2
    )


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_sampler_parity_with_reference(reference, reference_net, method):
    ref = reference["sample"][method]
    out = sample(
        reference_net,
        ref["labels"],
        noise=ref["noise"],
        steps=ref["steps"],
        method=method,
        cfg=ref["cfg"],
        interval=tuple(ref["interval"]),
        t_eps=ref["t_eps"],
        noise_scale=ref["noise_scale"],
    )
    assert rel_err(out, ref["out"]) <= PARITY_REL_ERR


def test_every_entry_point_takes_its_defaults_from_sampler_config():
    """The API, both CLI verbs, training previews and evaluation share SamplerConfig's defaults
    (they had drifted apart: the API once guided on (0, 1), the CLI on (0.1, 1))."""
    import inspect

    from pixeljit.cli import build_parser
    from pixeljit.cli.sampler_args import sampler_from_args
    from pixeljit.diffusion.sampler import SamplerConfig
    from pixeljit.evaluation import GenerationSpec
    from pixeljit.training.config import SampleConfig

    defaults = SamplerConfig()
    assert defaults.interval == (0.1, 1.0) and defaults.steps == 50 and defaults.method == "heun"
    signature = inspect.signature(sample).parameters
    for name, value in defaults.kwargs().items():
        assert signature[name].default == value, name
        assert getattr(SampleConfig(), name) == value, name
        assert getattr(GenerationSpec(num=1).sampler, name) == value, name
    parser = build_parser()
    for verb in (["sample", "ckpt"], ["eval", "--checkpoint", "ckpt"]):
        args = parser.parse_args(verb)  # no flag given, a model that recommends nothing
        assert sampler_from_args(args, None) == defaults


@pytest.mark.parametrize(
    "field, value",
    [("cfg", float("nan")), ("cfg", -1.0), ("interval", (0.5, 0.2)), ("interval", (0.0, 1.5)),
     ("t_eps", 0.0), ("t_eps", float("inf")), ("steps", 0), ("steps", 2.5), ("shift", 0.0),
     ("method", "rk4"), ("grid", "cosine"), ("t_min", float("nan")), ("cfg", "2"),
     ("shift", True), ("t_eps", b"0.1"), ("interval", ("0.1", 1.0)), ("interval", "01"),
     ("interval", (0.1, 0.5, 1.0))],
)  # fmt: skip
def test_sampler_config_rejects_bad_values(field, value):
    from pixeljit.diffusion.sampler import SamplerConfig

    with pytest.raises(ValueError, match=field):
        SamplerConfig(**{field: value})


@pytest.mark.parametrize("field", ["p_mean", "p_std", "t_eps", "label_drop", "noise_scale"])
def test_objective_config_rejects_text_and_booleans_by_name(field):
    # a number's text (from a hand-edited file) would otherwise fail later with a TypeError
    from pixeljit.diffusion.objective import ObjectiveConfig

    for value in ("0.5", True):
        with pytest.raises(ValueError, match=f"{field} must be a number"):
            ObjectiveConfig(**{field: value})


def test_numbers_of_other_types_are_stored_as_floats():
    import numpy as np

    from pixeljit.diffusion.objective import ObjectiveConfig
    from pixeljit.diffusion.sampler import SamplerConfig

    sampler = SamplerConfig(cfg=np.float32(2.5), t_eps=np.float64(0.05), interval=[0, 1])
    assert type(sampler.cfg) is float and sampler.cfg == 2.5 and sampler.interval == (0.0, 1.0)
    assert type(ObjectiveConfig(p_mean=np.float32(-0.5)).p_mean) is float


# ------------------------------------------------------------------ pre-conditioner, shift, t_min


class EDMRawNet(AnalyticNet):
    """A 'network' whose raw output is EDM's regression target for the exact denoiser at noise
    scale s: F = (x̂ − c_skip·z)/c_out, so only x̂ = c_skip·z + c_out·F recovers the denoiser."""

    def forward(self, z, t, y):
        x = self.gauss.x_hat(z, t, y)
        c_skip, c_out = preconditioner_coefficients("edm", t.to(z.dtype), self.gauss.s)
        return (x - c_skip.view(-1, 1, 1, 1) * z) / c_out.view(-1, 1, 1, 1)


def test_sampling_applies_the_preconditioner_at_the_noise_scale():
    """sample(preconditioner='edm', noise_scale=2) must turn the raw output F back into
    x̂ = c_skip(t, s)·z + c_out(t, s)·F: with F the EDM target of the exact denoiser (at s = 2)
    the sample equals the exact denoiser's, sampled without a pre-conditioner. Heun and Euler
    never evaluate t = 1, where c_out = 0."""
    gauss = Gaussian(noise_scale=2.0)
    y = torch.tensor([0, 2, 1])
    z0 = noise(3, seed=7, scale=2.0)
    for method in ("heun", "euler"):
        kw = dict(noise=z0, steps=8, method=method, noise_scale=2.0)
        want = sample(AnalyticNet(gauss), y, **kw)
        got = sample(EDMRawNet(gauss), y, preconditioner="edm", **kw)
        assert error(got, want) < 1e-12, method
    # the raw output alone is far from the denoiser: the test can tell the two apart
    raw = sample(EDMRawNet(gauss), y, noise=z0, steps=8, noise_scale=2.0)
    assert error(raw, want) > 1e-2


class TimeRecorder(AnalyticNet):
    def forward(self, z, t, y):
        self.times.append(t.clone())
        return super().forward(z, t, y)


def test_shifted_grid_uses_its_shift():
    """The shifted grid t = u/(u + k(1 − u)) at k = 2 (not the default 3), and sample() takes
    its network times from exactly that grid: Euler evaluates every point but the last."""
    n, k = 7, 2.0
    u = torch.linspace(0, 1, n + 1, dtype=F64)
    grid = time_grid(n, "shifted", shift=k)
    torch.testing.assert_close(grid.double(), u / (u + k * (1 - u)), atol=1e-7, rtol=0)
    assert float(grid[1]) == pytest.approx((1 / 7) / (1 / 7 + 2 * 6 / 7), rel=1e-6)  # = 1/13
    net = TimeRecorder(Gaussian())
    net.times = []
    sample(net, [0, 1], noise=noise(2, seed=8), steps=n, method="euler", grid="shifted", shift=k)
    seen = torch.stack([t[0] for t in net.times])  # one time for the batch per call
    assert all(bool((t == t[0]).all()) for t in net.times)
    assert torch.equal(seen, grid[:-1].double())


class EpsAffineNet(AnalyticNet):
    """An ε-predictor whose ε̂ differs from z at t = 0 (the exact one gives ε̂ = z there, so the
    clamp of t would multiply 0 and go unseen)."""

    def forward(self, z, t, y):
        self.calls.append(z.shape[0])
        return 0.6 * z + 0.1 * torch.sin(3 * z) + 0.05


def test_sample_clamps_t_by_its_t_min():
    """An ε-prediction's velocity (z − ε̂)/max(t, t_min) at the first step t = 0 uses sample()'s
    t_min: one Euler step of size 1/2 from t = 0, then one from t = 1/2 (no clamp there)."""
    net = EpsAffineNet(Gaussian())
    z0 = noise(3, seed=9)
    got = sample(net, [0, 1, 2], noise=z0, steps=2, method="euler", prediction="eps", t_min=0.1)
    z = z0
    for t in (0.0, 0.5):
        eps_hat = net(z, torch.full((3,), t, dtype=F64), None)
        v = (z - eps_hat) / max(t, 0.1)  # Tab. 1's ε -> v with the clamp written out
        t_rows = torch.full((3,), t, dtype=F64)
        torch.testing.assert_close(v, convert(eps_hat, "eps", "v", z, t_rows, t_min=0.1))
        z = z + 0.5 * v
    torch.testing.assert_close(got, z, rtol=1e-12, atol=1e-12)
    default = sample(net, [0, 1, 2], noise=z0, steps=2, method="euler", prediction="eps")
    assert error(default, got) > 1e-1  # the default t_min = 1e-3 gives another sample
