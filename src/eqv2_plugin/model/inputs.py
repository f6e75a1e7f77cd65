"""Checking a batch and turning it into edges.

A batch is anything with the attributes of a fairchem / PyG ``Batch``:
``pos [N,3]``, ``atomic_numbers [N]``, ``batch [N]``, ``natoms [B]`` and, for
periodic systems, ``cell [B,3,3]``; precomputed graphs add ``edge_index [2,E]``
and ``cell_offsets [E,3]``.
"""
from __future__ import annotations

import torch


def check_inputs(data, max_num_elements: int) -> torch.Tensor:
    """Validate a batch; return the atomic numbers as ``long [N]``."""
    for field in ("pos", "atomic_numbers", "natoms"):
        if getattr(data, field, None) is None:
            raise ValueError(f"EquiformerV2: the batch has no '{field}'")
    pos = data.pos
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"EquiformerV2: pos must have shape [N, 3], got {tuple(pos.shape)}")
    if pos.shape[0] == 0:
        raise ValueError("EquiformerV2: the batch has no atoms (empty structure); remove empty systems from the data")
    if not torch.isfinite(pos).all():
        bad = torch.nonzero(~torch.isfinite(pos).all(dim=1))[:, 0].tolist()
        raise ValueError(
            f"EquiformerV2: pos contains NaN or inf for atoms {bad[:10]}"
            f"{' ...' if len(bad) > 10 else ''}; fix the input structure (or a diverged relaxation)"
        )
    z = data.atomic_numbers.long()
    if z.numel() and (int(z.min()) < 0 or int(z.max()) >= max_num_elements):
        bad = int(z.max()) if int(z.max()) >= max_num_elements else int(z.min())
        raise ValueError(
            f"EquiformerV2: atomic number {bad} is outside [0, max_num_elements={max_num_elements}); "
            f"raise max_num_elements in the model config (a new element needs new, untrained embeddings)"
        )
    if getattr(data, "batch", None) is None:
        data.batch = torch.zeros_like(z)
    cell = getattr(data, "cell", None)
    if cell is not None and not torch.isfinite(cell).all():
        raise ValueError("EquiformerV2: cell contains NaN or inf; fix the input structure")
    return z


def compute_edges(model, data) -> tuple[torch.Tensor, torch.Tensor]:
    """``(edge_index [2, E], edge_vec [E, 3])`` with ``edge_vec = pos[src] - pos[tgt] + offset``.

    Uses the batch's own graph when ``model.otf_graph`` is False and it has one;
    otherwise builds a radius graph with fairchem's neighbour search (the only
    place the core model calls into fairchem, imported lazily).
    """
    has_graph = getattr(data, "edge_index", None) is not None
    if not model.otf_graph and has_graph:
        edge_index = data.edge_index
        src, tgt = edge_index
        edge_vec = data.pos[src] - data.pos[tgt]
        if model.use_pbc:
            offsets = getattr(data, "cell_offsets", None)
            if offsets is None:
                raise ValueError("EquiformerV2: otf_graph=False with use_pbc=True needs cell_offsets in the batch")
            cell = data.cell[data.batch[src]]  # [E, 3, 3]
            edge_vec = edge_vec + torch.bmm(offsets.to(cell.dtype)[:, None, :], cell)[:, 0]
        return edge_index, edge_vec
    from eqv2_plugin.integration.graph import radius_graph_edges

    return radius_graph_edges(model, data)
