"""Node-wise feed-forward network of EquiformerV2."""
from __future__ import annotations

import torch
from torch import nn

from eqv2_plugin.escn import backend
from eqv2_plugin.layers.activations import GateActivation, S2Activation, SeparableS2Activation
from eqv2_plugin.layers.linear import DegreeWiseLinear
from eqv2_plugin.model.recompute import recompute_in_backward
from eqv2_plugin.so3.grid import s2_grid_matrices
from eqv2_plugin.so3.layout import degree_of_node_coefficients

# The grid MLP runs on chunks of nodes. On the CPU, GRID_CHUNK nodes (G * GRID_CHUNK * F floats
# live at a time, cache-sized). On a GPU (escn.backend.launch_bound), as many nodes as fit
# GPU_GRID_BYTES per grid tensor: every chunk adds its own operator launches and
# recomputation bookkeeping, while one 8-system OC20 batch's whole grid is ~70 MB.
GRID_CHUNK = 128
GPU_GRID_BYTES = 512 * 2**20


def grid_chunk_rows(h: torch.Tensor, grid_points: int) -> int:
    """Nodes per chunk of the grid MLP for features ``h [N, K, F]``."""
    if not backend.launch_bound(h.device):
        return GRID_CHUNK
    return max(1, GPU_GRID_BYTES // (grid_points * h.shape[2] * h.element_size()))


class FeedForward(nn.Module):
    """``[N, (L+1)^2, C_in] -> [N, (L+1)^2, C_out]`` through ``hidden`` channels.

    Variants (EquiformerV2's flags):
      * ``use_grid_mlp`` (all released configs): project the hidden features
        onto the S2 grid, apply a 3-layer bias-free MLP (SiLU) per grid point,
        project back; with ``use_sep_s2_act`` the l=0 output is replaced by
        ``SiLU(Linear(x_l0))`` (the separable scalar path).
      * otherwise a gate, separable S2 or plain S2 activation between the two
        degree-wise linear maps.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        lmax: int,
        grid_resolution: int | None,
        use_gate_act: bool = False,
        use_grid_mlp: bool = False,
        use_sep_s2_act: bool = True,
    ):
        super().__init__()
        self.use_grid_mlp, self.use_gate_act, self.use_sep_s2_act = use_grid_mlp, use_gate_act, use_sep_s2_act
        self.lin_in = DegreeWiseLinear(in_channels, hidden_channels, lmax)
        self.scalar_mlp = self.gate_linear = self.grid_mlp = self.act = None
        if use_grid_mlp:
            if use_sep_s2_act:
                self.scalar_mlp = nn.Sequential(nn.Linear(in_channels, hidden_channels), nn.SiLU())
            self.grid_mlp = nn.Sequential(
                nn.Linear(hidden_channels, hidden_channels, bias=False),
                nn.SiLU(),
                nn.Linear(hidden_channels, hidden_channels, bias=False),
                nn.SiLU(),
                nn.Linear(hidden_channels, hidden_channels, bias=False),
            )
            to_grid, from_grid = s2_grid_matrices(lmax, lmax, grid_resolution)
            dtype = torch.get_default_dtype()
            self.register_buffer("to_grid", to_grid.to(dtype), persistent=False)
            self.register_buffer("from_grid", from_grid.to(dtype), persistent=False)
        elif use_gate_act:
            self.gate_linear = nn.Linear(in_channels, lmax * hidden_channels)
            self.act = GateActivation(degree_of_node_coefficients(lmax), lmax)
        elif use_sep_s2_act:
            self.gate_linear = nn.Linear(in_channels, hidden_channels)
            self.act = SeparableS2Activation(*s2_grid_matrices(lmax, lmax, grid_resolution))
        else:
            self.act = S2Activation(*s2_grid_matrices(lmax, lmax, grid_resolution))
        self.lin_out = DegreeWiseLinear(hidden_channels, out_channels, lmax)

    def _grid_mlp(self, h: torch.Tensor) -> torch.Tensor:
        """``[R, (L+1)^2, F]`` -> grid ``[R, G, F]`` -> pointwise MLP -> back."""
        return torch.matmul(self.from_grid.to(h.dtype), self.grid_mlp(torch.matmul(self.to_grid.to(h.dtype), h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x[:, 0]
        h = self.lin_in(x)
        if self.use_grid_mlp:
            # chunks of nodes; while training, each chunk's grid is recomputed in the backward
            # pass rather than stored (the grid is G = 324 times larger than the coefficients)
            parts = []
            rows = grid_chunk_rows(h, self.to_grid.shape[0])
            for s in range(0, h.shape[0], rows):
                chunk = h[s : s + rows]
                if torch.is_grad_enabled() and chunk.requires_grad:
                    parts.append(recompute_in_backward(self._grid_mlp, chunk))
                else:
                    parts.append(self._grid_mlp(chunk))
            h = torch.cat(parts) if len(parts) != 1 else parts[0]
            if self.scalar_mlp is not None:
                h = torch.cat([self.scalar_mlp(x0).unsqueeze(1), h[:, 1:]], dim=1)
        elif self.gate_linear is not None:
            h = self.act(self.gate_linear(x0), h)
        else:
            h = self.act(h)
        return self.lin_out(h)
