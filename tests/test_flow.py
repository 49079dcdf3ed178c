"""flow.py against the equations, diffusers' scheduler and a distribution with a known velocity field."""

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler

from flashdit import flow


def test_interpolant_endpoints_and_velocity_is_its_derivative():
    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    torch.testing.assert_close(flow.interpolate(x1, x0, torch.zeros(4)), x0)
    torch.testing.assert_close(flow.interpolate(x1, x0, torch.ones(4)), x1)
    t, h = torch.tensor([0.1, 0.4, 0.5, 0.9], dtype=torch.float64), 1e-6
    x1, x0 = x1.double(), x0.double()
    fd = (flow.interpolate(x1, x0, t + h) - flow.interpolate(x1, x0, t - h)) / (2 * h)
    torch.testing.assert_close(fd, flow.velocity_target(x1, x0))


def test_time_sampling_distributions():
    g = torch.Generator().manual_seed(0)
    u = flow.sample_t(50_000, "uniform", generator=g)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    t = flow.sample_t(50_000, "logit_normal", mean=0.5, std=0.8, generator=g)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean() - 0.5) < 0.02 and abs(logit.std() - 0.8) < 0.02
    with pytest.raises(ValueError, match="uniform"):
        flow.sample_t(4, "beta")


def test_loss_is_mse_plus_channel_cosine_per_sample():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 4, 2, 5, generator=g), torch.randn(3, 4, 2, 5, generator=g)
    loss, terms = flow.flow_loss(pred, target, cosine_weight=0.5)
    mse = ((pred - target) ** 2).flatten(1).mean(1)
    cos = torch.zeros(3)
    for b in range(3):  # cosine over the channel vector at each position
        for i in range(2):
            for j in range(5):
                p, q = pred[b, :, i, j], target[b, :, i, j]
                cos[b] += 1 - (p @ q) / (p.norm() * q.norm())
    cos /= 10
    torch.testing.assert_close(terms["mse"], mse)
    torch.testing.assert_close(terms["cos"], cos)
    torch.testing.assert_close(loss, mse + 0.5 * cos)
    zero, _ = flow.flow_loss(target, target, cosine_weight=1.0)
    torch.testing.assert_close(zero, torch.zeros(3), atol=1e-6, rtol=0)
    assert flow.flow_loss(pred, target)[0].shape == (3,)


@pytest.mark.parametrize("s", [0.3, 1.0, 3.0])
def test_shift_matches_diffusers_scheduler_with_inverse_shift(s):
    """LightningDiT's t-shift s is diffusers' sigma-shift 1/s on sigma = 1 - t."""
    grid = flow.time_grid(10, 1.0)
    sched = FlowMatchEulerDiscreteScheduler(shift=1 / s)
    sched.set_timesteps(sigmas=(1 - grid[:-1]).tolist())
    torch.testing.assert_close(1 - sched.sigmas, flow.time_grid(10, s), atol=1e-6, rtol=0)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(flow.shift_time(t, s), s * t / (1 + (s - 1) * t))
    assert flow.shift_time(0.5, 0.3) < 0.5  # s < 1 spends more steps near the noise


def test_euler_step_equals_scheduler_step():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 4, 6, 6, generator=g)
    times = flow.time_grid(5, 0.3)
    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(sigmas=(1 - times[:-1]).tolist())
    ours, theirs = x, x
    for i in range(5):
        ours = flow.euler_step(lambda z, t: v, ours, float(times[i]), float(times[i + 1]))
        theirs = sched.step(-v, sched.timesteps[i], theirs).prev_sample
        torch.testing.assert_close(ours, theirs)


