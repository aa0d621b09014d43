"""The objective: path, Tab. 1 conversions (all nine pairs), Tab. 10 pre-conditioners, t-sampler,
label dropout, loss buckets, and parity with the authors' loss."""

from __future__ import annotations

import math

import pytest
import torch

import pixeljit
from conftest import PARITY_REL_ERR, rel_err
from pixeljit.diffusion.objective import (
    LOSS_SPACES,
    PREDICTIONS,
    ObjectiveConfig,
    convert,
    default_noise_scale,
    drop_labels,
    flow_matching_loss,
    flow_matching_loss_at,
    interpolate,
    loss_weight_in_x,
    precondition,
    preconditioner_coefficients,
    sample_t,
)
from pixeljit.training.runlog import bucket_losses

SHAPE = (5, 3, 4, 4)


def draws(seed: int = 0, t_range=(0.1, 0.9)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    t = torch.linspace(*t_range, SHAPE[0], dtype=torch.float64)
    return x, eps, t


def test_path_and_velocity():
    x, eps, t = draws()
    z = interpolate(x, eps, t)
    tt = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(z, tt * x + (1 - tt) * eps)
    # v = x − ε is the time derivative of the path
    h = 1e-6
    dz = (interpolate(x, eps, t + h) - interpolate(x, eps, t - h)) / (2 * h)
    torch.testing.assert_close(dz, x - eps)


def test_conversions_exact_on_the_path():
    x, eps, t = draws(1)
    z = interpolate(x, eps, t)
    truth = {"x": x, "eps": eps, "v": x - eps}
    for src in PREDICTIONS:
        for dst in PREDICTIONS:
            got = convert(truth[src], src, dst, z, t)
            torch.testing.assert_close(got, truth[dst], msg=f"{src} -> {dst}")


def test_conversion_clamps():
    x, eps, _ = draws(2)
    t = torch.tensor([0.0, 0.0005, 0.5, 0.97, 1.0], dtype=torch.float64)
    z = interpolate(x, eps, t)
    tt = t.view(-1, 1, 1, 1)
    # x -> v divides by max(1 − t, t_eps): the authors' clamp
    v = convert(x, "x", "v", z, t, t_eps=0.05)
    torch.testing.assert_close(v, (x - z) / (1 - tt).clamp_min(0.05))
    assert torch.isfinite(v).all()
    # eps -> x divides by max(t, t_min)
    xs = convert(eps, "eps", "x", z, t, t_min=1e-3)
    torch.testing.assert_close(xs, (z - (1 - tt) * eps) / tt.clamp_min(1e-3))
    assert torch.isfinite(xs).all()
    torch.testing.assert_close(xs[2:4], x[2:4])  # untouched away from the ends


@pytest.mark.parametrize("loss", LOSS_SPACES)
def test_nine_pairs_share_one_loss_per_space(loss):
    """An x-prediction x̂ re-expressed as ε̂ or v̂ gets the same loss in each space, equal to the
    footnote-4 weight times ‖x̂ − x‖² (t away from the clamps)."""
    x, eps, t = draws(3)
    x_hat = x + 0.1 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(9), dtype=x.dtype)
    z = interpolate(x, eps, t)
    mse_x = (x_hat - x).pow(2).mean(dim=(1, 2, 3))
    footnote_4 = {"x": torch.ones_like(t), "eps": t**2 / (1 - t) ** 2, "v": 1 / (1 - t) ** 2}
    torch.testing.assert_close(loss_weight_in_x(loss, t), footnote_4[loss])
    expected = footnote_4[loss] * mse_x  # written out, not the helper under test
    for pred in PREDICTIONS:
        u = convert(x_hat, "x", pred, z, t)
        denoiser = lambda z_, t_, y_, u=u: u  # noqa: B023
        cfg = ObjectiveConfig(prediction=pred, loss=loss)
        got = flow_matching_loss_at(denoiser, x, eps, t, None, cfg)
        torch.testing.assert_close(got, expected, msg=f"{pred}-pred / {loss}-loss")
    # the weights differ between spaces, so the test can tell them apart
    assert len({round(float(loss_weight_in_x(s, t)[0]), 6) for s in LOSS_SPACES}) == 3


