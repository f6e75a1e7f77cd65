"""OC20-like test systems from our data generator, as fairchem batches."""
from __future__ import annotations

import numpy as np
import torch

from eqv2_plugin.data.oc20_like import build_system, draw_spec, system_rng

METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
ADSORBATES = ("O", "H", "OH", "CO", "N", "NH", "NH2", "CH", "CH2", "CH3")


def oc20_like_atoms(count: int, seed: int = 0, rattle: float = 0.05):
    """``count`` slab+adsorbate ``ase.Atoms`` (periodic, tagged, FixAtoms on the
    subsurface). Every atom is rattled, so that no two neighbour distances tie
    (fairchem's neighbour cap breaks ties by atom order, which would make the
    graph itself depend on orientation and atom order)."""
    systems = []
    for i in range(count):
        rng = system_rng(seed, 99, i)
        atoms = build_system(draw_spec(rng, i, METALS, ADSORBATES), rng)
        pos = atoms.get_positions() + rng.normal(scale=rattle, size=(len(atoms), 3))
        atoms.set_positions(pos, apply_constraint=False)
        systems.append(atoms)
    return systems


def adsorbate_cluster(seed: int = 0, size: int = 10):
    """The adsorbate and its nearest metal atoms, alone in a 40 A box (no constraints):
    small enough that no pair ever crosses a 12 A cutoff, so the energy is smooth."""
    import numpy as np

    full = oc20_like_atoms(1, seed=seed)[0]
    anchor = full.get_positions()[np.flatnonzero(full.get_tags() == 2)[0]]
    nearest = np.argsort(np.linalg.norm(full.get_positions() - anchor, axis=1))[:size]
    cluster = full[nearest]
    cluster.set_constraint()
    cluster.set_cell(np.eye(3) * 40.0)
    cluster.pbc = True
    cluster.center()
    return cluster


def to_batch(atoms_list, dtype: torch.dtype = torch.float32, cutoff: float = 6.0, max_neighbors: int = 20):
    """fairchem ``Batch`` of the systems (positions/cell in ``dtype``).

    fairchem's radius-graph search works in float32 only, so float64 batches
    carry a graph precomputed from a float32 copy (``edge_index``,
    ``cell_offsets``, ``neighbors``); models then need ``otf_graph=False``.
    """
    from fairchem.core.common.utils import radius_graph_pbc

    from eqv2_plugin.integration.batch import atoms_to_batch

    batch = atoms_to_batch(atoms_list, dtype)
    if dtype == torch.float64:
        single = atoms_to_batch(atoms_list, torch.float32)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            batch.edge_index, batch.cell_offsets, batch.neighbors = radius_graph_pbc(
                single, cutoff, max_neighbors, enforce_max_neighbors_strictly=True
            )
        finally:
            torch.set_default_dtype(previous)
    return batch


def rotated(atoms_list, rot: np.ndarray):
    """Copies of the systems rotated by ``rot`` (positions and cell)."""
    out = []
    for atoms in atoms_list:
        a = atoms.copy()
        a.set_cell(np.asarray(a.cell) @ rot.T, scale_atoms=False)
        a.set_positions(a.get_positions() @ rot.T, apply_constraint=False)
        out.append(a)
    return out
