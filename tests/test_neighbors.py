"""Our linear-time periodic radius graph is fairchem 1.10's graph, edge for edge,
and agrees with a brute-force enumeration of periodic images."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111

from _systems import oc20_like_atoms
from eqv2_plugin.integration.batch import atoms_to_batch
from eqv2_plugin.model.neighbors import radius_graph_pbc


def _fairchem(batch, radius, cap, strict, pbc=None):
    from fairchem.core.common.utils import radius_graph_pbc as reference

    return reference(batch, radius, cap, enforce_max_neighbors_strictly=strict, pbc=pbc)


def _ours(batch, radius, cap, strict, pbc=(True, True, True)):
    return radius_graph_pbc(batch.pos, batch.cell, batch.natoms, radius, cap, strict, pbc)


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("count, radius, cap", [(3, 12.0, 20), (2, 6.0, 20), (4, 5.0, 8), (2, 8.0, 200)])
def test_same_graph_as_fairchem(count, radius, cap, strict):
    batch = atoms_to_batch(oc20_like_atoms(count, seed=count), torch.float32)
    edge_index, offsets, neighbors = _ours(batch, radius, cap, strict)
    ref_index, ref_offsets, ref_neighbors = _fairchem(batch, radius, cap, strict)
    assert edge_index.shape[1] > 0
    assert torch.equal(edge_index, ref_index)  # same edges in the same order
    assert torch.equal(offsets, ref_offsets.to(offsets.dtype))
    assert torch.equal(neighbors, ref_neighbors)


def test_slab_periodic_in_plane_only():
    atoms = oc20_like_atoms(2, seed=7)
    batch = atoms_to_batch(atoms, torch.float32)
    ours = _ours(batch, 10.0, 30, True, pbc=(True, True, False))
    ref = _fairchem(batch, 10.0, 30, True, pbc=[True, True, False])
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1].to(ours[1].dtype))
    assert ours[1][:, 2].abs().max() == 0  # no images along z


def test_unwrapped_positions():
    """Atoms outside their cell (unwrapped trajectories) get the same graph."""
    atoms = oc20_like_atoms(1, seed=2)[0]
    atoms.positions[::3] += atoms.cell[0] * 1.3 - atoms.cell[1] * 0.6
    batch = atoms_to_batch([atoms], torch.float32)
    ours, ref = _ours(batch, 6.0, 20, False), _fairchem(batch, 6.0, 20, False)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[2], ref[2])


def test_degenerate_neighbours_in_a_crystal():
    """fcc Cu: 12 nearest, 6 second, 24 third neighbours, all exactly tied. Without the strict cap
    the whole shell at the cap is kept (fairchem's tolerance); with it, exactly `cap` per atom,
    and the same tied copies as fairchem (so the model sees fairchem's graph)."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    batch = atoms_to_batch([atoms], torch.float32)
    for cap in (12, 14, 20):
        for strict in (False, True):
            ours, ref = _ours(batch, 6.0, cap, strict), _fairchem(batch, 6.0, cap, strict)
            assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1].to(ours[1].dtype))
            assert torch.equal(ours[2], ref[2])
        assert int(ours[2]) == cap * len(atoms)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_unrattled_slabs_with_tied_distances(seed):
    """Generated slabs before relaxation have many exactly equal distances at the cap."""
    batch = atoms_to_batch(oc20_like_atoms(3, seed=seed, rattle=0.0), torch.float32)
    for radius, cap in ((12.0, 20), (5.0, 12)):
        ours, ref = _ours(batch, radius, cap, True), _fairchem(batch, radius, cap, True)
        assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1].to(ours[1].dtype))


def test_against_brute_force_enumeration():
    """No cap: every (source, target, image) with 0.01 < d <= r, enumerated with numpy over a
    generous block of images, independently of both implementations."""
    atoms = fcc111("Pt", size=(2, 3, 3), vacuum=5.0, a=3.92)
    atoms.rattle(0.05, seed=1)
    radius = 7.0
    batch = atoms_to_batch([atoms], torch.float64)
    edge_index, offsets, _ = _ours(batch, radius, 0, True)
    ours = {(int(s), int(t), *map(int, o)) for s, t, o in zip(edge_index[0], edge_index[1], offsets)}
    pos, cell = atoms.get_positions(), np.array(atoms.cell)
    expected = set()
    for image in itertools.product(range(-4, 5), repeat=3):
        shifted = pos + np.array(image) @ cell
        d2 = ((shifted[:, None, :] - pos[None, :, :]) ** 2).sum(-1)  # [source, target]
        for s, t in zip(*np.nonzero((d2 <= radius**2) & (d2 > 1e-4))):
            expected.add((int(s), int(t), *image))
    assert ours == expected
    assert len(ours) > 20 * len(atoms)
