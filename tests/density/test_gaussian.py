"""Gaussian densities: NLL against scipy, training, recovery of a known conditional law, numerical safety."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from nnscreener.config import cpu_config
from nnscreener.density.gaussian import (ConditionalGaussian, MarginalGaussian, diagonal_gaussian_latent_energy,
                                         diagonal_gaussian_nll, floored_log_variance, raw_log_variance_for)
from nnscreener.trainers.schedule import warmup_then_linear_decay


def _mark_initialized(model: torch.nn.Module) -> torch.nn.Module:
    """Skips the data-dependent initialisation (for models whose parameters a test sets itself)."""
    model.initialized.fill_(True)
    return model


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


def test_latent_energy_is_half_the_squared_mahalanobis_distance():
    rng = np.random.default_rng(1)
    y, mean, log_var = (rng.normal(size=(2, 4, 3, 2, 2)) for _ in range(3))
    energy = diagonal_gaussian_latent_energy(*(torch.from_numpy(a) for a in (y, mean, log_var)))
    assert energy.shape == (2, 1, 3, 2, 2)
    expected = [0.5 * (v - m) @ np.diag(np.exp(-lv)) @ (v - m)
                for v, m, lv in zip(_voxels(y), _voxels(mean), _voxels(log_var))]
    np.testing.assert_allclose(energy.numpy().reshape(-1), expected, rtol=1e-10)


def test_latent_energy_does_not_depend_on_the_spread_of_normal_data():
    """Two regions of normal data, one 100x narrower: the NLL ranks the narrow region's voxels far below the wide
    one's, the latent energy gives both the same chi-square(D)/2 law (mean D/2)."""
    gen = torch.Generator().manual_seed(0)
    d, n = 8, 20000
    log_var = torch.tensor([-2 * np.log(10.0), 0.0]).view(2, 1, 1, 1, 1).expand(2, d, n, 1, 1)
    y = torch.randn(2, d, n, 1, 1, generator=gen) * torch.exp(0.5 * log_var)
    nll = diagonal_gaussian_nll(y, torch.zeros_like(y), log_var).view(2, n)
    energy = diagonal_gaussian_latent_energy(y, torch.zeros_like(y), log_var).view(2, n)
    assert float(nll[1].median() - nll[0].median()) > 0.5 * d * 2 * np.log(10.0) * 0.99
    np.testing.assert_allclose(energy.mean(dim=1).numpy(), [d / 2, d / 2], rtol=0.03)


def test_gaussian_models_latent_energy_is_the_nll_without_the_log_volume():
    torch.manual_seed(0)
    marginal = _mark_initialized(MarginalGaussian(5).double())
    conditional = _mark_initialized(ConditionalGaussian(5, cond_dim=3, hidden=8).double())
    with torch.no_grad():
        marginal.raw_log_var.copy_(torch.randn(5))
    y, c = torch.randn(2, 5, 2, 3, 2, dtype=torch.float64), torch.randn(2, 3, 2, 3, 2, dtype=torch.float64)
    volume = 0.5 * (marginal.log_variance() + np.log(2 * np.pi)).sum()
    torch.testing.assert_close(marginal.latent_energy(y), marginal.nll(y) - volume)
    _, log_var = conditional.mean_and_log_variance(c)
    volume = 0.5 * (log_var + np.log(2 * np.pi)).sum(dim=1, keepdim=True)
    torch.testing.assert_close(conditional.latent_energy(y, c), conditional.nll(y, c) - volume)
    with pytest.raises(ValueError, match="condition map"):
        conditional.latent_energy(y, None)


def test_marginal_gaussian_nll_equals_scipy_logpdf():
    torch.manual_seed(0)
    model = _mark_initialized(MarginalGaussian(5).double())
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


def test_raw_log_variance_inverts_the_floor():
    log_var = torch.tensor([-8.9, -5.0, 0.0, 2.5, 20.0], dtype=torch.float64)
    torch.testing.assert_close(floored_log_variance(raw_log_variance_for(log_var, -9.0), -9.0), log_var)


