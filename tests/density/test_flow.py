"""Glow layers and the flow density: shapes, invertibility, log-determinants against autograd, training, safety."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from scipy.stats import multivariate_normal
from torch import nn

from nnscreener.density.flow import (ActNorm, AffineCoupling, ConditionalActNorm, Flow, FlowDensity, FlowLayer,
                                     GlowBlock, Invertible1x1)
from nnscreener.density.gaussian import MarginalGaussian

D, DC, HIDDEN = 5, 3, 8


def _randomise_parameters(module: nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Moves every parameter away from its (often identity-like) initialisation, so the tests see a generic map."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


class FlowLayerTest:
    """Shared checks for every flow layer; subclasses say how to build the layer and whether it is conditional."""

    cond_dim = 0
    perturbation = 0.3  # std of the noise added to every parameter (smaller for deep stacks: float32 round trips)

    def make_layer(self) -> FlowLayer:
        raise NotImplementedError

    def _ready_layer(self) -> FlowLayer:
        torch.manual_seed(0)
        layer = self.make_layer()
        gen = torch.Generator().manual_seed(1)
        # data-dependent initialisation of every ActNorm from one realistic batch, then leave the init point
        layer(torch.randn(2, D, 3, 4, 5, generator=gen) * 2 + 1, self._condition(2, (3, 4, 5), gen))
        _randomise_parameters(layer, std=self.perturbation)
        return layer

    def _condition(self, b: int, grid, gen, dtype=torch.float32) -> Optional[torch.Tensor]:
        if not self.cond_dim:
            return None
        return torch.randn(b, self.cond_dim, *grid, generator=gen, dtype=dtype)

    def test_outputs_are_finite_with_the_right_shape(self):
        layer = self._ready_layer()
        gen = torch.Generator().manual_seed(2)
        y = torch.randn(2, D, 3, 4, 5, generator=gen)
        z, logdet = layer(y, self._condition(2, (3, 4, 5), gen))
        assert z.shape == y.shape and logdet.shape == (2, 1, 3, 4, 5)
        assert torch.isfinite(z).all() and torch.isfinite(logdet).all()

    def test_inverse_after_forward_is_identity(self):
        layer = self._ready_layer()
        gen = torch.Generator().manual_seed(3)
        y = torch.randn(2, D, 3, 4, 5, generator=gen)
        c = self._condition(2, (3, 4, 5), gen)
        z, logdet = layer(y, c)
        y_back, inverse_logdet = layer.inverse(z, c)
        torch.testing.assert_close(y_back, y, atol=1e-5, rtol=0)
        torch.testing.assert_close(inverse_logdet, -logdet, atol=1e-5, rtol=1e-6)

    def test_logdet_equals_autograd_jacobian(self):
        layer = self._ready_layer().double()
        gen = torch.Generator().manual_seed(4)
        for _ in range(3):
            y = torch.randn(D, generator=gen, dtype=torch.float64)
            c = self._condition(1, (1, 1, 1), gen, dtype=torch.float64)

            def single_voxel(v: torch.Tensor) -> torch.Tensor:
                return layer(v.view(1, D, 1, 1, 1), c)[0].view(D)

            jacobian = torch.autograd.functional.jacobian(single_voxel, y)  # (D, D) = dz/dy
            sign, expected = torch.linalg.slogdet(jacobian)
            assert sign != 0
            logdet = layer(y.view(1, D, 1, 1, 1), c)[1]
            assert logdet.shape == (1, 1, 1, 1, 1)
            torch.testing.assert_close(logdet.view(()), expected, atol=1e-9, rtol=1e-9)

    def test_voxels_are_transformed_independently(self):
        layer = self._ready_layer()
        gen = torch.Generator().manual_seed(5)
        y = torch.randn(1, D, 2, 3, 4, generator=gen)
        c = self._condition(1, (2, 3, 4), gen)
        z, logdet = layer(y, c)
        c_voxel = None if c is None else c[:, :, 1:2, 2:3, 3:4]
        z_voxel, logdet_voxel = layer(y[:, :, 1:2, 2:3, 3:4], c_voxel)
        torch.testing.assert_close(z_voxel, z[:, :, 1:2, 2:3, 3:4])
        torch.testing.assert_close(logdet_voxel, logdet[:, :, 1:2, 2:3, 3:4])


class TestActNorm(FlowLayerTest):
    def make_layer(self):
        return ActNorm(D)


class TestConditionalActNorm(FlowLayerTest):
    cond_dim = DC

    def make_layer(self):
        return ConditionalActNorm(D, DC, HIDDEN)


class TestInvertible1x1(FlowLayerTest):
    def make_layer(self):
        return Invertible1x1(D)


class TestAffineCoupling(FlowLayerTest):
    def make_layer(self):
        return AffineCoupling(D, HIDDEN)


class TestConditionalAffineCoupling(FlowLayerTest):
    cond_dim = DC

    def make_layer(self):
        return AffineCoupling(D, HIDDEN, cond_dim=DC)


class TestGlowBlock(FlowLayerTest):
    def make_layer(self):
        return GlowBlock(D, HIDDEN)


class TestConditionalGlowBlock(FlowLayerTest):
    cond_dim = DC

    def make_layer(self):
        return GlowBlock(D, HIDDEN, cond_dim=DC)


class TestFlow(FlowLayerTest):
    perturbation = 0.1

    def make_layer(self):
        return Flow(D, num_blocks=3, hidden=HIDDEN)


class TestConditionalFlow(FlowLayerTest):
    cond_dim = DC
    perturbation = 0.1

    def make_layer(self):
        return Flow(D, num_blocks=3, hidden=HIDDEN, cond_dim=DC)


# ---------------------------------------------------------------------------------------------- initialisation


def test_actnorm_data_dependent_init_standardises_the_first_batch_only():
    norm = ActNorm(3)
    y = torch.randn(4, 3, 5, 5, 5) * torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1, 1) + 3.0
    z, _ = norm(y)
    assert torch.allclose(z.mean(dim=(0, 2, 3, 4)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std(dim=(0, 2, 3, 4), unbiased=False), torch.ones(3), atol=1e-3)
    torch.testing.assert_close(norm.log_scale.view(3), -torch.log(torch.tensor([0.5, 2.0, 7.0])), atol=0.1, rtol=0)
    loc_after_init = norm.loc.detach().clone()
    norm(y * 10)  # a second batch must not re-initialise
    torch.testing.assert_close(norm.loc.detach(), loc_after_init)
    restored = ActNorm(3)
    restored.load_state_dict(norm.state_dict())
    restored(y * 10)  # a loaded checkpoint keeps its parameters
    torch.testing.assert_close(restored.loc.detach(), loc_after_init)
    fresh_state = ActNorm(3).state_dict()
    restored.load_state_dict(fresh_state)  # loading an uninitialised state re-arms the initialisation
    restored(y)
    torch.testing.assert_close(restored.loc.detach(), loc_after_init)


def test_conditional_actnorm_starts_as_plain_actnorm():
    torch.manual_seed(0)
    conditional, plain = ConditionalActNorm(3, 2, 6), ActNorm(3)
    y = torch.randn(2, 3, 4, 4, 4) * 3 + 1
    z_cond, logdet_cond = conditional(y, torch.randn(2, 2, 4, 4, 4) * 5)
    z_plain, logdet_plain = plain(y)
    torch.testing.assert_close(z_cond, z_plain)
    torch.testing.assert_close(logdet_cond, logdet_plain)


def test_invertible_1x1_starts_orthogonal_and_coupling_starts_as_fixed_scaling():
    torch.manual_seed(0)
    w = Invertible1x1(6).weight.detach().double()
    torch.testing.assert_close(w @ w.T, torch.eye(6, dtype=torch.float64), atol=1e-6, rtol=0)
    coupling = AffineCoupling(6, 8, cond_dim=2)
    y = torch.randn(2, 6, 3, 3, 3)
    z, logdet = coupling(y, torch.randn(2, 2, 3, 3, 3))
    s = torch.sigmoid(torch.tensor(2.0))
    torch.testing.assert_close(z, torch.cat([y[:, :3], y[:, 3:] * s], dim=1))
    torch.testing.assert_close(logdet, torch.full_like(logdet, 3 * math.log(s)))


def test_invertible_1x1_logdet_is_float64_accurate():
    torch.manual_seed(0)
    layer = Invertible1x1(32)
    with torch.no_grad():
        layer.weight.mul_(1.7)  # det far from 1
    expected = 32 * math.log(1.7)  # |det(1.7 Q)| for orthogonal Q
    _, logdet = layer(torch.randn(1, 32, 1, 1, 1))
    assert abs(float(logdet.detach()) - expected) < 1e-5


# ---------------------------------------------------------------------------------------------- density


def _random_conditional_flow():
    """A conditional FlowDensity with random parameters, inputs y, c, and its latent z (as (voxels, D) float64)
    and log-determinant."""
    torch.manual_seed(0)
    density = FlowDensity(D, num_blocks=2, hidden=HIDDEN, cond_dim=DC)
    y, c = torch.randn(2, D, 2, 2, 2), torch.randn(2, DC, 2, 2, 2)
    density.nll(y, c)  # actnorm init
    _randomise_parameters(density)
    z, logdet = density.flow(y, c)
    return density, y, c, z.detach().permute(0, 2, 3, 4, 1).reshape(-1, D).double().numpy(), logdet.detach()


def test_flow_nll_is_the_change_of_variables_formula():
    density, y, c, z_np, logdet = _random_conditional_flow()
    standard_normal = multivariate_normal(mean=np.zeros(D), cov=np.eye(D))
    expected = -standard_normal.logpdf(z_np) - logdet.reshape(-1).double().numpy()
    np.testing.assert_allclose(density.nll(y, c).detach().reshape(-1).numpy(), expected, rtol=1e-5, atol=1e-4)


def test_flow_latent_energy_is_half_the_squared_latent():
    density, y, c, z_np, logdet = _random_conditional_flow()
    energy = density.latent_energy(y, c)
    assert energy.shape == (2, 1, 2, 2, 2)
    np.testing.assert_allclose(energy.detach().reshape(-1).numpy(), 0.5 * (z_np ** 2).sum(axis=1), rtol=1e-5)
    volume = 0.5 * D * math.log(2 * math.pi) - logdet  # what the NLL adds: not a function of how rare y is
    torch.testing.assert_close(density.nll(y, c).detach() - energy.detach(), volume, rtol=1e-5, atol=1e-4)


def test_flow_nll_is_finite_for_extreme_inputs():
    torch.manual_seed(0)
    for cond_dim in (0, DC):
        density = FlowDensity(D, num_blocks=4, hidden=HIDDEN, cond_dim=cond_dim)
        density.nll(torch.randn(4, D, 3, 3, 3), torch.randn(4, DC, 3, 3, 3) if cond_dim else None)
        _randomise_parameters(density, std=0.5)
        for value in (1e6, -1e6, 1e30, -1e30):
            y = torch.full((1, D, 2, 2, 2), value)
            y[:, 0] = -value  # mixed signs
            c = torch.full((1, DC, 2, 2, 2), value) if cond_dim else None
            nll = density.nll(y, c)
            assert torch.isfinite(nll).all(), (cond_dim, value)
            assert (nll > density.nll(torch.zeros_like(y), None if c is None else torch.zeros_like(c))).all()


def _correlated_non_gaussian(n: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 4, 1, 1, 1) samples: a banana-shaped pair plus two correlated Gaussian channels.

    Its differential entropy (the best achievable expected NLL) is ``_TRUE_ENTROPY`` nats.
    """
    a = torch.randn(n, generator=gen)
    b = 0.5 * a ** 2 + 0.3 * torch.randn(n, generator=gen)
    e = torch.randn(n, 2, generator=gen)
    cd = e @ torch.tensor([[1.0, 0.9], [0.0, 0.4]])
    return torch.stack([a, b, cd[:, 0], cd[:, 1]], dim=1).view(n, 4, 1, 1, 1)


