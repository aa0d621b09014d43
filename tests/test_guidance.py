"""The CFG-interval field against its definition, and the batch shapes it gives the network.

Definition (§5c, the authors' sampler): v̂ = v_u + w·(v_c − v_u) for rows with t in the open
interval (low, high) (low = 0: no lower bound), v̂ = v_c elsewhere, where v_c / v_u are the
velocities of the conditional / null-label predictions. The network must see two batch shapes at
most (N outside the interval, 2N inside), so a compiled network or a CUDA graph is built twice.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from pixeljit.diffusion.guidance import GuidedField
from pixeljit.diffusion.objective import to_velocity
from pixeljit.diffusion.sampler import sample
from pixeljit.diffusion.solvers import evaluations, time_grid

F64 = torch.float64
CLASSES = 4
SHAPE = (2, 3, 3)
T_EPS = 0.05


class ClassNet(nn.Module):
    """A parameter-free x-predictor that depends on z, t and the label (the null label too), so
    conditional and unconditional rows differ; records the batch size of every call."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.means = torch.randn(CLASSES + 1, *SHAPE, generator=g, dtype=F64)
        self.config = SimpleNamespace(num_classes=CLASSES, in_channels=2, image_size=3)
        self.calls: list[int] = []

    def forward(self, z, t, y):
        self.calls.append(z.shape[0])
        tt = t.view(-1, 1, 1, 1).to(z.dtype)
        return tt * z + (1 - tt) * self.means[y].to(z.dtype) + 0.1 * torch.sin(3 * z)


def definition(net: ClassNet, z, t_rows, y, w, interval):
    """Row by row: the conditional and the null-label velocity from separate network calls,
    guided only where low < t < high (t compared in float32, low = 0 meaning no lower bound)."""
    low, high = interval
    rows = []
    for i in range(z.shape[0]):
        zi, ti = z[i : i + 1], t_rows[i : i + 1].to(z.dtype)
        v_c = to_velocity(net(zi, ti, y[i : i + 1]), "x", zi, ti, T_EPS)
        t32 = t_rows[i].to(torch.float32)  # compared with the bounds in float32, as the authors
        if bool(t32 < high) and (low == 0 or bool(t32 > low)):
            v_u = to_velocity(net(zi, ti, torch.tensor([CLASSES])), "x", zi, ti, T_EPS)
            rows.append(v_u + w * (v_c - v_u))
        else:
            rows.append(v_c)
    return torch.cat(rows)


def field(net, y, w=2.5, interval=(0.1, 0.9)):
    return GuidedField(net, y, cfg=w, interval=interval, null_label=CLASSES, t_eps=T_EPS)


def batch(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g, dtype=F64), torch.arange(n) % CLASSES


@pytest.mark.parametrize("t, guided", [(0.5, True), (0.05, False), (0.1, False), (0.9, False)])
def test_one_time_for_the_batch_equals_the_definition(t, guided):
    z, y = batch()
    net = ClassNet()
    got = field(net, y).velocity(z, torch.tensor(t, dtype=torch.float32))
    assert net.calls == [2 * 5 if guided else 5]  # one forward: [cond; uncond] or cond alone
    want = definition(ClassNet(), z, torch.full((5,), t, dtype=torch.float32), y, 2.5, (0.1, 0.9))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if not guided:  # outside the interval the field is the conditional velocity, bit for bit
        t_dev = torch.full((5,), t, dtype=torch.float32).to(F64)  # the field's float32 time
        assert torch.equal(got, to_velocity(ClassNet()(z, t_dev, y), "x", z, t_dev, T_EPS))


def test_per_row_times_use_the_fixed_shape_and_equal_the_definition():
    z, y = batch(6, seed=2)
    t = torch.tensor([0.0, 0.05, 0.1, 0.3, 0.7, 1.0], dtype=torch.float32)
    net = ClassNet()
    got = field(net, y, w=3.0, interval=(0.1, 1.0)).velocity(z, t)
    assert net.calls == [12]  # 2N rows although only two rows lie inside (0.1, 1)
    want = definition(ClassNet(), z, t, y, 3.0, (0.1, 1.0))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    outside = [0, 1, 2, 5]
    t_dev = t.to(F64)
    v_c = to_velocity(ClassNet()(z, t_dev, y), "x", z, t_dev, T_EPS)
    assert torch.equal(got[outside], v_c[outside])  # unguided rows are v_c exactly
    assert not torch.allclose(got[3:5], v_c[3:5])  # guided rows are not


def test_low_zero_means_no_lower_bound():
    z, y = batch(3, seed=3)
    net = ClassNet()
    t = torch.zeros(3, dtype=torch.float32)
    got = field(net, y, interval=(0.0, 0.5)).velocity(z, t)
    assert net.calls == [6]
    torch.testing.assert_close(got, definition(ClassNet(), z, t, y, 2.5, (0.0, 0.5)))


def test_no_guidance_never_runs_unconditional_rows():
    z, y = batch(4, seed=4)
    net = ClassNet()
    f = field(net, y, w=1.0, interval=(0.0, 1.0))
    f.velocity(z, torch.tensor(0.5))
    f.velocity(z, torch.tensor([0.2, 0.4, 0.6, 0.8]))
    assert net.calls == [4, 4]


def test_heun_50_with_the_paper_interval_runs_187_rows_per_image_at_two_shapes():
    """The issue's count: Heun-50 is 99 evaluations; 88 of them have t in (0.1, 1) (float32
    0.1 itself is outside), so 99 + 88 = 187 rows per image, at batch shapes N and 2N only."""
    net = ClassNet()
    n = 3
    z, y = batch(n, seed=5)
    sample(net, y, noise=z, steps=50, method="heun", cfg=2.9, interval=(0.1, 1.0))
    assert set(net.calls) == {n, 2 * n}
    assert len(net.calls) == evaluations("heun", 50) == 99
    assert sum(net.calls) == 187 * n
    grid = time_grid(50)
    heun_times = [*grid[:49], *grid[1:50], grid[49]]  # first stages, second stages, final Euler
    inside = sum(0.1 < float(t) < 1.0 for t in heun_times)
    assert inside == 88 and net.calls.count(2 * n) == inside


@pytest.mark.parametrize("method", ["euler", "dpm++2m"])
def test_other_solvers_see_two_shapes_at_most(method):
    net = ClassNet()
    z, y = batch(2, seed=6)
    sample(net, y, noise=z, steps=12, method=method, cfg=2.0, interval=(0.3, 0.8))
    assert set(net.calls) == {2, 4}


def test_denoised_undoes_the_clamped_velocity_of_an_x_prediction():
    """For x-prediction v̂ = (x̂ − z)/max(1−t, t_eps), so x̂ = z + max(1−t, t_eps)·v̂ recovers the
    network's x̂ at every t, beyond the clamp too (t = 0.98: 1 − t = 0.02 < t_eps = 0.05): with
    cfg = 1 `denoised` must be the network's x̂, for one time or per-row times (to float32
    round-off: the field forms d(t) from the float32 host time)."""
    z, y = batch(3, seed=7)
    f = field(ClassNet(), y, w=1.0, interval=(0.0, 1.0))
    for t in (torch.tensor(0.98), torch.tensor([0.3, 0.98, 0.999])):
        t_rows = (t.expand(3) if t.ndim == 0 else t).to(F64)
        x_hat = ClassNet()(z, t_rows, y)
        torch.testing.assert_close(f.denoised(z, t), x_hat, rtol=1e-7, atol=1e-7)
