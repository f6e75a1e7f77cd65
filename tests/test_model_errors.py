"""Impossible configurations and bad inputs fail with messages that name the field."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import eqv2_plugin
from _reference import SMALL
from _systems import oc20_like_atoms, to_batch

TINY = dict(SMALL, num_layers=1, lmax_list=[2], mmax_list=[1], grid_resolution=None)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(lmax_list=[2], mmax_list=[3]), "mmax_list"),
        (dict(lmax_list=[13], mmax_list=[2]), "supported maximum"),
        (dict(lmax_list=[4, 2], mmax_list=[2, 1]), "one resolution"),
        (dict(norm_type="batch_norm"), "norm_type"),
        (dict(use_s2_act_attn=True), "use_s2_act_attn"),
        (dict(num_heads=0), "num_heads"),
        (dict(sphere_channels=12.5), "sphere_channels"),
        (dict(distance_function="bessel"), "distance_function"),
        (dict(weight_init="xavier"), "weight_init"),
        (dict(edge_frame="fixed"), "edge_frame"),
        (dict(alpha_drop=1.5), "alpha_drop"),
        (dict(grid_resolution=4), "grid_resolution"),
        (dict(use_energy_lin_ref=True, load_energy_lin_ref=False), "load_energy_lin_ref"),
        (dict(max_radius=-1.0), "max_radius"),
    ],
)
def test_impossible_configurations(change, message):
    with pytest.raises(ValueError, match=message):
        eqv2_plugin.EquiformerV2(**{**TINY, **change})


def test_energy_reduce_is_checked():
    with pytest.raises(ValueError, match="reduce"):
        eqv2_plugin.EquiformerV2(**TINY, energy_reduce="max")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return eqv2_plugin.EquiformerV2(**TINY).eval()


def test_atomic_number_out_of_range(model):
    batch = to_batch(oc20_like_atoms(1))
    batch.atomic_numbers[3] = 95
    with pytest.raises(ValueError, match="atomic number 95 .*max_num_elements=90"):
        model(batch)


def test_nan_positions(model):
    batch = to_batch(oc20_like_atoms(1))
    batch.pos[4, 1] = float("nan")
    with pytest.raises(ValueError, match=r"pos contains NaN or inf for atoms \[4\]"):
        model(batch)


@pytest.mark.parametrize("gap", [0.0, 1e-5, 5e-3])
def test_overlapping_atoms(model, gap):
    atoms = oc20_like_atoms(1)[0]
    pos = atoms.get_positions()
    pos[-1] = pos[0] + gap
    atoms.set_positions(pos, apply_constraint=False)
    with pytest.raises(ValueError, match="overlapping"):
        model(to_batch([atoms]))


@pytest.mark.parametrize("direct", [True, False])
def test_isolated_atom_gives_finite_energy_and_zero_force(direct):
    from ase import Atoms

    torch.manual_seed(0)
    model = eqv2_plugin.EquiformerV2(**TINY, direct_forces=direct).eval()
    lonely = Atoms("Cu", positions=[[5.0, 5.0, 5.0]], cell=np.eye(3) * 30.0, pbc=True)
    out = model(to_batch([lonely]))
    assert torch.isfinite(out["energy"]).all() and out["energy"].shape == (1,)
    assert torch.equal(out["forces"], torch.zeros(1, 3))


def test_mismatched_checkpoint_names_the_keys():
    torch.manual_seed(0)
    small = eqv2_plugin.EquiformerV2(**TINY)
    bigger = eqv2_plugin.EquiformerV2(**{**TINY, "num_layers": 2})
    with pytest.raises(RuntimeError, match=r"(?s)does not match this model's configuration.*blocks\.1\."):
        small.load_state_dict(bigger.state_dict())