# a ~ N(0, 1); b | a ~ N(a^2 / 2, 0.3^2); (c, d) ~ N(0, M^T M) with M = [[1, 0.9], [0, 0.4]], det(M) = 0.4
_TRUE_ENTROPY = 2 * 0.5 * math.log(2 * math.pi * math.e) + math.log(0.3) + 2 * 0.5 * math.log(2 * math.pi * math.e) \
    + math.log(0.4)


def _fit(density: nn.Module, train: torch.Tensor, steps: int, lr: float = 1e-2) -> None:
    density.nll(train[:256])  # data-dependent init (flows)
    optimizer = torch.optim.Adam(density.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(7)
    for _ in range(steps):
        batch = train[torch.randint(0, train.shape[0], (256,), generator=gen)]
        loss = density.nll(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@torch.no_grad()
def _mean_nll(density: nn.Module, data: torch.Tensor) -> float:
    return float(density.nll(data).mean())


def test_training_lowers_held_out_nll_below_a_diagonal_gaussian():
    gen = torch.Generator().manual_seed(0)
    train, held_out = _correlated_non_gaussian(4096, gen), _correlated_non_gaussian(2048, gen)
    torch.manual_seed(0)
    flow = FlowDensity(4, num_blocks=4, hidden=32)
    flow.nll(train[:256])
    untrained = _mean_nll(flow, held_out)
    _fit(flow, train, steps=300)
    trained = _mean_nll(flow, held_out)
    gaussian = MarginalGaussian(4)
    _fit(gaussian, train, steps=300, lr=5e-2)
    diagonal = _mean_nll(gaussian, held_out)
    print(f"held-out NLL (nats/voxel): untrained flow {untrained:.3f}, trained flow {trained:.3f}, "
          f"diagonal Gaussian {diagonal:.3f}, true entropy {_TRUE_ENTROPY:.3f}")
    assert trained < untrained - 0.5
    assert _TRUE_ENTROPY - 0.05 < trained < _TRUE_ENTROPY + 0.25
    # the flow models the correlation and the curved pair that a diagonal Gaussian cannot
    assert trained < diagonal - 0.5
