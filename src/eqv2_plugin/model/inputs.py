"""Checking a batch and turning it into edges.

A batch is anything with the attributes of a fairchem / PyG ``Batch``:
``pos [N,3]``, ``atomic_numbers [N]``, ``batch [N]``, ``natoms [B]`` and, for
periodic systems, ``cell [B,3,3]``; precomputed graphs add ``edge_index [2,E]``
and ``cell_offsets [E,3]``.
"""
from __future__ import annotations

import torch

from eqv2_plugin.model.neighbors import radius_graph_pbc


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
    _check_no_duplicate_atoms(pos, data.batch)
    cell = getattr(data, "cell", None)
    if cell is not None and not torch.isfinite(cell).all():
        raise ValueError("EquiformerV2: cell contains NaN or inf; fix the input structure")
    return z


# fairchem's neighbour search drops pairs closer than 0.01 A without a word
OVERLAP_DISTANCE = 0.01


def _check_no_duplicate_atoms(pos: torch.Tensor, batch: torch.Tensor) -> None:
    """Reject atoms of one system closer than ``OVERLAP_DISTANCE`` (overlapping or
    duplicated atoms have no edge frame, and fairchem's graph code silently drops
    their edge). Every such pair shares a cell of one of the 8 grids of spacing
    ``2 * OVERLAP_DISTANCE`` shifted by half a cell per axis."""
    p = pos.detach().double() / (2 * OVERLAP_DISTANCE)
    for shift in range(8):
        offset = p.new_tensor([(shift >> k & 1) * 0.5 for k in range(3)])
        key = torch.cat([batch[:, None].to(p.dtype), torch.floor(p + offset)], dim=1)
        unique, inverse, counts = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
        if unique.shape[0] < key.shape[0]:
            dup = torch.nonzero(counts[inverse] > 1)[:, 0].tolist()
            raise ValueError(
                f"EquiformerV2: atoms {dup[:10]} are less than {2 * OVERLAP_DISTANCE:g} A apart "
                f"(overlapping or duplicated atoms); check the input structure"
            )


def compute_edges(model, data) -> tuple[torch.Tensor, torch.Tensor]:
    """``(edge_index [2, E], edge_vec [E, 3])`` with ``edge_vec = pos[src] - pos[tgt] + offset``.

    * ``otf_graph`` with periodic boundaries (every OC20/OC22 config): our
      linear-time radius graph (``model.neighbors``), edge for edge the graph
      fairchem 1.10 builds, without its all-pairs cost;
    * a batch that carries its graph (``otf_graph: False``) is used as stored;
    * the remaining cases (``use_pbc: False`` or ``use_pbc_single``) go through
      fairchem's own graph code, so they match fairchem's models exactly.
    """
    if model.otf_graph and model.use_pbc and not model.use_pbc_single:
        edge_index, offsets, _ = radius_graph_pbc(
            data.pos, data.cell, data.natoms, model.cutoff, model.max_neighbors,
            strict=model.enforce_max_neighbors_strictly, pbc=batch_pbc(data),
        )
        return edge_index, _edge_vectors(data, edge_index, offsets)
    if not model.otf_graph and getattr(data, "edge_index", None) is not None:
        offsets = getattr(data, "cell_offsets", None) if model.use_pbc else None
        if model.use_pbc and offsets is None:
            raise ValueError("EquiformerV2: a precomputed periodic graph needs cell_offsets in the batch")
        return data.edge_index, _edge_vectors(data, data.edge_index, offsets)
    try:
        from eqv2_plugin.integration.graph import fairchem_edges
    except ImportError as exc:
        raise ValueError(
            "EquiformerV2: this batch needs a graph built by fairchem-core (no stored edge_index, and "
            f"use_pbc=False or use_pbc_single=True), which cannot be imported ({exc}); install it or "
            "precompute the graph"
        ) from exc
    return fairchem_edges(model, data)


def batch_pbc(data) -> tuple[bool, bool, bool]:
    """Periodic directions of a batch: ``data.pbc [B, 3]`` if present (the same for every
    system, as fairchem requires), else all periodic."""
    pbc = getattr(data, "pbc", None)
    if pbc is None:
        return (True, True, True)
    pbc = torch.atleast_2d(torch.as_tensor(pbc)).bool()
    if bool((pbc.any(0) != pbc.all(0)).any()):
        raise ValueError(
            "EquiformerV2: the systems of this batch have different periodic directions (field `pbc`); "
            "batch systems with the same pbc together"
        )
    return tuple(bool(v) for v in pbc[0])


def _edge_vectors(data, edge_index: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    """``pos[src] - pos[tgt] + offsets @ cell`` (offsets in cell vectors, per edge)."""
    src, tgt = edge_index
    edge_vec = data.pos[src] - data.pos[tgt]
    if offsets is not None:
        cell = data.cell[data.batch[src]]  # [E, 3, 3]
        edge_vec = edge_vec + torch.bmm(offsets.to(cell.dtype)[:, None, :], cell)[:, 0]
    return edge_vec
