"""The eSCN hot path in plain PyTorch: the CPU default and the reference for the kernels.

Tuned for CPU: one batched GEMM per rotation with the compact Wigner rows,
``index_add`` reductions (deterministic on CPU), and the chunked grid SiLU
that recomputes the grid in its backward pass instead of storing it.

On CPU the per-edge pipelines run a few hundred edges at a time
(``edge_chunks``; ``rotate_scatter`` always, the attention's message pipeline
when no autograd graph is built): the per-edge intermediates then stay in cache
and come from the allocator's free lists. Whole-batch per-edge tensors (tens to hundreds of
MB) are above glibc's mmap threshold, so every one of them would be a fresh
mapping whose pages fault in on first touch; that zero-filling cost more than
the arithmetic of the gathers, concatenations and rotations themselves.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from eqv2_plugin.escn import backend
from eqv2_plugin.escn.edges import EdgeSegments, edge_ranges
from eqv2_plugin.escn.grid_activation import DEFAULT_CHUNK, grid_silu
from eqv2_plugin.escn.rotation import EdgeRotation, rotate_back
from eqv2_plugin.layers.norms import separable_layer_norm


CPU_CHUNK_BYTES = 16 << 20
"""Size of the largest per-edge tensor of one edge chunk on CPU: 16 MB, a few hundred edges
(83M, 2 systems, idle 2-core EPYC, single runs with ~10 % spread: inference 8.9 s at 2 MB, 7.5 s at
4, 5.6 s at 8, 5.4 s at 16 and 32, 6.2 s unchunked; GEMMs on a few hundred rows still run near full
speed, smaller chunks pay per-chunk overhead)."""


GPU_GRID_CHUNK_BYTES = 128 << 20
"""Size of one chunk's grid values ``[rows, G, C]`` in the grid SiLU on a GPU, where each chunk
costs the host a handful of launches (on the CPU, ``grid_activation.DEFAULT_CHUNK`` rows keep it
in cache)."""


def weight_by_head(values: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``values [E, K, H*V] * alpha [E, H]`` per head."""
    E, K, C = values.shape
    H = alpha.shape[1]
    return (values.reshape(E, K, H, C // H) * alpha.view(E, 1, H, 1)).reshape(E, K, C)


class TorchOps:
    """``EscnOps`` in plain PyTorch (see ``escn.backend``)."""

    name = "torch"

    def gather_rotate(self, x: torch.Tensor, rotation: EdgeRotation, edges: EdgeSegments) -> torch.Tensor:
        # index_select, not x[index]: its backward is an index_add, ~9x faster on CPU than the
        # accumulating index_put that advanced indexing's backward runs
        N, K, C = x.shape
        pairs = x.reshape(N * K, C).index_select(0, edges.pair_rows(K))
        return rotation.to_edge(pairs.view(-1, K, 2 * C))

    def rotate_scatter(
        self,
        values: torch.Tensor,
        rotation: EdgeRotation,
        edges: EdgeSegments,
        alpha: torch.Tensor | None,
        num_nodes: int,
    ) -> torch.Tensor:
        wigner = rotation.wigner.to(values.dtype)
        rescale = rotation.rescale.to(values.dtype)
        return _RotateScatter.apply(values, wigner, rescale, alpha, edges, num_nodes)

    def grid_silu(self, x: torch.Tensor, to_grid: torch.Tensor, from_grid: torch.Tensor) -> torch.Tensor:
        chunk = DEFAULT_CHUNK
        if backend.launch_bound(x.device):  # few, large chunks: 83M, 8 systems: 6 instead of 66 per call
            chunk = max(chunk, GPU_GRID_CHUNK_BYTES // max(1, to_grid.shape[0] * x.shape[-1] * x.element_size()))
        return grid_silu(x, to_grid, from_grid, chunk)

    def separable_layer_norm(self, x, l0_weight, l0_bias, weight, balance, degree_minus_one, eps):
        return separable_layer_norm(x, l0_weight, l0_bias, weight, balance, degree_minus_one, eps)

    def edge_chunks(self, num_edges: int, bytes_per_edge: int, device: torch.device) -> list[tuple[int, int]]:
        if backend.launch_bound(device):
            return edge_ranges(num_edges, num_edges)
        return edge_ranges(num_edges, CPU_CHUNK_BYTES // max(1, bytes_per_edge))


def rotate_scatter_forward(
    values, wigner, rescale, alpha, edges: EdgeSegments, num_nodes: int, ranges: list[tuple[int, int]] | None = None
) -> torch.Tensor:
    """``sum_{e -> n} W_e[:K]^T (rescale * alpha_e * values_e)``: ``[E, K, C]`` -> ``[N, S, C]``,
    one edge range at a time (default: all edges at once); edges are summed in index order either way."""
    out = None
    for s, t in ranges or [(0, values.shape[0])]:
        part = values[s:t] if alpha is None else weight_by_head(values[s:t], alpha[s:t])
        per_edge = rotate_back(part, wigner[s:t], rescale)  # [e, S, C], in the (autocast) product dtype
        if out is None:
            out = per_edge.new_zeros(num_nodes, per_edge.shape[1], per_edge.shape[2])
        out.index_add_(0, edges.target[s:t], per_edge)
    return out


def rotate_scatter_grads(grad, values, wigner, rescale, alpha, edges: EdgeSegments, need_wigner: bool = True):
    """Gradients of ``rotate_scatter_forward`` w.r.t. values, wigner and alpha, in differentiable
    torch operations (so they serve double backward too): ``(grad_values, grad_wigner, grad_alpha)``."""
    E, K, C = values.shape
    r = rescale[:K].to(values.dtype)[None, :, None]
    upstream = grad.index_select(0, edges.target)  # [E, S, C]
    p = torch.bmm(wigner[:, :K], upstream) * r  # [E, K, C]
    if alpha is not None:
        H = alpha.shape[1]
        a = alpha.repeat_interleave(C // H, dim=1)[:, None, :]
        grad_values = p * a
        grad_alpha = (values * p).sum(1).reshape(E, H, C // H).sum(-1)
        weighted = values * r * a
    else:
        grad_values, grad_alpha, weighted = p, None, values * r
    grad_wigner = None
    if need_wigner:
        grad_wigner = F.pad(torch.bmm(weighted, upstream.transpose(1, 2)), (0, 0, 0, wigner.shape[1] - K))
    return grad_values, grad_wigner, grad_alpha


class _RotateScatter(torch.autograd.Function):
    """``rotate_scatter_forward`` keeping only its inputs for the backward pass: the weighted and
    rescaled ``[E, K, C]`` copies autograd would store are rebuilt from them when needed."""

    @staticmethod
    def forward(ctx, values, wigner, rescale, alpha, edges, num_nodes):
        ctx.save_for_backward(values, wigner, rescale, alpha)
        ctx.edges = edges
        E, _, C = values.shape
        ctx.ranges = TORCH_OPS.edge_chunks(E, wigner.shape[2] * C * values.element_size(), values.device)
        return rotate_scatter_forward(values, wigner, rescale, alpha, edges, num_nodes, ctx.ranges)

    @staticmethod
    def backward(ctx, grad):
        values, wigner, rescale, alpha = ctx.saved_tensors
        # under autocast the output (so its gradient) is in the half dtype; the backward runs
        # without autocast, in the inputs' dtype
        grad = grad.to(values.dtype)
        need_wigner = ctx.needs_input_grad[1]
        if len(ctx.ranges) == 1 or torch.is_grad_enabled():  # double backward: one differentiable graph
            grad_values, grad_wigner, grad_alpha = rotate_scatter_grads(
                grad, values, wigner, rescale, alpha, ctx.edges, need_wigner=need_wigner
            )
            return grad_values, grad_wigner, None, grad_alpha, None, None
        grad_values = torch.empty_like(values)
        grad_wigner = torch.empty_like(wigner) if need_wigner else None
        grad_alpha = torch.empty_like(alpha) if alpha is not None else None
        for s, t in ctx.ranges:
            gv, gw, ga = rotate_scatter_grads(
                grad, values[s:t], wigner[s:t], rescale, None if alpha is None else alpha[s:t],
                ctx.edges.narrow(s, t), need_wigner=need_wigner,
            )
            grad_values[s:t] = gv
            if need_wigner:
                grad_wigner[s:t] = gw
            if alpha is not None:
                grad_alpha[s:t] = ga
        return grad_values, grad_wigner, None, grad_alpha, None, None


TORCH_OPS = TorchOps()
