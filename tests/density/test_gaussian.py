"""Gaussian densities: NLL against scipy, training, recovery of a known conditional law, numerical safety."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from nnscreener.density.gaussian import (ConditionalGaussian, MarginalGaussian, diagonal_gaussian_nll,
                                         floored_log_variance)


def _voxels(values: np.ndarray) -> np.ndarray:
    """(B, D, Z, Y, X) -> (B*Z*Y*X, D) rows in the flattened (B, 1, Z, Y, X) order."""
    return np.moveaxis(values, 1, -1).reshape(-1, values.shape[1])


def test_diagonal_gaussian_nll_equals_scipy_logpdf():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(2, 4, 3, 2, 2))
    mean = rng.normal(size=(2, 4, 3, 2, 2))
    log_var = rng.normal(size=(2, 4, 3, 2, 2))
    nll = diagonal_gaussian_nll(torch.from_numpy(y), torch.from_numpy(mean), torch.from_numpy(log_var))
    assert nll.shape == (2, 1, 3, 2, 2)
    expected = [-multivariate_normal(m, np.diag(np.exp(lv))).logpdf(v)
                for v, m, lv in zip(_voxels(y), _voxels(mean), _voxels(log_var))]
    np.testing.assert_allclose(nll.numpy().reshape(-1), expected, rtol=1e-10)


def test_marginal_gaussian_nll_equals_scipy_logpdf():
    torch.manual_seed(0)
    model = MarginalGaussian(5).double()
    with torch.no_grad():
        model.mean.copy_(torch.randn(5))
        model.raw_log_var.copy_(torch.randn(5))
    y = torch.randn(2, 5, 2, 3, 2, dtype=torch.float64)
    var = model.log_variance().exp().detach().numpy()
    expected = -multivariate_normal(model.mean.detach().numpy(), np.diag(var)).logpdf(_voxels(y.numpy()))
    np.testing.assert_allclose(model.nll(y).detach().numpy().reshape(-1), expected, rtol=1e-10)


def test_log_variance_floor():
    raw = torch.tensor([-1e4, -50.0, -9.0, 0.0, 3.0])
    floored = floored_log_variance(raw, -9.0)
    assert torch.isfinite(floored).all() and floored.min() >= -9.0
    torch.testing.assert_close(floored[:2], torch.full((2,), -9.0))  # far below the floor: at the floor
    torch.testing.assert_close(floored[3:], raw[3:], atol=2e-4, rtol=0)  # no effect far above the floor
    assert abs(float(floored_log_variance(torch.tensor(0.0), -9.0))) < 2e-4  # raw 0 starts near unit variance


def test_marginal_gaussian_learns_mean_and_variance_and_lowers_held_out_nll():
    gen = torch.Generator().manual_seed(0)
    true_mean, true_std = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.2, 1.5, 3.0])

    def draw(n):
        return (torch.randn(n, 3, 1, 1, 1, generator=gen) * true_std.view(1, 3, 1, 1, 1)
                + true_mean.view(1, 3, 1, 1, 1))

    train, held_out = draw(4096), draw(2048)
    model = MarginalGaussian(3)
    before = float(model.nll(held_out).mean().detach())
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-2)
    for _ in range(400):
        loss = model.nll(train).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = float(model.nll(held_out).mean().detach())
    entropy = float(sum(0.5 * math.log(2 * math.pi * math.e * s ** 2) for s in true_std))
    assert after < before - 1.0
    assert abs(after - entropy) < 0.1
    torch.testing.assert_close(model.mean.detach(), true_mean, atol=0.1, rtol=0)
    torch.testing.assert_close(model.log_variance().detach().exp().sqrt(), true_std, atol=0.1, rtol=0.05)


def test_conditional_gaussian_recovers_a_known_conditional_mean_and_variance():
    """y | c ~ N(mu(c), sigma(c)^2) with mu = (2 c1 - c2, 0.5 - c1), log sigma^2 = (c2 - 1, 0.8 c1 - 2)."""
    gen = torch.Generator().manual_seed(0)

    def law(c):
        c1, c2 = c[:, :1], c[:, 1:2]
        return torch.cat([2 * c1 - c2, 0.5 - c1], 1), torch.cat([c2 - 1.0, 0.8 * c1 - 2.0], 1)

    def draw(b):
        c = torch.randn(b, 2, 6, 6, 6, generator=gen)
        mean, log_var = law(c)
        return mean + torch.randn(mean.shape, generator=gen) * (0.5 * log_var).exp(), c

    torch.manual_seed(0)
    model = ConditionalGaussian(2, 2, hidden=16, min_log_var=-9.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    y_test, c_test = draw(4)
    before = float(model.nll(y_test, c_test).mean().detach())
    steps = 500
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        y, c = draw(8)
        loss = model.nll(y, c).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        mean, log_var = model.mean_and_log_variance(c_test)
        true_mean, true_log_var = law(c_test)
        inner = (slice(None), slice(None), slice(1, -1), slice(1, -1), slice(1, -1))  # away from the padded border
        after = float(model.nll(y_test, c_test)[inner].mean())
        optimal = float(diagonal_gaussian_nll(y_test, true_mean, true_log_var)[inner].mean())
    print(f"conditional Gaussian held-out NLL (nats/voxel): {before:.3f} untrained, {after:.3f} trained, "
          f"{optimal:.3f} with the true law; mean error {float((mean - true_mean)[inner].abs().mean()):.3f}, "
          f"log-variance error {float((log_var - true_log_var)[inner].abs().mean()):.3f}")
    assert float((mean - true_mean)[inner].abs().mean()) < 0.06
    assert float((log_var - true_log_var)[inner].abs().mean()) < 0.1
    assert after < before - 0.5
    assert after < optimal + 0.03


@pytest.mark.parametrize("value", [1e6, -1e6, 1e30, -1e30, float("inf")])
def test_gaussian_nll_is_finite_for_extreme_inputs(value):
    torch.manual_seed(0)
    conditional = ConditionalGaussian(4, 3, hidden=8)
    torch.nn.init.normal_(conditional.predictor[-1].weight, std=0.5)
    marginal = MarginalGaussian(4)
    y = torch.full((1, 4, 3, 3, 3), value)
    c = torch.full((1, 3, 3, 3, 3), value)
    for nll in (conditional.nll(y, c), conditional.nll(y, torch.zeros_like(c)), marginal.nll(y)):
        assert torch.isfinite(nll).all()
        assert (nll > 1e3).all()  # far from the data: a large score, not a wrapped-around small one


def test_conditional_gaussian_needs_a_condition():
    with pytest.raises(ValueError, match="condition"):
        ConditionalGaussian(2, 2).nll(torch.zeros(1, 2, 1, 1, 1), None)
