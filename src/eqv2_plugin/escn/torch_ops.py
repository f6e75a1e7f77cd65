"""The eSCN hot path in plain PyTorch: the CPU default and the reference for the kernels.

Tuned for CPU: one batched GEMM per rotation with the compact Wigner rows,
``index_add`` reductions (deterministic on CPU), and the chunked grid SiLU
that recomputes the grid in its backward pass instead of storing it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from eqv2_plugin.escn.edges import EdgeSegments
from eqv2_plugin.escn.grid_activation import grid_silu
from eqv2_plugin.escn.rotation import EdgeRotation, rotate_back


def weight_by_head(values: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``values [E, K, H*V] * alpha [E, H]`` per head."""
    E, K, C = values.shape
    H = alpha.shape[1]
    return (values.reshape(E, K, H, C // H) * alpha[:, None, :, None]).reshape(E, K, C)


class TorchOps:
    """``EscnOps`` in plain PyTorch (see ``escn.backend``)."""

    name = "torch"

    def gather_rotate(self, x: torch.Tensor, rotation: EdgeRotation, edges: EdgeSegments) -> torch.Tensor:
        return rotation.to_edge(torch.cat([x[edges.source], x[edges.target]], dim=2))

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
        return grid_silu(x, to_grid, from_grid)


def rotate_scatter_forward(values, wigner, rescale, alpha, edges: EdgeSegments, num_nodes: int) -> torch.Tensor:
    """``sum_{e -> n} W_e[:K]^T (rescale * alpha_e * values_e)``: ``[E, K, C]`` -> ``[N, S, C]``."""
    if alpha is not None:
        values = weight_by_head(values, alpha)
    per_edge = rotate_back(values, wigner, rescale)  # [E, S, C]
    out = per_edge.new_zeros(num_nodes, per_edge.shape[1], per_edge.shape[2])
    return out.index_add(0, edges.target, per_edge)


def rotate_scatter_grads(grad, values, wigner, rescale, alpha, edges: EdgeSegments, need_wigner: bool = True):
    """Gradients of ``rotate_scatter_forward`` w.r.t. values, wigner and alpha, in differentiable
    torch operations (so they serve double backward too): ``(grad_values, grad_wigner, grad_alpha)``."""
    E, K, C = values.shape
    r = rescale[:K].to(values.dtype)[None, :, None]
    upstream = grad[edges.target]  # [E, S, C]
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
        return rotate_scatter_forward(values, wigner, rescale, alpha, edges, num_nodes)

    @staticmethod
    def backward(ctx, grad):
        values, wigner, rescale, alpha = ctx.saved_tensors
        grad_values, grad_wigner, grad_alpha = rotate_scatter_grads(
            grad, values, wigner, rescale, alpha, ctx.edges, need_wigner=ctx.needs_input_grad[1]
        )
        return grad_values, grad_wigner, None, grad_alpha, None, None


TORCH_OPS = TorchOps()
