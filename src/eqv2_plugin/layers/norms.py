"""Equivariant normalisations of node features ``[N, (lmax+1)**2, C]``.

All three scale every degree by a rotation-invariant statistic, so they commute
with rotations; only the l=0 part is centred and biased. They run in float32
even under autocast (the paper's AMP recipe).

* ``layer_norm``    -- per degree: RMS over (m, channels), l=0 centred first.
* ``layer_norm_sh`` -- separable layer norm (SLN): l=0 through a standard
  LayerNorm; all l>0 share one RMS, each degree weighted 1/(2l+1), averaged over
  degrees and channels.
* ``rms_norm_sh``   -- l=0 centred, then one degree-balanced RMS over all l.
"""
from __future__ import annotations

import torch
from torch import nn

from eqv2_plugin.so3.layout import degree_of_node_coefficients

NORM_TYPES = ("layer_norm", "layer_norm_sh", "rms_norm_sh")


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _degree_balance(lmax: int, first_degree: int) -> torch.Tensor:
    """``[K]`` weights 1/(2l+1)/num_degrees for degrees ``first_degree..lmax``."""
    degrees = degree_of_node_coefficients(lmax)[first_degree**2 :]
    return 1.0 / (2 * degrees + 1).double() / (lmax + 1 - first_degree)


class EquivariantLayerNorm(nn.Module):
    """``layer_norm``: ``weight [lmax+1, C]``, ``bias [C]``."""

    def __init__(self, lmax: int, channels: int, eps: float = 1e-5):
        super().__init__()
        self.lmax, self.eps = lmax, eps
        self.weight = nn.Parameter(torch.ones(lmax + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        degrees = degree_of_node_coefficients(lmax)
        mean_over_m = torch.zeros(len(degrees), lmax + 1, dtype=torch.float64)
        mean_over_m[torch.arange(len(degrees)), degrees] = 1.0 / (2 * degrees + 1).double()
        self.register_buffer("mean_over_m", mean_over_m.to(torch.get_default_dtype()), persistent=False)
        self.register_buffer("degree", degrees, persistent=False)

    @torch.autocast("cuda", enabled=False)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _fp32(x)
        l0 = x[:, :1] - x[:, :1].mean(dim=2, keepdim=True)
        x = torch.cat([l0, x[:, 1:]], dim=1)
        per_degree = torch.einsum("nkc,kl->nlc", x.pow(2), self.mean_over_m.to(x.dtype)).mean(dim=2)
        inv = (per_degree + self.eps).pow(-0.5)  # [N, L+1]
        scale = inv[:, :, None] * self.weight[None]  # [N, L+1, C]
        out = x * scale[:, self.degree]
        return torch.cat([out[:, :1] + self.bias, out[:, 1:]], dim=1)


class SeparableLayerNorm(nn.Module):
    """``layer_norm_sh`` (SLN): ``l0_norm`` (LayerNorm(C)), ``weight [lmax, C]`` for l>0."""

    def __init__(self, lmax: int, channels: int, eps: float = 1e-5):
        super().__init__()
        self.lmax, self.eps = lmax, eps
        self.l0_norm = nn.LayerNorm(channels, eps=eps)
        self.weight = nn.Parameter(torch.ones(lmax, channels))
        if lmax > 0:
            self.register_buffer("balance", _degree_balance(lmax, 1).to(torch.get_default_dtype()), persistent=False)
            self.register_buffer("degree_minus_one", degree_of_node_coefficients(lmax)[1:] - 1, persistent=False)

    @torch.autocast("cuda", enabled=False)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _fp32(x)
        l0 = self.l0_norm(x[:, :1])
        if self.lmax == 0:
            return l0
        rest = x[:, 1:]
        ms = torch.einsum("nkc,k->nc", rest.pow(2), self.balance.to(x.dtype)).mean(dim=1)
        inv = (ms + self.eps).pow(-0.5)  # [N]
        return torch.cat([l0, rest * inv[:, None, None] * self.weight[self.degree_minus_one]], dim=1)


class EquivariantRMSNorm(nn.Module):
    """``rms_norm_sh``: ``weight [lmax+1, C]``, ``bias [C]`` (l=0)."""

    def __init__(self, lmax: int, channels: int, eps: float = 1e-5):
        super().__init__()
        self.lmax, self.eps = lmax, eps
        self.weight = nn.Parameter(torch.ones(lmax + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("balance", _degree_balance(lmax, 0).to(torch.get_default_dtype()), persistent=False)
        self.register_buffer("degree", degree_of_node_coefficients(lmax), persistent=False)

    @torch.autocast("cuda", enabled=False)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _fp32(x)
        l0 = x[:, :1] - x[:, :1].mean(dim=2, keepdim=True)
        x = torch.cat([l0, x[:, 1:]], dim=1)
        ms = torch.einsum("nkc,k->nc", x.pow(2), self.balance.to(x.dtype)).mean(dim=1)
        inv = (ms + self.eps).pow(-0.5)
        out = x * inv[:, None, None] * self.weight[self.degree]
        return torch.cat([out[:, :1] + self.bias, out[:, 1:]], dim=1)


def make_norm(norm_type: str, lmax: int, channels: int) -> nn.Module:
    if norm_type == "layer_norm":
        return EquivariantLayerNorm(lmax, channels)
    if norm_type == "layer_norm_sh":
        return SeparableLayerNorm(lmax, channels)
    if norm_type == "rms_norm_sh":
        return EquivariantRMSNorm(lmax, channels)
    raise ValueError(f"norm_type must be one of {NORM_TYPES}, got {norm_type!r}")
