"""Equivariant normalisations of node features ``[N, (lmax+1)**2, C]``.

All three scale every degree by a rotation-invariant statistic, so they commute
with rotations; only the l=0 part is centred and biased. They run in float32
even under autocast (the paper's AMP recipe).

* ``layer_norm``    -- per degree: RMS over (m, channels), l=0 centred first.
* ``layer_norm_sh`` -- separable layer norm (SLN): l=0 through a standard
  LayerNorm; all l>0 share one RMS, each degree weighted 1/(2l+1), averaged over
  degrees and channels.
* ``rms_norm_sh``   -- l=0 centred, then one degree-balanced RMS over all l.

Each ``forward(x, ops=None)`` takes the model's ``escn.backend.EscnOps``: SLN (the released
configs' norm) has a fused Triton kernel behind it; the other two ignore it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eqv2_plugin.so3.layout import degree_of_node_coefficients

NORM_TYPES = ("layer_norm", "layer_norm_sh", "rms_norm_sh")


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _degree_balance(lmax: int, first_degree: int) -> torch.Tensor:
    """``[K]`` weights 1/(2l+1)/num_degrees for degrees ``first_degree..lmax``."""
    degrees = degree_of_node_coefficients(lmax)[first_degree**2 :]
    return 1.0 / (2 * degrees + 1).double() / (lmax + 1 - first_degree)


def _split_l0(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, K, C]`` -> (l=0 ``[N, 1, C]``, l>0 ``[N, K-1, C]``). One split rather than two
    slices: its backward is one concatenation, where each slice's would zero-fill a full-size
    gradient and add the two."""
    return x.split([1, x.shape[1] - 1], dim=1)


def _add_l0_bias(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``[N, K, C]`` with ``bias [C]`` added to the l=0 coefficient only (equivariance)."""
    l0, rest = _split_l0(x)
    return torch.cat([l0 + bias, rest], dim=1)


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
    def forward(self, x: torch.Tensor, ops=None) -> torch.Tensor:
        x = _fp32(x)
        l0, rest = _split_l0(x)
        x = torch.cat([l0 - l0.mean(dim=2, keepdim=True), rest], dim=1)
        per_degree = torch.einsum("nkc,kl->nlc", x.pow(2), self.mean_over_m.to(x.dtype)).mean(dim=2)
        inv = (per_degree + self.eps).pow(-0.5)  # [N, L+1]
        scale = inv.unsqueeze(2) * self.weight  # [N, L+1, C]
        return _add_l0_bias(x * scale[:, self.degree], self.bias)


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
    def forward(self, x: torch.Tensor, ops=None) -> torch.Tensor:
        """``ops``: an ``escn.backend.EscnOps`` (its ``separable_layer_norm``; default: the formula here)."""
        if self.lmax == 0:
            return self.l0_norm(_fp32(x))
        args = (self.l0_norm.weight, self.l0_norm.bias, self.weight, self.balance, self.degree_minus_one, self.eps)
        return separable_layer_norm(x, *args) if ops is None else ops.separable_layer_norm(x, *args)


def separable_layer_norm(
    x: torch.Tensor,
    l0_weight: torch.Tensor,
    l0_bias: torch.Tensor,
    weight: torch.Tensor,
    balance: torch.Tensor,
    degree_minus_one: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """SLN of ``x [N, K, C]`` (K > 1), in float32 at least: l=0 through LayerNorm(``l0_weight``,
    ``l0_bias``); l>0 divided by one RMS over (k, c) with ``balance [K-1]`` weighting each
    coefficient, times ``weight [lmax, C]`` of its degree (``degree_minus_one [K-1]``)."""
    x = _fp32(x)
    l0, rest = _split_l0(x)
    ms = torch.einsum("nkc,k->nc", rest.pow(2), balance.to(x.dtype)).mean(dim=1)
    inv = (ms + eps).pow(-0.5)  # [N]
    l0 = F.layer_norm(l0, l0.shape[-1:], l0_weight, l0_bias, eps)
    return torch.cat([l0, rest * inv.view(-1, 1, 1) * weight[degree_minus_one]], dim=1)


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
    def forward(self, x: torch.Tensor, ops=None) -> torch.Tensor:
        x = _fp32(x)
        l0, rest = _split_l0(x)
        x = torch.cat([l0 - l0.mean(dim=2, keepdim=True), rest], dim=1)
        ms = torch.einsum("nkc,k->nc", x.pow(2), self.balance.to(x.dtype)).mean(dim=1)
        inv = (ms + self.eps).pow(-0.5)
        return _add_l0_bias(x * inv.view(-1, 1, 1) * self.weight[self.degree], self.bias)


def make_norm(norm_type: str, lmax: int, channels: int) -> nn.Module:
    if norm_type == "layer_norm":
        return EquivariantLayerNorm(lmax, channels)
    if norm_type == "layer_norm_sh":
        return SeparableLayerNorm(lmax, channels)
    if norm_type == "rms_norm_sh":
        return EquivariantRMSNorm(lmax, channels)
    raise ValueError(f"norm_type must be one of {NORM_TYPES}, got {norm_type!r}")
