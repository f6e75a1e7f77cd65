"""Edges through fairchem's own graph code (``GraphModelMixin.generate_graph``), so
they are exactly the ones fairchem's models see: same cutoff, neighbour cap,
tie breaking, periodic images and offset arithmetic, on the fly or stored.

Importing this module raises ImportError when fairchem is not installed.
"""
from __future__ import annotations

import torch
from fairchem.core.models.base import GraphModelMixin


def fairchem_edges(model, data) -> tuple[torch.Tensor, torch.Tensor]:
    """``(edge_index [2, E], edge_vec [E, 3])`` for ``model``'s graph settings.

    ``model`` must have ``cutoff``, ``max_neighbors``, ``use_pbc``,
    ``use_pbc_single``, ``otf_graph`` and ``enforce_max_neighbors_strictly``.
    """
    graph = GraphModelMixin.generate_graph(
        model, data, enforce_max_neighbors_strictly=model.enforce_max_neighbors_strictly
    )
    return graph.edge_index, graph.edge_distance_vec
