"""``EscnOps`` on Triton kernels: autograd Functions around ``escn.triton.kernels``.

Each Function computes the same function as ``escn.torch_ops`` (tested in
``tests/test_triton_kernels.py``, interpreted on CPU). Backward passes are
kernels too; they recompute what they need from the inputs (gathered node
features, grid values) rather than saving per-edge intermediates. When a
second derivative is requested (training with gradient forces), the backward
is written in differentiable torch operations instead, so double backward
works with the same results.

Under autocast, inputs are cast to the autocast dtype first (what the torch
path's ``bmm`` / ``matmul`` do); products accumulate in fp32 either way.
"""
from __future__ import annotations

import torch
import triton

from eqv2_plugin.escn.backend import autocast_dtype
from eqv2_plugin.escn.edges import EdgeSegments, edge_ranges
from eqv2_plugin.escn.grid_activation import grid_silu_grad
from eqv2_plugin.escn.rotation import EdgeRotation
from eqv2_plugin.escn.torch_ops import rotate_scatter_grads
from eqv2_plugin.escn.triton import kernels
from eqv2_plugin.layers.norms import separable_layer_norm

GRID_BLOCK = 32  # grid points per step of the on-chip S2 grid
MAX_CHANNEL_BLOCK = 64


def _block(n: int) -> int:
    """Power of two >= max(n, 16): ``tl.dot`` needs tile sides of at least 16."""
    return max(16, triton.next_power_of_2(n))


def _channel_block(c: int) -> int:
    return min(MAX_CHANNEL_BLOCK, _block(c))


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return autocast_dtype(x.device.type) or x.dtype


# --------------------------------------------------------------------------- gather_rotate
class _GatherRotate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, wigner: torch.Tensor, edges: EdgeSegments) -> torch.Tensor:
        N, S, C = x.shape
        E, K, _ = wigner.shape
        ctx.save_for_backward(x, wigner)
        ctx.edges = edges
        out = x.new_empty(E, K, 2 * C)
        if E:
            BC = _channel_block(C)
            kernels.gather_rotate_fwd[(E, triton.cdiv(C, BC), 2)](
                x, wigner, edges.source, edges.target, out, K, S, C, K * S,
                BK=_block(K), BS=_block(S), BC=BC, PREC=_precision(x.dtype),
            )
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, wigner = ctx.saved_tensors
        edges: EdgeSegments = ctx.edges
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # double backward: stay differentiable
            return (*_gather_rotate_grads_torch(grad, x, wigner, edges, need_x, need_w), None)
        grad = grad.contiguous()
        N, S, C = x.shape
        E, K, _ = wigner.shape
        BK, BS, BC = _block(K), _block(S), _channel_block(C)
        prec = _precision(x.dtype)
        grad_x = grad_w = None
        if need_x:
            grad_x = torch.zeros_like(x)
            if E:
                src_order, src_ptr = edges.by_source
                tgt_order, tgt_ptr = edges.by_target
                kernels.gather_rotate_bwd_x[(N, triton.cdiv(C, BC))](
                    grad, wigner, src_order, src_ptr, tgt_order, tgt_ptr, grad_x, K, S, C, K * S,
                    BK=BK, BS=BS, BC=BC, PREC=prec,
                )
        if need_w:
            grad_w = torch.zeros_like(wigner)
            if E:
                kernels.gather_rotate_bwd_w[(E,)](
                    grad, x, edges.source, edges.target, grad_w, K, S, C, BK=BK, BS=BS, BC=BC, PREC=prec,
                )
        return grad_x, grad_w, None


def _gather_rotate_grads_torch(grad, x, wigner, edges, need_x, need_w):
    C = x.shape[2]
    g_src, g_tgt = grad[:, :, :C], grad[:, :, C:]
    grad_x = grad_w = None
    if need_x:
        wt = wigner.transpose(1, 2)
        grad_x = torch.zeros_like(x).index_add(0, edges.source, torch.bmm(wt, g_src))
        grad_x = grad_x.index_add(0, edges.target, torch.bmm(wt, g_tgt))
    if need_w:
        grad_w = torch.bmm(g_src, x[edges.source].transpose(1, 2)) + torch.bmm(g_tgt, x[edges.target].transpose(1, 2))
    return grad_x, grad_w