def _train_with_cpu_preset_schedule(model: torch.nn.Module, draw, generator: torch.Generator) -> None:
    """AdamW with the cpu preset's density settings (lr, eps, weight decay, warm-up, steps), as the trainer."""
    d = cpu_config().density
    optimizer = torch.optim.AdamW(model.parameters(), lr=d.learning_rate, weight_decay=d.weight_decay,
                                  eps=d.adam_eps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_then_linear_decay(d.warmup_iterations,
                                                                                     d.num_iterations))
    for _ in range(d.num_iterations):
        loss = model.nll(draw(d.batch_size, generator)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()


def test_marginal_gaussian_reaches_the_closed_form_fit_within_the_cpu_schedule():
    """32-d features with known means and scales far from N(0, I): held-out NLL within 2% of the optimum."""
    gen = torch.Generator().manual_seed(0)
    true_mean = 2.0 * torch.randn(32, generator=gen)
    true_std = torch.empty(32).uniform_(0.05, 2.0, generator=gen)

    def draw(b, g):
        return torch.randn(b, 32, 8, 8, 8, generator=g) * true_std.view(1, -1, 1, 1, 1) + true_mean.view(1, -1, 1, 1, 1)

    held_out = draw(4, torch.Generator().manual_seed(1))
    optimum = float(diagonal_gaussian_nll(held_out, true_mean.view(1, -1, 1, 1, 1),
                                          (2 * true_std.log()).view(1, -1, 1, 1, 1)).mean())
    model = MarginalGaussian(32)
    _train_with_cpu_preset_schedule(model, draw, gen)
    trained = float(model.nll(held_out).mean().detach())
    not_data_initialised = _mark_initialized(MarginalGaussian(32))  # the schedule from N(0, I), as before the fix
    _train_with_cpu_preset_schedule(not_data_initialised, draw, gen)
    from_standard_normal = float(not_data_initialised.nll(held_out).mean().detach())
    print(f"marginal Gaussian held-out NLL (nats): {trained:.2f} data-initialised, {from_standard_normal:.2f} "
          f"from N(0, I), optimum {optimum:.2f}")
    assert abs(trained - optimum) <= 0.02 * abs(optimum)
    assert from_standard_normal > optimum + 0.1 * abs(optimum)  # the test would catch a missing data init


def test_conditional_gaussian_starts_at_the_marginal_fit():
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(2, 3, 4, 4, 4, generator=gen) * torch.tensor([0.5, 1.0, 3.0]).view(1, 3, 1, 1, 1) + 4.0
    model = ConditionalGaussian(3, 2, hidden=8)
    model.nll(y, torch.randn(2, 2, 4, 4, 4, generator=gen))  # the first batch initialises it
    mean, log_var = model.mean_and_log_variance(torch.randn(1, 2, 4, 4, 4, generator=gen))
    flat = y.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(mean, flat.mean(1).view(1, 3, 1, 1, 1).expand_as(mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(log_var, flat.var(1, unbiased=False).log().view(1, 3, 1, 1, 1).expand_as(log_var),
                               atol=1e-4, rtol=0)


def test_a_loaded_gaussian_is_not_re_initialised():
    trained = _mark_initialized(MarginalGaussian(2))
    with torch.no_grad():
        trained.mean.copy_(torch.tensor([3.0, -1.0]))
    loaded = MarginalGaussian(2)
    loaded.load_state_dict(trained.state_dict())
    loaded.nll(torch.zeros(1, 2, 2, 2, 2))
    torch.testing.assert_close(loaded.mean.detach(), torch.tensor([3.0, -1.0]))
    legacy = {k: v for k, v in trained.state_dict().items() if k != "initialized"}  # written before the buffer
    loaded = MarginalGaussian(2)
    loaded.load_state_dict(legacy)
    assert loaded.is_initialized()


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
    model = _mark_initialized(ConditionalGaussian(2, 2, hidden=16, min_log_var=-9.0))  # from N(0, I), as specified
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
    conditional = _mark_initialized(ConditionalGaussian(4, 3, hidden=8))
    torch.nn.init.normal_(conditional.predictor[-1].weight, std=0.5)
    marginal = _mark_initialized(MarginalGaussian(4))
    y = torch.full((1, 4, 3, 3, 3), value)
    c = torch.full((1, 3, 3, 3, 3), value)
    for nll in (conditional.nll(y, c), conditional.nll(y, torch.zeros_like(c)), marginal.nll(y)):
        assert torch.isfinite(nll).all()
        assert (nll > 1e3).all()  # far from the data: a large score, not a wrapped-around small one


def test_conditional_gaussian_needs_a_condition():
    with pytest.raises(ValueError, match="condition"):
        ConditionalGaussian(2, 2).nll(torch.zeros(1, 2, 1, 1, 1), None)
