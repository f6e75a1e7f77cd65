"""Equivariant graph attention (EquiformerV2 section 3): SO(2) convolutions in
edge frames, attention re-normalisation, and a separable S2 (or gate / S2)
activation on the messages."""
from __future__ import annotations

import math

import torch
from torch import nn

from eqv2_plugin.escn import backend
from eqv2_plugin.escn.so2 import SO2Convolution
from eqv2_plugin.layers.activations import GateActivation, S2Activation, SeparableS2Activation, SmoothLeakyReLU
from eqv2_plugin.layers.linear import DegreeWiseLinear
from eqv2_plugin.layers.radial import RadialMLP, atom_pair_embeddings, with_atom_pair
from eqv2_plugin.model.graph import EdgeGraph, segment_softmax
from eqv2_plugin.model.recompute import recompute_in_backward
from eqv2_plugin.so3.grid import s2_grid_matrices
from eqv2_plugin.so3.layout import EdgeLayout


class EdgeAttention(nn.Module):
    """``x [N, (L+1)^2, C]`` -> ``[N, (L+1)^2, out_channels]``.

    Per edge: concatenate source and target features, rotate into the edge
    frame, SO(2) convolution (radial weights from the edge scalars) producing a
    hidden message plus invariant attention logits and activation scalars,
    activation, second SO(2) convolution to ``heads x value`` channels. Logits
    go through LayerNorm ("attention re-normalisation"), a smooth leaky ReLU
    and a per-head dot product, then a softmax over each target's incoming
    edges. Weighted values are rotated back, summed at the target and
    projected degree-wise.
    """

    def __init__(
        self,
        sphere_channels: int,
        hidden_channels: int,
        num_heads: int,
        alpha_channels: int,
        value_channels: int,
        out_channels: int,
        layout: EdgeLayout,
        edge_channels_list: list[int],
        max_num_elements: int,
        grid_resolution: int | None,
        use_atom_edge_embedding: bool = True,
        use_m_share_rad: bool = False,
        use_attn_renorm: bool = True,
        use_gate_act: bool = False,
        use_sep_s2_act: bool = True,
        alpha_drop: float = 0.0,
        recompute_edges: bool = True,
    ):
        super().__init__()
        self.recompute_edges = recompute_edges
        L = layout.lmax
        self.layout = layout
        self.num_heads, self.alpha_channels, self.value_channels = num_heads, alpha_channels, value_channels
        self.use_gate_act, self.use_sep_s2_act = use_gate_act, use_sep_s2_act
        self.use_m_share_rad = use_m_share_rad
        radial_channels, self.src_embedding, self.tgt_embedding = atom_pair_embeddings(
            edge_channels_list, max_num_elements, use_atom_edge_embedding
        )

        if use_gate_act:
            num_act_scalars = L * hidden_channels
        elif use_sep_s2_act:
            num_act_scalars = hidden_channels
        else:
            num_act_scalars = 0
        self.num_logits = num_heads * alpha_channels
        if use_m_share_rad:
            # one radial weight per (degree, channel), applied before the rotation
            self.shared_radial = RadialMLP([*radial_channels, 2 * sphere_channels * (L + 1)])
            self.register_buffer("edge_degree", layout.degree.clone(), persistent=False)
        self.conv1 = SO2Convolution(
            2 * sphere_channels,
            hidden_channels,
            layout,
            radial_channels=None if use_m_share_rad else radial_channels,
            extra_m0_outputs=self.num_logits + num_act_scalars,
        )
        self.logit_norm = nn.LayerNorm(alpha_channels) if use_attn_renorm else nn.Identity()
        self.logit_act = SmoothLeakyReLU(0.2)
        bound = 1.0 / math.sqrt(alpha_channels)
        self.logit_weight = nn.Parameter(torch.empty(num_heads, alpha_channels).uniform_(-bound, bound))
        self.alpha_dropout = nn.Dropout(alpha_drop) if alpha_drop > 0.0 else None

        if use_gate_act:
            self.act = GateActivation(layout.degree, L)
        else:
            to_grid, from_grid = s2_grid_matrices(L, layout.mmax, grid_resolution, layout.node_index)
            self.act = (SeparableS2Activation if use_sep_s2_act else S2Activation)(to_grid, from_grid)
        self.conv2 = SO2Convolution(hidden_channels, num_heads * value_channels, layout)
        self.out_proj = DegreeWiseLinear(num_heads * value_channels, out_channels, L)

    def edge_inputs(self, graph: EdgeGraph) -> torch.Tensor:
        """``[E, D]`` invariant inputs of the radial functions."""
        if self.src_embedding is None:
            return graph.edge_scalars
        return with_atom_pair(
            graph.edge_scalars, graph.atomic_numbers, graph.edge_index, self.src_embedding, self.tgt_embedding
        )

    def edge_messages(self, x: torch.Tensor, edge_in: torch.Tensor, graph: EdgeGraph, conv1_weights=None):
        """Gather, rotate, radial-weighted first SO(2) convolution, activation:
        ``-> (hidden [E, K, hidden], logits [E, H*A])``."""
        msg = graph.ops.gather_rotate(x, graph.rotation, graph.edges)  # [E, K, 2C]
        if self.use_m_share_rad:
            # per-degree weights commute with the block-diagonal rotation: apply them in the edge frame
            w = self.shared_radial(edge_in).reshape(msg.shape[0], self.layout.lmax + 1, -1)
            msg = msg * w[:, self.edge_degree]
        hidden, extra = self.conv1(msg, None if self.use_m_share_rad else edge_in, conv1_weights)
        logits, act_scalars = extra.split([self.num_logits, extra.shape[1] - self.num_logits], dim=1)
        if self.use_gate_act:
            hidden = self.act(act_scalars, hidden)
        elif self.use_sep_s2_act:
            hidden = self.act(act_scalars, hidden, graph.ops)
        else:
            hidden = self.act(hidden, graph.ops)
        return hidden, logits

    def edge_values(self, x: torch.Tensor, edge_in: torch.Tensor, graph: EdgeGraph, conv_weights=(None, None)):
        """Everything per edge before the softmax: ``-> (values [E, K, H*V], logits [E, H*A])``;
        ``conv_weights``: both SO(2) convolutions' ``complex_weights()`` when already built."""
        if self.recompute_edges and torch.is_grad_enabled() and (x.requires_grad or edge_in.requires_grad):
            # the rotated messages [E, K, 2C], the radial weights, their products and the
            # activation's input are the largest tensors of a layer and cheap to rebuild:
            # recompute them in the backward pass (conv2 keeps its own input, the activated messages).
            # On a GPU conv1's outputs ([E, K, hidden] and the logits, a third of its input) are kept,
            # so that the recomputation skips its GEMMs; on the CPU they would cost the memory target.
            keep = backend.launch_bound(x.device)
            hidden, logits = recompute_in_backward(
                self.edge_messages, x, edge_in, graph, conv_weights[0], keep_linear_outputs=keep
            )
        else:
            hidden, logits = self.edge_messages(x, edge_in, graph, conv_weights[0])
        values, _ = self.conv2(hidden, None, conv_weights[1])
        return values, logits

    def forward(self, x: torch.Tensor, graph: EdgeGraph) -> torch.Tensor:
        E = graph.edge_index.shape[1]
        edge_in = self.edge_inputs(graph)
        # Without an autograd graph every per-edge intermediate dies within its chunk, so chunks
        # bound the working set. While training, autograd keeps each chunk's saved tensors until
        # the backward pass: chunked, those are heap blocks under glibc's mmap threshold, and the
        # heap fragmented over steps (31M, 3 steps: peak RSS +2.47 GB chunked vs +1.88 GB whole).
        ranges = [(0, E)]
        if not (torch.is_grad_enabled() and (x.requires_grad or edge_in.requires_grad)):
            # the gathered [E, S, 2C] messages are the widest per-edge tensor
            ranges = graph.ops.edge_chunks(E, 2 * x.shape[1] * x.shape[2] * x.element_size(), x.device)
        if len(ranges) == 1:
            values, logits = self.edge_values(x, edge_in, graph)
        else:
            weights = (self.conv1.complex_weights(), self.conv2.complex_weights())  # once for all chunks
            parts = [self.edge_values(x, edge_in[s:t], graph.narrow(s, t), weights) for s, t in ranges]
            values = torch.cat([v for v, _ in parts])
            logits = torch.cat([a for _, a in parts])
            del parts

        logits = self.logit_act(self.logit_norm(logits.reshape(E, self.num_heads, self.alpha_channels)))
        logits = torch.einsum("eha,ha->eh", logits, self.logit_weight)
        alpha = segment_softmax(logits, graph.target, graph.num_nodes)
        if self.alpha_dropout is not None:
            alpha = self.alpha_dropout(alpha)
        # weight by alpha, rotate back, sum at the targets: [N, (L+1)^2, H*V]
        out = graph.ops.rotate_scatter(values, graph.rotation, graph.edges, alpha, graph.num_nodes)
        return self.out_proj(out)
