"""SO(3) bookkeeping against analytic results and e3nn."""
from __future__ import annotations

import pytest
import torch
from e3nn import o3

from eqv2_plugin import so3
from eqv2_plugin.so3 import EdgeLayout, edge_frames, wigner_blocks


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn's angle conversions use the default dtype
    yield
    torch.set_default_dtype(previous)


def test_wigner_blocks_equal_e3nn(float64_default):
    torch.manual_seed(0)
    rot = o3.rand_matrix(16, dtype=torch.float64)
    for l, block in enumerate(wigner_blocks(rot, 10)):
        ref = o3.Irrep(l, (-1) ** l).D_from_matrix(rot)
        assert torch.allclose(block, ref, atol=1e-12), l


def test_wigner_is_a_representation_and_differentiable():
    torch.manual_seed(1)
    a, b = o3.rand_matrix(4, dtype=torch.float64), o3.rand_matrix(4, dtype=torch.float64)
    for da, db, dab in zip(wigner_blocks(a, 6), wigner_blocks(b, 6), wigner_blocks(a @ b, 6)):
        assert torch.allclose(da @ db, dab, atol=1e-12)
    # gradients through the polynomial construction match finite differences
    vec = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    f = lambda v: wigner_blocks(edge_frames(v, mode="deterministic"), 4)[4].sum()
    assert torch.autograd.gradcheck(f, (vec,))


@pytest.mark.parametrize("mode", ["random", "deterministic"])
def test_edge_frames_align_edges_with_y(mode):
    torch.manual_seed(2)
    vec = torch.randn(500, 3, dtype=torch.float64)
    vec[:3] = torch.tensor([[0.0, 0.0, 2.0], [0.0, -1.0, 0.0], [3.0, 0.0, 0.0]])  # axis-aligned edges
    frames = edge_frames(vec, mode=mode)
    unit = vec / vec.norm(dim=1, keepdim=True)
    assert torch.allclose(torch.einsum("eij,ej->ei", frames, unit), torch.tensor([0.0, 1.0, 0.0]).double(), atol=1e-14)
    assert torch.allclose(frames @ frames.transpose(1, 2), torch.eye(3, dtype=torch.float64), atol=1e-14)
    assert torch.allclose(torch.linalg.det(frames), torch.ones(500, dtype=torch.float64))


def test_frame_modes_random_rolls_deterministic_repeats():
    vec = torch.randn(50, 3)
    assert torch.equal(edge_frames(vec, mode="deterministic"), edge_frames(vec, mode="deterministic"))
    assert not torch.allclose(edge_frames(vec, mode="random"), edge_frames(vec, mode="random"))
    with pytest.raises(ValueError, match="edge frame mode"):
        edge_frames(vec, mode="fixed")


def test_edge_layout_is_m_major_and_truncated():
    layout = EdgeLayout(lmax=3, mmax=2)
    assert layout.lm == [
        (0, 0), (1, 0), (2, 0), (3, 0),
        (1, 1), (2, 1), (3, 1), (1, -1), (2, -1), (3, -1),
        (2, 2), (3, 2), (2, -2), (3, -2),
    ]
    assert layout.num_coefficients == 14 and layout.m_offset(2) == 10
    # released configs: 19 of 25 coefficients for L4/M2, 29 of 49 for L6/M2, 37 of 49 for L6/M3
    assert [EdgeLayout(l, m).num_coefficients for l, m in [(4, 2), (6, 2), (6, 3)]] == [19, 29, 37]
    assert torch.allclose(layout.rescale()[layout.degree == 3], torch.tensor(7 / 5).sqrt().double())


def test_s2_grid_round_trip_is_identity_for_band_limited_signals():
    to_grid, from_grid = so3.s2_grid_matrices(4, 4, 18)
    # e3nn's equiangular quadrature is exact to ~1e-7 at this resolution
    assert torch.allclose(from_grid @ to_grid, torch.eye(25, dtype=torch.float64), atol=1e-6)
    # and the grid values are e3nn's spherical harmonics at the grid points
    to_e3nn = o3.ToS2Grid(4, (18, 18), normalization="component", dtype=torch.float64)
    x = torch.randn(25, dtype=torch.float64)
    assert torch.allclose(to_grid @ x, to_e3nn(x).reshape(-1), atol=1e-12)