class Recorder:
    """A fake conditional model v = x·(1 + label) that logs its batch sizes."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, y):
        self.batches.append(x.shape[0])
        return x * (1 + y.view(-1, 1, 1, 1).float())


def test_guidance_formula_interval_and_channels():
    x, t, y = torch.randn(2, 4, 3, 3), torch.full((2,), 0.5), torch.tensor([1, 2])
    null = 9
    cond, uncond = x * (1 + y.view(-1, 1, 1, 1)), x * 10
    rec = Recorder()
    torch.testing.assert_close(flow.Guidance(1.0).velocity(rec, x, t, y, null), cond)
    assert rec.batches == [2]  # scale 1: no doubled batch
    rec = Recorder()
    torch.testing.assert_close(flow.Guidance(4.0).velocity(rec, x, t, y, null), uncond + 4 * (cond - uncond))
    assert rec.batches == [4]
    g = flow.Guidance(4.0, interval=(0.11, 0.6))
    assert not g.active(0.1) and g.active(0.11) and g.active(0.6) and not g.active(0.61)
    rec = Recorder()
    torch.testing.assert_close(g.velocity(rec, x, torch.full((2,), 0.05), y, null), cond)
    assert rec.batches == [2]  # outside the interval: conditional only, batch not doubled
    out = flow.Guidance(4.0, channels=3).velocity(Recorder(), x, t, y, null)
    torch.testing.assert_close(out[:, :3], (uncond + 4 * (cond - uncond))[:, :3])
    torch.testing.assert_close(out[:, 3:], cond[:, 3:])
    with pytest.raises(ValueError, match="guidance_interval"):
        flow.Guidance(2.0, interval=(0.5, 0.2))


@pytest.mark.parametrize("sampler,order", [("euler", 1), ("heun", 2)])
def test_convergence_order_on_known_ode(sampler, order):
    """dx/dt = t·x has x(1) = x(0)·exp(1/2); halving the step divides the error by 2^order."""
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    exact = x0 * math.exp(0.5)
    v = lambda x, t: t.view(-1, 1).double() * x  # noqa: E731
    errors = []
    for n in (8, 16, 32):
        grid = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        errors.append((flow.sample(v, x0, grid, sampler) - exact).abs().max().item())
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(abs(r - 2**order) < 0.3 * 2**order for r in ratios), ratios


def test_heun_ends_with_an_euler_step_and_never_asks_for_the_velocity_at_data():
    """EDM / diffusers' FlowMatchHeunDiscreteScheduler: the step into t=1 is first-order, so a trained network is
    never evaluated at clean data (where it has no noise left to remove); every other step is Heun's trapezoid."""
    calls = []

    def v(x, t):
        calls.append(float(t[0]))
        return torch.sin(3 * x) + t.view(-1, 1).double()

    x0 = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    grid = flow.time_grid(4, shift=0.5).double()
    out = flow.sample(v, x0, grid, "heun")
    ts = grid.tolist()
    assert calls == pytest.approx([ts[0], ts[1], ts[1], ts[2], ts[2], ts[3], ts[3]])  # 2·4 - 1 calls, none at t=1
    assert max(calls) < 1.0

    def field(x, t):
        return torch.sin(3 * x) + t

    ref = x0.clone()
    for i in range(3):  # written out: trapezoid on an Euler predictor
        h = ts[i + 1] - ts[i]
        pred = ref + h * field(ref, ts[i])
        ref = ref + h / 2 * (field(ref, ts[i]) + field(pred, ts[i + 1]))
    ref = ref + (ts[4] - ts[3]) * field(ref, ts[3])
    torch.testing.assert_close(out, ref)


class GaussianMixture:
    """Data ~ sum_k pi_k N(mu_k, s_k² I) in d dims; noise N(0, I); the exact flow velocity."""

    def __init__(self):
        self.mu = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]], dtype=torch.float64)
        self.s = torch.tensor([0.3, 0.6, 0.4], dtype=torch.float64)
        self.pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)

    def velocity(self, x, t, components=None):
        """E[x1 - x0 | x_t = x]; ``components`` (B,) restricts each sample to one component."""
        t = t.view(-1, 1, 1).double()
        x = x.double()[:, None, :]  # (B, 1, d)
        mu, s2 = self.mu[None], self.s[None, :, None] ** 2  # (1, K, d), (1, K, 1)
        var = t**2 * s2 + (1 - t) ** 2
        resid = x - t * mu
        v_k = mu + (t * s2 - (1 - t)) / var * resid  # E[x1|k] - E[x0|k]
        logw = (
            torch.log(self.pi)[None]
            - 0.5 * (resid**2).sum(-1) / var[..., 0]
            - x.shape[-1] / 2 * torch.log(var[..., 0])
        )
        if components is not None:
            logw = torch.where(F.one_hot(components, 3).bool(), 0.0, -math.inf)
        w = logw.softmax(dim=1)[..., None]
        return (w * v_k).sum(1)

    def moments(self):
        mean = (self.pi[:, None] * self.mu).sum(0)
        second = sum(
            p * (torch.outer(m, m) + s**2 * torch.eye(2, dtype=torch.float64))
            for p, m, s in zip(self.pi, self.mu, self.s)
        )
        return mean, second - torch.outer(mean, mean)


@pytest.mark.parametrize("sampler,steps,tol", [("euler", 100, 0.06), ("heun", 30, 0.05), ("sde", 200, 0.08)])
def test_samplers_reproduce_gaussian_mixture_moments(sampler, steps, tol):
    gmm = GaussianMixture()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    out = flow.sample(lambda z, t: gmm.velocity(z, t), x, flow.time_grid(steps).double(), sampler, generator=g)
    mean, cov = gmm.moments()
    torch.testing.assert_close(out.mean(0), mean, atol=tol, rtol=0)
    torch.testing.assert_close(torch.cov(out.T), cov, atol=2 * tol, rtol=0)
    # the modes are right too: each point lands near one component
    nearest = torch.cdist(out, gmm.mu).argmin(1)
    frac = torch.bincount(nearest, minlength=3).double() / len(out)
    torch.testing.assert_close(frac, gmm.pi, atol=0.03, rtol=0)


def test_cosine_term_on_one_channel_is_refused():
    # over one channel the cosine is sign(p)·sign(q): a constant almost everywhere, so zero gradient
    p = torch.randn(2, 1, 4, 4, requires_grad=True)
    q = torch.randn(2, 1, 4, 4)
    cos = 1 - torch.nn.functional.cosine_similarity(p, q, dim=1)
    cos.sum().backward()
    assert p.grad.abs().max() < 1e-6
    with pytest.raises(ValueError, match="cosine_weight=1.0 on a 1-channel target"):
        flow.flow_loss(p, q, cosine_weight=1.0)
    loss, terms = flow.flow_loss(p, q, cosine_weight=0.0)
    torch.testing.assert_close(loss, ((p - q) ** 2).flatten(1).mean(1))
    assert "cos" not in terms