def test_authors_x_pred_v_loss_formula_without_network(reference):
    ref = reference["loss"]
    x, noise, t, t_eps = ref["x"], ref["noise"], ref["t"], ref["t_eps"]
    out = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    got = flow_matching_loss_at(lambda *a: out, x, noise, t, ref["y"], ObjectiveConfig(t_eps=t_eps))
    tt = t.view(-1, 1, 1, 1)  # Alg. 1, written out
    z = tt * x + (1 - tt) * noise
    v = (x - z) / (1 - tt).clamp_min(t_eps)
    v_pred = (out - z) / (1 - tt).clamp_min(t_eps)
    expected = ((v - v_pred) ** 2).mean(dim=(1, 2, 3))
    assert rel_err(got, expected) < 1e-6
    assert 0.999 in [round(float(v), 3) for v in t]  # the clamp is exercised


def test_loss_parity_with_reference(reference):
    ref = reference["loss"]
    net = pixeljit.load_reference(
        reference["checkpoint"], weights="model", attention="fp32", in_context_start=2
    )
    with torch.no_grad():
        per_sample = flow_matching_loss_at(
            net, ref["x"], ref["noise"], ref["t"], ref["y"], ObjectiveConfig(t_eps=ref["t_eps"])
        )
    assert per_sample.shape == (ref["x"].shape[0],)
    assert rel_err(per_sample.mean(), ref["loss"]) <= PARITY_REL_ERR


# ------------------------------------------------------------------------ pre-conditioners


