"""Output heads: energy (invariant) and forces (direct or as -dE/dpos)."""
from __future__ import annotations

import torch
from torch import nn

from eqv2_plugin.model.graph import EdgeGraph
from eqv2_plugin.model.recompute import recompute_in_backward

ENERGY_REDUCTIONS = ("sum", "mean")


class EnergyHead(nn.Module):
    """Per-atom energies from the l=0 output of a feed-forward network, summed per
    graph and divided by ``avg_num_nodes`` (``reduce="sum"``) or by the number of
    atoms (``"mean"``). ``-> [B]``."""

    def __init__(self, backbone, reduce: str = "sum"):
        super().__init__()
        if reduce not in ENERGY_REDUCTIONS:
            raise ValueError(f"EquiformerV2: energy reduce must be one of {ENERGY_REDUCTIONS}, got {reduce!r}")
        self.reduce = reduce
        self.avg_num_nodes = backbone.avg_num_nodes
        self.ffn = backbone.make_ffn(1)

    def forward(self, node_embedding: torch.Tensor, graph: EdgeGraph, natoms: torch.Tensor) -> torch.Tensor:
        per_atom = self.ffn(node_embedding)[:, 0, 0]
        energy = per_atom.new_zeros(graph.num_graphs).index_add(0, graph.batch, per_atom)
        if self.reduce == "sum":
            return energy / self.avg_num_nodes
        return energy / natoms.to(energy.dtype)


class DirectForceHead(nn.Module):
    """Forces as the l=1 output of one more equivariant graph attention with a
    single output channel (EquiformerV2's head). ``-> [N, 3]``.

    In e3nn's basis the l=1 coefficients are Cartesian (x, y, z) components.
    """

    def __init__(self, backbone):
        super().__init__()
        self.attention = backbone.make_attention(1, alpha_drop=0.0)
        self.activation_checkpoint = backbone.activation_checkpoint

    def forward(self, node_embedding: torch.Tensor, graph: EdgeGraph) -> torch.Tensor:
        return attention_forces(self.attention, node_embedding, graph, self.activation_checkpoint)


def attention_forces(attention, node_embedding: torch.Tensor, graph: EdgeGraph, checkpointing: bool) -> torch.Tensor:
    """``[N, 3]``: the l=1 coefficients of a one-channel attention output."""
    if checkpointing and torch.is_grad_enabled():
        out = recompute_in_backward(attention, node_embedding, graph)
    else:
        out = attention(node_embedding, graph)
    return out[:, 1:4, 0]


def gradient_forces(energy: torch.Tensor, pos: torch.Tensor, training: bool) -> torch.Tensor:
    """``-dE/dpos [N, 3]``; keeps the graph for a second derivative while training."""
    if not pos.requires_grad:
        raise RuntimeError("EquiformerV2: gradient forces need pos.requires_grad (set before building the graph)")
    with torch.enable_grad():  # also under the trainers' torch.no_grad() (validate / predict)
        (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=training, allow_unused=True)
    if grad is None:  # no edge and no dependence on positions
        return torch.zeros_like(pos)
    return -grad
