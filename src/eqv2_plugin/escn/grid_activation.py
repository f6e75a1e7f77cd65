"""SiLU on an S2 grid without keeping the grid: ``from_grid @ silu(to_grid @ x)``.

The grid holds ``G`` points (324 for the released 18x18 grids) per coefficient
set, so the naive version materialises ``[E, G, C]`` per layer (hundreds of MB
per layer for a couple of OC20 systems) and autograd keeps it for the backward
pass. Here the grid is built chunk by chunk of rows, and the backward pass
recomputes it instead of storing it: memory is O(chunk) whatever the number of
edges. (Batched small GEMMs per chunk measured faster on CPU than one large
GEMM in a transposed ``[K, rows*C]`` layout, whose transposes cost more than
they save.)

The backward is written with differentiable torch operations, so second
derivatives (training with gradient forces) work too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# rows (edges or nodes) per chunk; ~G * CHUNK * C floats live at a time
DEFAULT_CHUNK = 128


def _chunks(n: int, chunk: int):
    for start in range(0, n, chunk):
        yield start, min(start + chunk, n)


def _grid(x: torch.Tensor, to_grid: torch.Tensor) -> torch.Tensor:
    """``x [R, K, C]`` -> grid values ``[R, G, C]``."""
    return torch.matmul(to_grid, x)


def _back(values: torch.Tensor, from_grid: torch.Tensor) -> torch.Tensor:
    """grid values ``[R, G, C]`` -> coefficients ``[R, K, C]``."""
    return torch.matmul(from_grid, values)


def grid_silu_grad(
    grad_out: torch.Tensor, x: torch.Tensor, to_grid: torch.Tensor, from_grid: torch.Tensor
) -> torch.Tensor:
    """``d/dx`` of ``grid_silu`` against ``grad_out``, in differentiable operations (double
    backward; aten's one-pass ``silu_backward`` has no derivative in torch 2.4)."""
    pre = _grid(x, to_grid)
    sig = torch.sigmoid(pre)
    return _back(torch.matmul(from_grid.t(), grad_out) * sig * (1 + pre * (1 - sig)), to_grid.t())


def grid_silu_reference(x: torch.Tensor, to_grid: torch.Tensor, from_grid: torch.Tensor) -> torch.Tensor:
    """The plain definition: ``[R, K, C] -> [R, K, C]``."""
    return torch.matmul(from_grid, F.silu(torch.matmul(to_grid, x)))


class _GridSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, to_grid, from_grid, chunk):
        ctx.save_for_backward(x, to_grid, from_grid)
        ctx.chunk = chunk
        out = torch.empty_like(x)
        for s, e in _chunks(x.shape[0], chunk):
            out[s:e] = _back(F.silu(_grid(x[s:e], to_grid)), from_grid)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, to_grid, from_grid = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward
            return grid_silu_grad(grad_out, x, to_grid, from_grid), None, None, None
        grad_x = torch.empty_like(x)
        for s, e in _chunks(x.shape[0], ctx.chunk):
            upstream = torch.matmul(from_grid.t(), grad_out[s:e])  # [R, G, C]
            # silu_backward: upstream * silu'(pre) in one pass over the grid
            grad_x[s:e] = _back(torch.ops.aten.silu_backward(upstream, _grid(x[s:e], to_grid)), to_grid.t())
        return grad_x, None, None, None


def grid_silu(
    x: torch.Tensor, to_grid: torch.Tensor, from_grid: torch.Tensor, chunk: int = DEFAULT_CHUNK
) -> torch.Tensor:
    """``from_grid @ silu(to_grid @ x)`` for ``x [R, K, C]``, ``to_grid [G, K]``, ``from_grid [K, G]``.

    Chunked over rows; the grid is recomputed in the backward pass. The grid
    matrices are constants (no gradient).
    """
    to_grid, from_grid = to_grid.to(x.dtype), from_grid.to(x.dtype)
    if x.requires_grad and torch.is_grad_enabled():
        return _GridSiLU.apply(x, to_grid, from_grid, chunk)
    out = torch.empty_like(x)
    for s, e in _chunks(x.shape[0], chunk):
        out[s:e] = _back(F.silu(_grid(x[s:e], to_grid)), from_grid)
    return out