def test_preconditioner_coefficients_match_tab10():
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    sd = 0.5
    sigma = (1 - t) / t
    c_skip, c_out = preconditioner_coefficients("edm", t)
    torch.testing.assert_close(c_skip, (1 / t) * sd**2 / (sd**2 + sigma**2))
    torch.testing.assert_close(c_out, sd * sigma / torch.sqrt(sd**2 + sigma**2))
    c_skip, c_out = preconditioner_coefficients("linear", t)
    torch.testing.assert_close(c_skip, t)
    torch.testing.assert_close(c_out, 1 - t)
    c_skip, c_out = preconditioner_coefficients("none", t)
    assert (c_skip == 0).all() and (c_out == 1).all()
    # finite at the ends: x̂ → F at t = 0 (c_skip 0, c_out σd), x̂ = z at t = 1
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    c_skip, c_out = preconditioner_coefficients("edm", ends)
    torch.testing.assert_close(c_skip, torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(c_out, torch.tensor([sd, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("noise_scale", [1.0, 2.0])
def test_edm_target_has_unit_variance(noise_scale):
    """EDM's design rule: for data of std σd the network's target (x − c_skip z)/c_out has unit
    variance at every t (here in closed form)."""
    sd = 0.5
    t = torch.linspace(0.01, 0.99, 25, dtype=torch.float64)
    c_skip, c_out = preconditioner_coefficients("edm", t, noise_scale=noise_scale)
    var = ((1 - c_skip * t) ** 2 * sd**2 + (c_skip * (1 - t)) ** 2 * noise_scale**2) / c_out**2
    torch.testing.assert_close(var, torch.ones_like(var))


def test_preconditioned_network_output():
    x, eps, t = draws(5)
    z = interpolate(x, eps, t)
    raw = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    tt = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(precondition(raw, z, t, "linear"), tt * z + (1 - tt) * raw)
    torch.testing.assert_close(precondition(raw, z, t, "none"), raw)
    # a network that outputs EDM's target exactly gives x̂ = x, hence zero loss
    c_skip, c_out = (c.view(-1, 1, 1, 1) for c in preconditioner_coefficients("edm", t))
    target = (x - c_skip * z) / c_out
    cfg = ObjectiveConfig(preconditioner="edm", noise_scale=1.0)
    loss = flow_matching_loss_at(lambda *a: target, x, eps, t, None, cfg)
    assert float(loss.max()) < 1e-20
    with pytest.raises(ValueError, match="x-prediction"):
        ObjectiveConfig(prediction="v", preconditioner="edm")


# ------------------------------------------------------------------------ t and labels


def test_logit_normal_statistics():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    t = sample_t(n, "logit_normal", -0.8, 0.8, generator=g)
    assert t.shape == (n,) and t.dtype == torch.float32
    s = torch.log(t / (1 - t)).double()
    assert abs(float(s.mean()) + 0.8) < 0.01
    assert abs(float(s.std()) - 0.8) < 0.01
    # P(t < 0.5) = Φ(0.8 / 0.8)
    phi = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    assert abs(float((t < 0.5).double().mean()) - phi) < 0.005
    # reproducible from the generator
    again = sample_t(n, "logit_normal", generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)


def test_uniform_t_statistics():
    t = sample_t(200_000, "uniform", generator=torch.Generator().manual_seed(1))
    assert 0 <= float(t.min()) and float(t.max()) < 1
    assert abs(float(t.double().mean()) - 0.5) < 0.005
    assert abs(float(t.double().var()) - 1 / 12) < 0.002
    with pytest.raises(ValueError, match="t_sampler"):
        sample_t(4, "cosine")


def test_label_drop_rate():
    y = torch.randint(0, 10, (100_000,), generator=torch.Generator().manual_seed(0))
    out = drop_labels(y, 10, 0.1, generator=torch.Generator().manual_seed(1))
    dropped = out == 10
    assert abs(float(dropped.double().mean()) - 0.1) < 0.005
    assert torch.equal(out[~dropped], y[~dropped])
    assert drop_labels(None, 0, 0.1) is None
    assert torch.equal(drop_labels(y, 0, 0.1), y)  # unconditional: no-op
    assert torch.equal(drop_labels(y, 10, 0.0), y)


def test_training_draw_uses_paper_noise_scale():
    """flow_matching_loss draws ε ~ N(0, s²) with s = image_size / 256 (here 512 → 2)."""
    seen = {}

    def spy(z, t, y):
        seen["z"], seen["t"], seen["y"] = z, t, y
        return torch.zeros_like(z)

    x = torch.zeros(64, 1, 2, 512)  # the scale follows the image width (last dimension)
    y = torch.arange(64) % 10
    losses, t = flow_matching_loss(
        spy, x, y, ObjectiveConfig(), num_classes=10, generator=torch.Generator().manual_seed(0)
    )
    assert losses.shape == (64,) and torch.equal(t, seen["t"])
    eps = seen["z"] / (1 - t.view(-1, 1, 1, 1))  # x = 0
    assert abs(float(eps.std()) - 2.0) < 0.01  # s = 512 / 256
    assert [default_noise_scale(n) for n in (256, 512, 1024)] == [1.0, 2.0, 4.0]
    assert ((seen["y"] == 10) | (seen["y"] == y)).all()
    # zero network output on x = 0 has zero x-error: the v-loss is exactly 0
    assert float(losses.abs().max()) == 0.0


def test_flow_matching_loss_draws_t_from_its_config():
    """The training draw's t follows the config's sampler and its μ, σ (an ablation of
    `objective.p_mean` must train at that μ, not the default -0.8)."""

    def t_seen(config: ObjectiveConfig) -> torch.Tensor:
        x = torch.zeros(20_000, 1, 2, 2)
        _, t = flow_matching_loss(lambda z, t, y: torch.zeros_like(z), x, None, config,
                                  generator=torch.Generator().manual_seed(3))  # fmt: skip
        return t.double()

    logit = t_seen(ObjectiveConfig(p_mean=0.7, p_std=0.3)).logit()
    assert abs(float(logit.mean()) - 0.7) < 0.02 and abs(float(logit.std()) - 0.3) < 0.02
    uniform = t_seen(ObjectiveConfig(t_sampler="uniform"))
    assert abs(float(uniform.mean()) - 0.5) < 0.01 and abs(float(uniform.var()) - 1 / 12) < 0.005


def test_bucket_losses():
    t = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.74, 0.75, 1.0])
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    sums, counts = bucket_losses(loss, t, 4)
    torch.testing.assert_close(sums, torch.tensor([3.0, 3.0, 9.0, 13.0]))
    torch.testing.assert_close(counts, torch.tensor([2.0, 1.0, 2.0, 2.0]))
    with pytest.raises(ValueError, match="num_buckets"):
        bucket_losses(loss, t, 0)


def test_objective_config_validation():
    with pytest.raises(ValueError, match="prediction"):
        ObjectiveConfig(prediction="score")
    with pytest.raises(ValueError, match="loss"):
        ObjectiveConfig(loss="l1")
    with pytest.raises(ValueError, match="t_eps"):
        ObjectiveConfig(t_eps=0.0)
    with pytest.raises(ValueError, match="label_drop"):
        ObjectiveConfig(label_drop=1.5)
    assert ObjectiveConfig().resolved_noise_scale(512) == 2.0
    assert ObjectiveConfig(noise_scale=1.0).resolved_noise_scale(512) == 1.0


def test_the_label_drop_takes_the_networks_class_count():
    """`flow_matching_loss(net, x, y)` (the README's call) never dropped a label: num_classes
    defaulted to 0, so the null label guidance needs was never trained."""
    from pixeljit.model import JiTConfig

    config = JiTConfig(image_size=8, patch_size=4, hidden_size=16, depth=1, num_heads=2,
                       num_classes=3, bottleneck_dim=None, in_context_len=0)  # fmt: skip
    net = pixeljit.JiT(config)
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(args[2].clone()))
    x, y = torch.zeros(256, 3, 8, 8), torch.zeros(256, dtype=torch.int64)
    objective = ObjectiveConfig(label_drop=0.5)
    flow_matching_loss(net, x, y, objective, generator=torch.Generator().manual_seed(0))
    dropped = float((seen[0] == config.num_classes).double().mean())
    assert set(seen[0].tolist()) == {0, 3} and 0.35 < dropped < 0.65
    with pytest.raises(ValueError, match="num_classes=10, but the network has 3 classes"):
        flow_matching_loss(net, x, y, objective, num_classes=10)
    with pytest.raises(ValueError, match="without a config: pass num_classes="):
        flow_matching_loss(lambda z, t, y: z, x, y, objective)
    losses, _ = flow_matching_loss(lambda z, t, y: z, x, None, objective)  # no labels, no count
    assert losses.shape == (256,)


def test_preconditioned_network_output_at_noise_scale_two():
    """Training pre-conditions with the configured noise scale s: a network that outputs EDM's
    target at s = 2 (c_skip, c_out of σd²t² + s²(1−t)², not of s = 1) gives x̂ = x, hence zero
    loss, while the same output read at s = 1 does not."""
    x, eps, t = draws(5)
    eps = 2.0 * eps  # ε ~ N(0, s²I) at s = 2
    z = interpolate(x, eps, t)
    c_skip, c_out = (c.view(-1, 1, 1, 1) for c in preconditioner_coefficients("edm", t, 2.0))
    target = (x - c_skip * z) / c_out
    torch.testing.assert_close(precondition(target, z, t, "edm", 2.0), x)
    cfg = ObjectiveConfig(preconditioner="edm", noise_scale=2.0)
    loss = flow_matching_loss_at(lambda *a: target, x, eps, t, None, cfg)
    assert float(loss.max()) < 1e-20
    at_one = ObjectiveConfig(preconditioner="edm", noise_scale=1.0)
    assert float(flow_matching_loss_at(lambda *a: target, x, eps, t, None, at_one).min()) > 1e-3


def test_all_four_clamped_conversions_at_the_end_points():
    """At t = 0 and t = 1 each of the four maps that divide uses its clamp, written out:
    x→ε and x→v divide by max(1−t, t_eps), ε→x and ε→v by max(t, t_min)."""
    x, eps, _ = draws(7)
    u = x[:2] + 0.3 * eps[:2]  # any value: the maps are applied to a prediction
    z = interpolate(x[:2], eps[:2], torch.tensor([0.0, 1.0], dtype=torch.float64))
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    t_eps, t_min = 0.05, 0.2
    one_minus = torch.tensor([1.0, t_eps], dtype=torch.float64).view(-1, 1, 1, 1)  # max(1−t, ·)
    t_safe = torch.tensor([t_min, 1.0], dtype=torch.float64).view(-1, 1, 1, 1)  # max(t, ·)
    tt = t.view(-1, 1, 1, 1)
    want = {
        ("x", "eps"): (z - tt * u) / one_minus,
        ("x", "v"): (u - z) / one_minus,
        ("eps", "x"): (z - (1 - tt) * u) / t_safe,
        ("eps", "v"): (z - u) / t_safe,
    }
    for (src, dst), value in want.items():
        got = convert(u, src, dst, z, t, t_eps=t_eps, t_min=t_min)
        torch.testing.assert_close(got, value, rtol=1e-14, atol=0, msg=f"{src} -> {dst}")


def test_loss_converts_the_prediction_with_the_configured_t_min():
    """ε-prediction with x-loss divides prediction and target by the same max(t, t_min): the
    loss is ((1−t)(ε − ε̂)/max(t, t_min))², written out here at t = 0 with t_min = 0.1."""
    x, eps, _ = draws(8)
    t = torch.tensor([0.0, 0.0, 0.05, 0.5, 1.0], dtype=torch.float64)
    eps_hat = eps + 0.1 * x
    cfg = ObjectiveConfig(prediction="eps", loss="x", t_min=0.1)
    got = flow_matching_loss_at(lambda *a: eps_hat, x, eps, t, None, cfg)
    tt = t.view(-1, 1, 1, 1)
    expected = ((1 - tt) * (eps - eps_hat) / tt.clamp_min(0.1)).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    assert float(expected[0]) > 0.1  # t = 0 weighs (1/t_min)² = 100, not (1/1e-3)²
