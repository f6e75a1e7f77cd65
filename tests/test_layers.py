"""Layers whose CPU and GPU shapes (``escn.backend.launch_bound``) compute the same function."""
from __future__ import annotations

import pytest
import torch

from eqv2_plugin.escn import backend
from eqv2_plugin.layers.linear import DegreeWiseLinear
from eqv2_plugin.model import ffn
from eqv2_plugin.model.ffn import FeedForward
from eqv2_plugin.so3.layout import degree_of_node_coefficients


@pytest.mark.parametrize("lmax", [0, 2, 6])
@pytest.mark.parametrize("nodes", [0, 1, 5])
def test_degree_wise_linear_both_forms_equal_the_definition(lmax, nodes):
    torch.manual_seed(lmax + nodes)
    lin = DegreeWiseLinear(6, 4, lmax).double()
    torch.nn.init.normal_(lin.bias)
    x = torch.randn(nodes, (lmax + 1) ** 2, 6, dtype=torch.float64, requires_grad=True)
    # out[n, k] = W_l(k) x[n, k] (+ bias where l = 0)
    w = lin.weight[degree_of_node_coefficients(lmax)]  # [K, C_out, C_in]
    expected = torch.einsum("koi,nki->nko", w, x)
    expected[:, 0] += lin.bias
    g = torch.randn_like(expected)
    (g_expected,) = torch.autograd.grad(expected, x, g)
    for form in (lin._per_degree, lin._batched):
        out = form(x)
        assert out.shape == expected.shape and out.is_contiguous()
        assert torch.allclose(out, expected, atol=1e-12)
        (gx,) = torch.autograd.grad(out, x, g)
        assert torch.allclose(gx, g_expected, atol=1e-12)


def test_grid_mlp_in_chunks_equals_all_nodes_at_once(monkeypatch):
    """The CPU runs the FFN's grid MLP on chunks of nodes, a GPU on all of them at once; while
    training both recompute the grid in the backward pass. Same values and gradients."""
    torch.manual_seed(0)
    layer = FeedForward(8, 12, 8, lmax=3, grid_resolution=10, use_grid_mlp=True, use_sep_s2_act=True).double()
    x = torch.randn(300, 16, 8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(300, 16, 8, dtype=torch.float64)
    results = []
    for gpu_shape in (False, True):
        monkeypatch.setattr(ffn, "GRID_CHUNK", 37)  # not a divisor of 300
        monkeypatch.setattr(backend, "launch_bound", lambda device, gpu_shape=gpu_shape: gpu_shape)
        rows = ffn.grid_chunk_rows(x, layer.to_grid.shape[0])
        assert (rows == 37) if not gpu_shape else (rows >= 300)
        out = layer(x)
        grads = torch.autograd.grad(out, [x, *layer.parameters()], g)
        results.append((out, grads))
    (out_chunks, grads_chunks), (out_whole, grads_whole) = results
    assert torch.allclose(out_chunks, out_whole, atol=1e-12)
    for a, b in zip(grads_chunks, grads_whole):
        assert torch.allclose(a, b, atol=1e-12)
