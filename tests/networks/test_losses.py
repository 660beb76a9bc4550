"""VICReg and InfoNCE against slow references written from the equations (docs/method-notes.md 2.5)."""
from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from nnscreener.networks.losses import infonce_loss, vicreg_loss, vicreg_terms


def reference_vicreg(z1: np.ndarray, z2: np.ndarray, eps: float):
    n, d = z1.shape
    inv = sum((z1[i, k] - z2[i, k]) ** 2 for i in range(n) for k in range(d)) / (n * d)
    var, cov = 0.0, 0.0
    for z in (z1, z2):
        mean = [sum(z[i, k] for i in range(n)) / n for k in range(d)]
        hinge = 0.0
        for k in range(d):
            variance = sum((z[i, k] - mean[k]) ** 2 for i in range(n)) / (n - 1)
            hinge += max(0.0, 1.0 - math.sqrt(variance + eps))
        var += hinge / d / 2
        off = 0.0
        for a in range(d):
            for b in range(d):
                if a != b:
                    c = sum((z[i, a] - mean[a]) * (z[i, b] - mean[b]) for i in range(n)) / (n - 1)
                    off += c * c
        cov += off / d / 2
    return inv, var, cov


def reference_infonce(p1: np.ndarray, p2: np.ndarray, tau: float) -> float:
    """Per-anchor loop over the 2N embeddings: positive = partner, denominator = all 2N-1 others."""
    n = p1.shape[0]
    emb = [v / np.linalg.norm(v) for v in list(p1) + list(p2)]
    total = 0.0
    for a in range(2 * n):
        partner = (a + n) % (2 * n)
        others = [math.exp(float(emb[a] @ emb[j]) / tau) for j in range(2 * n) if j != a]
        total += -(float(emb[a] @ emb[partner]) / tau - math.log(sum(others)))
    return total / (2 * n)


@pytest.fixture
def pairs():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(9, 5, generator=g, dtype=torch.float64) * 0.7
    z2 = z1 + 0.3 * torch.randn(9, 5, generator=g, dtype=torch.float64)
    return z1, z2


def test_vicreg_terms_match_reference(pairs):
    z1, z2 = pairs
    terms = vicreg_terms(z1, z2, eps=1e-4)
    ref = reference_vicreg(z1.numpy(), z2.numpy(), 1e-4)
    np.testing.assert_allclose([float(t) for t in terms], ref, rtol=1e-5)
    assert ref[1] > 0  # the variance hinge is active for std 0.7 < 1: the test exercises it


def test_vicreg_loss_weights(pairs):
    terms = vicreg_terms(*pairs)
    expected = 25 * terms.invariance + 25 * terms.variance + 1 * terms.covariance
    torch.testing.assert_close(vicreg_loss(terms), expected)
    torch.testing.assert_close(vicreg_loss(terms, (1, 0, 0)), terms.invariance)


def test_infonce_matches_per_anchor_loop(pairs):
    p1, p2 = pairs
    got = float(infonce_loss(p1, p2, temperature=0.1))
    np.testing.assert_allclose(got, reference_infonce(p1.numpy(), p2.numpy(), 0.1), rtol=1e-5)


@pytest.mark.parametrize("loss", ["vicreg", "infonce"])
def test_symmetric_and_invariant_to_permuting_pairs(pairs, loss):
    def f(a, b):
        return float(vicreg_loss(vicreg_terms(a, b)) if loss == "vicreg" else infonce_loss(a, b))

    z1, z2 = pairs
    perm = torch.randperm(z1.shape[0], generator=torch.Generator().manual_seed(1))
    assert f(z1, z2) == pytest.approx(f(z2, z1), rel=1e-9)
    assert f(z1, z2) == pytest.approx(f(z1[perm], z2[perm]), rel=1e-9)
    # breaking the pairing changes the loss (the test would pass trivially for a pairing-blind loss otherwise)
    assert f(z1, z2) != pytest.approx(f(z1, z2[perm]), rel=1e-3)


def test_too_few_pairs_or_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="N=2"):
        vicreg_terms(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="N=2"):
        infonce_loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="same shape"):
        infonce_loss(torch.randn(3, 4), torch.randn(3, 5))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _rank_losses(rank: int, world: int, port: int, z1: torch.Tensor, z2: torch.Tensor, out_dir: str) -> None:
    """One gloo rank: the loss of its shard of pairs and the gradient it receives for that shard."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    n = z1.shape[0] // world
    results = {}
    for name in ("vicreg", "infonce"):
        a = z1[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        b = z2[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        loss = vicreg_loss(vicreg_terms(a, b)) if name == "vicreg" else infonce_loss(a, b)
        loss.backward()
        results[name] = (float(loss), a.grad.clone(), b.grad.clone())
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_gathering_gives_the_global_loss_and_gradient(tmp_path):
    """Two gloo ranks with half the pairs each: the mean of the rank losses is the single-process loss on all
    pairs, and each rank's gradient (summed across ranks by AllGatherGrad, before DDP's averaging) is the world
    size times the single-process gradient of its rows."""
    world = 2
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(8, 4, generator=g, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(8, 4, generator=g, dtype=torch.float64)
    mp.spawn(_rank_losses, args=(world, _free_port(), z1, z2, str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    n = z1.shape[0] // world
    for name in ("vicreg", "infonce"):
        a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        full = vicreg_loss(vicreg_terms(a, b)) if name == "vicreg" else infonce_loss(a, b)
        full.backward()
        assert np.mean([r[name][0] for r in ranks]) == pytest.approx(float(full.detach()), rel=1e-9)
        for r, (_, ga, gb) in enumerate(x[name] for x in ranks):
            torch.testing.assert_close(ga, world * a.grad[r * n:(r + 1) * n])
            torch.testing.assert_close(gb, world * b.grad[r * n:(r + 1) * n])
