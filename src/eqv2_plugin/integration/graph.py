"""On-the-fly radius graphs through fairchem's neighbour search, so the edges are
exactly the ones fairchem's own models see (same cutoff, neighbour cap, tie
breaking and periodic images)."""
from __future__ import annotations

import torch


def radius_graph_edges(model, data) -> tuple[torch.Tensor, torch.Tensor]:
    """``(edge_index [2, E], edge_vec [E, 3])`` for ``model``'s cutoff and neighbour settings.

    ``model`` must have ``cutoff``, ``max_neighbors``, ``use_pbc``,
    ``use_pbc_single``, ``otf_graph`` and ``enforce_max_neighbors_strictly``.
    """
    try:
        from fairchem.core.models.base import GraphModelMixin
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "EquiformerV2: building the radius graph on the fly needs fairchem-core; either install it "
            "or pass batches with edge_index/cell_offsets and set otf_graph=False"
        ) from exc
    graph = GraphModelMixin.generate_graph(
        model, data, enforce_max_neighbors_strictly=model.enforce_max_neighbors_strictly
    )
    return graph.edge_index, graph.edge_distance_vec