# --------------------------------------------------------------------------- rotate_scatter
class _RotateScatter(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        values: torch.Tensor,
        wigner: torch.Tensor,
        rescale: torch.Tensor,
        alpha: torch.Tensor | None,
        edges: EdgeSegments,
        num_nodes: int,
    ) -> torch.Tensor:
        rescale = rescale.to(torch.float32).contiguous()
        E, K, C = values.shape
        K_full, S = wigner.shape[1], wigner.shape[2]
        has_alpha = alpha is not None
        alpha_arg = alpha if has_alpha else values  # unused when HAS_ALPHA is False
        H = alpha.shape[1] if has_alpha else 1
        ctx.save_for_backward(values, wigner, rescale, alpha_arg)
        ctx.edges, ctx.has_alpha, ctx.heads = edges, has_alpha, H
        out = values.new_zeros(num_nodes, S, C)
        if E:
            BC = _channel_block(C)
            order, ptr = edges.by_target
            kernels.rotate_scatter_fwd[(num_nodes, triton.cdiv(C, BC))](
                values, wigner, rescale, alpha_arg, order, ptr, out, K, S, C, H, C // H, K_full * S,
                HAS_ALPHA=has_alpha, BK=_block(K), BS=_block(S), BC=BC, PREC=_precision(values.dtype),
            )
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        values, wigner, rescale, alpha_arg = ctx.saved_tensors
        edges: EdgeSegments = ctx.edges
        alpha = alpha_arg if ctx.has_alpha else None
        need_v, need_w, need_a = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[3]
        if torch.is_grad_enabled():
            grads = rotate_scatter_grads(grad, values, wigner, rescale, alpha, edges)
            return grads[0], grads[1], None, grads[2], None, None
        grad = grad.contiguous()
        E, K, C = values.shape
        K_full, S = wigner.shape[1], wigner.shape[2]
        H = ctx.heads
        BK, BS, BC = _block(K), _block(S), _channel_block(C)
        prec = _precision(values.dtype)
        grad_v = grad_w = grad_a = None
        if need_v or need_a:
            grad_v = torch.zeros_like(values)
            q = values.new_zeros(E, C, dtype=torch.float32)
            if E:
                kernels.rotate_scatter_bwd_values[(E, triton.cdiv(C, BC))](
                    grad, values, wigner, rescale, alpha_arg, edges.target, grad_v, q, K, S, C, H, C // H, K_full * S,
                    HAS_ALPHA=ctx.has_alpha, BK=BK, BS=BS, BC=BC, PREC=prec,
                )
            if ctx.has_alpha and need_a:
                grad_a = q.reshape(E, H, C // H).sum(-1).to(alpha.dtype)
            if not need_v:
                grad_v = None
        if need_w:
            grad_w = torch.zeros_like(wigner)
            if E:
                rows = wigner.new_zeros(E, K, S)
                kernels.rotate_scatter_bwd_w[(E,)](
                    grad, values, rescale, alpha_arg, edges.target, rows, K, S, C, H, C // H,
                    HAS_ALPHA=ctx.has_alpha, BK=BK, BS=BS, BC=BC, PREC=prec,
                )
                grad_w[:, :K] = rows
        return grad_v, grad_w, None, grad_a, None, None


# --------------------------------------------------------------------------- grid_silu
class _GridSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, to_grid: torch.Tensor, from_grid: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, to_grid, from_grid)
        out = _grid_launch(kernels.grid_silu_fwd, x, None, to_grid, from_grid)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, to_grid, from_grid = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: the torch path's differentiable formula
            return grid_silu_grad(grad, x, to_grid, from_grid), None, None
        return _grid_launch(kernels.grid_silu_bwd, x, grad.contiguous(), to_grid, from_grid), None, None


def _grid_launch(kernel, x, grad, to_grid, from_grid):
    R, K, C = x.shape
    G = to_grid.shape[0]
    out = torch.empty_like(x)
    if R:
        BC = _channel_block(C)
        args = (x, to_grid, from_grid, out) if grad is None else (grad, x, to_grid, from_grid, out)
        kernel[(R, triton.cdiv(C, BC))](
            *args, K, G, C, BK=_block(K), BG=GRID_BLOCK, BC=BC, PREC=_precision(x.dtype)
        )
    return out


