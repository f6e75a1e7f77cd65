"""Input embeddings: atom types on l=0 and the edge-degree embedding."""
from __future__ import annotations

import torch
from torch import nn

from eqv2_plugin.layers.radial import RadialMLP, atom_pair_embeddings, with_atom_pair
from eqv2_plugin.model.graph import EdgeGraph


class EdgeDegreeEmbedding(nn.Module):
    """Initial l>0 features from the neighbourhood geometry: ``-> [N, (L+1)^2, C]``.

    A radial MLP of each edge's scalars gives m=0 coefficients for every degree
    in the edge frame (an SO(2) linear map of a constant input); they are
    rotated back to the global frame, summed at the target and divided by
    ``avg_degree``.
    """

    def __init__(
        self,
        channels: int,
        lmax: int,
        edge_channels_list: list[int],
        max_num_elements: int,
        use_atom_edge_embedding: bool,
        avg_degree: float,
    ):
        super().__init__()
        self.channels, self.lmax, self.avg_degree = channels, lmax, avg_degree
        radial_channels, self.src_embedding, self.tgt_embedding = atom_pair_embeddings(
            edge_channels_list, max_num_elements, use_atom_edge_embedding
        )
        self.radial = RadialMLP([*radial_channels, (lmax + 1) * channels])

    def forward(self, graph: EdgeGraph) -> torch.Tensor:
        edge_in = graph.edge_scalars
        if self.src_embedding is not None:
            edge_in = with_atom_pair(
                edge_in, graph.atomic_numbers, graph.edge_index, self.src_embedding, self.tgt_embedding
            )
        m0 = self.radial(edge_in).reshape(-1, self.lmax + 1, self.channels)
        # m=0 coefficients rotated back and summed at each target: [N, (L+1)^2, C]
        out = graph.ops.rotate_scatter(m0, graph.rotation, graph.edges, None, graph.num_nodes)
        return out / self.avg_degree
