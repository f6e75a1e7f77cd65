"""SO(2)-equivariant linear maps on edge-frame features (eSCN convolution).

In the edge frame a rotation about the edge axis by angle t acts on the pair
(+m, -m) of each order m as a 2D rotation by m*t. The most general linear map
commuting with it mixes degrees and channels freely within one order, and acts
on the pair as multiplication by a complex number ``W_r + i W_i``:

    out(+m) = W_r x(+m) - W_i x(-m)
    out(-m) = W_r x(-m) + W_i x(+m)

Order m=0 is an ordinary linear map (with bias), which can also emit extra
invariant outputs (attention logits, gates). Optionally every input element is
first scaled by an edge-dependent radial weight (one per degree and channel,
shared by +m and -m).

Parameters:
    ``m0_linear``: Linear((lmax+1) C_in -> extra + (lmax+1) C_out), with bias;
    ``m_linears[m-1]``: Linear((lmax-m+1) C_in -> 2 (lmax-m+1) C_out), no bias
    (first half W_r, second half W_i, output ordered (degree, channel));
    ``radial``: optional RadialMLP producing ``sum_m (lmax-m+1) C_in`` weights.

The GEMMs go through ``layers.kept_linear.linear``: inside a recomputed region that keeps
their outputs, the backward pass's recomputation does not redo them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from eqv2_plugin.layers.kept_linear import linear
from eqv2_plugin.layers.radial import RadialMLP
from eqv2_plugin.so3.layout import EdgeLayout


class SO2Convolution(nn.Module):
    """``x [E, K, C_in]`` (edge layout) -> ``([E, K, C_out], extra [E, n_extra] | None)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        layout: EdgeLayout,
        radial_channels: list[int] | None = None,
        extra_m0_outputs: int = 0,
    ):
        super().__init__()
        self.layout = layout
        self.in_channels, self.out_channels = in_channels, out_channels
        self.extra_m0_outputs = extra_m0_outputs
        L, M = layout.lmax, layout.mmax
        self.m0_linear = nn.Linear((L + 1) * in_channels, extra_m0_outputs + (L + 1) * out_channels)
        self.m_linears = nn.ModuleList()
        for m in range(1, M + 1):
            n = layout.m_size(m)
            lin = nn.Linear(n * in_channels, 2 * n * out_channels, bias=False)
            with torch.no_grad():
                lin.weight.mul_(1.0 / math.sqrt(2.0))  # two real maps feed each output
            self.m_linears.append(lin)
        self.radial = None
        if radial_channels is not None:
            num_weights = sum(layout.m_size(m) for m in range(M + 1)) * in_channels
            self.radial = RadialMLP([*radial_channels, num_weights])

    def complex_weights(self) -> list[torch.Tensor]:
        """Per order m = 1..mmax, ``[2 n C_out, 2 n C_in]`` (n = lmax - m + 1): the map as a real
        matrix acting on ``(+m | -m)``: ``[[W_r, -W_i], [W_i, W_r]]``. Built per forward call;
        a caller that runs the edges in chunks builds them once and passes them to each."""
        out = []
        for lin in self.m_linears:
            w_r, w_i = lin.weight.chunk(2, dim=0)  # [W_r; W_i] itself: the columns acting on +m
            out.append(torch.cat([lin.weight, torch.cat([-w_i, w_r])], dim=1))
        return out

    def forward(
        self,
        x: torch.Tensor,
        edge_scalars: torch.Tensor | None = None,
        complex_weights: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        E = x.shape[0]
        L, M = self.layout.lmax, self.layout.mmax
        c_in, c_out = self.in_channels, self.out_channels
        sizes = [self.layout.m_size(m) for m in range(M + 1)]
        # one split per tensor: its backward is a single concatenation, where slicing
        # would allocate and zero-fill a full-size gradient per slice
        blocks = torch.split(x, [sizes[0]] + [2 * n for n in sizes[1:]], dim=1)
        if complex_weights is None:
            complex_weights = self.complex_weights()
        if self.radial is not None:
            weights = torch.split(self.radial(edge_scalars), [n * c_in for n in sizes], dim=1)
        else:
            weights = None

        x0 = blocks[0].reshape(E, (L + 1) * c_in)
        if weights is not None:
            x0 = x0 * weights[0]
        y0 = linear(x0, self.m0_linear.weight, self.m0_linear.bias)
        if self.extra_m0_outputs:
            extra, y0 = torch.split(y0, [self.extra_m0_outputs, (L + 1) * c_out], dim=1)
        else:
            extra = None
        out = [y0.reshape(E, L + 1, c_out)]

        for m in range(1, M + 1):
            n = sizes[m]
            xm = blocks[m].reshape(E, 2, n * c_in)  # [edge, (+m | -m), (degree, channel)]
            if weights is not None:
                xm = xm * weights[m].unsqueeze(1)
            # (+m, -m) in, (+m, -m) out in one GEMM: same FLOPs as multiplying both halves by
            # [W_r; W_i] and combining them, without the per-edge split / add / stack
            ym = linear(xm.reshape(E, 2 * n * c_in), complex_weights[m - 1])
            out.append(ym.reshape(E, 2 * n, c_out))
        return torch.cat(out, dim=1), extra