# --------------------------------------------------------------------------- separable layer norm
NORM_ROWS = 16  # l>0 coefficients per step of the norm kernels


class _SeparableLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, l0_weight, l0_bias, weight, balance, degree_minus_one, eps):
        N, K, C = x.shape
        out = torch.empty(N, K, C, dtype=torch.float32, device=x.device)
        stats = torch.empty(N, 3, dtype=torch.float32, device=x.device)
        if N:
            kernels.separable_norm_fwd[(N,)](
                x, l0_weight, l0_bias, weight, balance, degree_minus_one, out, stats, K, C, eps,
                BK=NORM_ROWS, BC=triton.next_power_of_2(C),
            )
        ctx.save_for_backward(x, l0_weight, l0_bias, weight, balance, degree_minus_one, stats)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, l0_weight, l0_bias, weight, balance, degree_minus_one, stats = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: differentiate the torch formula
            inputs = (x, l0_weight, l0_bias, weight)
            with torch.enable_grad():
                out = separable_layer_norm(*inputs, balance, degree_minus_one, ctx.eps)
            needed = [t for t, need in zip(inputs, ctx.needs_input_grad[:4]) if need]
            grads = iter(torch.autograd.grad(out, needed, grad, create_graph=True))
            return (*(next(grads) if need else None for need in ctx.needs_input_grad[:4]), None, None, None)
        grad = grad.contiguous()
        N, K, C = x.shape
        grad_x = torch.empty_like(x)
        products = torch.empty(N, K, C, dtype=torch.float32, device=x.device)  # grad * normalised x
        if N:
            kernels.separable_norm_bwd[(N,)](
                grad, x, l0_weight, weight, balance, degree_minus_one, stats, grad_x, products, K, C,
                BK=NORM_ROWS, BC=triton.next_power_of_2(C),
            )
        per_coefficient = products.sum(0)  # [K, C]
        grad_weight = torch.zeros_like(weight, dtype=torch.float32).index_add_(0, degree_minus_one, per_coefficient[1:])
        return (
            grad_x,
            per_coefficient[0].to(l0_weight.dtype),
            grad[:, 0].sum(0).to(l0_bias.dtype),
            grad_weight.to(weight.dtype),
            None, None, None,
        )


# --------------------------------------------------------------------------- the ops object
class TritonOps:
    """``EscnOps`` on Triton kernels (see ``escn.backend``)."""

    name = "triton"

    def gather_rotate(self, x: torch.Tensor, rotation: EdgeRotation, edges: EdgeSegments) -> torch.Tensor:
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            return _GatherRotate.apply(x.to(dtype).contiguous(), rotation.wigner.to(dtype).contiguous(), edges)

    def rotate_scatter(
        self,
        values: torch.Tensor,
        rotation: EdgeRotation,
        edges: EdgeSegments,
        alpha: torch.Tensor | None,
        num_nodes: int,
    ) -> torch.Tensor:
        dtype = _compute_dtype(values)
        with torch.autocast(values.device.type, enabled=False):
            if alpha is not None:
                alpha = alpha.contiguous()
            return _RotateScatter.apply(
                values.to(dtype).contiguous(), rotation.wigner.to(dtype).contiguous(), rotation.rescale,
                alpha, edges, num_nodes,
            )

    def grid_silu(self, x: torch.Tensor, to_grid: torch.Tensor, from_grid: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            return _GridSiLU.apply(
                x.to(dtype).contiguous(), to_grid.to(dtype).contiguous(), from_grid.to(dtype).contiguous()
            )

    def separable_layer_norm(self, x, l0_weight, l0_bias, weight, balance, degree_minus_one, eps):
        if x.dtype == torch.float64:  # the kernels compute in float32
            return separable_layer_norm(x, l0_weight, l0_bias, weight, balance, degree_minus_one, eps)
        with torch.autocast(x.device.type, enabled=False):
            return _SeparableLayerNorm.apply(
                x.contiguous(), l0_weight, l0_bias, weight.contiguous(), balance.to(torch.float32),
                degree_minus_one, eps,
            )

    def edge_chunks(self, num_edges: int, bytes_per_edge: int, device: torch.device) -> list[tuple[int, int]]:
        return edge_ranges(num_edges, num_edges)  # the kernels tile the edges themselves


TRITON_OPS = TritonOps()
