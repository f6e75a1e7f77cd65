"""Rotations, permutations and translations: energies invariant, forces covariant,
measured against fairchem's EquiformerV2 on the same inputs and weights."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import eqv2_plugin
from _reference import SMALL, outputs, perturb_, reference_monolithic, rel_err, setup_registry
from _systems import oc20_like_atoms, rotated, to_batch

ROTATIONS = 3


@pytest.fixture(scope="module")
def atoms():
    return oc20_like_atoms(2, seed=5)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    setup_registry()
    ref = reference_monolithic(dict(SMALL))
    perturb_(ref)
    direct = eqv2_plugin.EquiformerV2(**SMALL)
    direct.load_state_dict(ref.state_dict())
    gradient = eqv2_plugin.EquiformerV2(**SMALL, direct_forces=False)
    gradient.load_state_dict(ref.state_dict(), strict=False)  # no force head
    return {"reference": ref.eval(), "direct": direct.eval(), "gradient": gradient.eval()}


def _rotation_errors(model, atoms, seed=0):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    e0, f0 = outputs(model, to_batch(atoms))
    worst_e = worst_f = 0.0
    for _ in range(ROTATIONS):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        a, b, c, d = q
        rot = np.array([
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
        ])
        e, f = outputs(model, to_batch(rotated(atoms, rot)))
        worst_e = max(worst_e, rel_err(e, e0))
        worst_f = max(worst_f, rel_err(f, f0 @ torch.as_tensor(rot, dtype=f0.dtype).T))
    return worst_e, worst_f


def test_rotation_equivariance_not_worse_than_reference(models, atoms):
    errors = {name: _rotation_errors(m, atoms) for name, m in models.items()}
    print("\nrotation errors (relative, float32, energy / forces):")
    for name, (e, f) in errors.items():
        print(f"  {name:10s} {e:.2e} / {f:.2e}")
    ref_e, ref_f = errors["reference"]
    for name in ("direct", "gradient"):
        e, f = errors[name]
        # same function, same S2-grid aliasing: the error must be the reference's or smaller
        assert e <= max(2.0 * ref_e, 1e-6), (name, e, ref_e)
        assert f <= max(2.0 * ref_f, 1e-5), (name, f, ref_f)
    assert errors["direct"][1] < 0.05 and errors["gradient"][1] < 0.05


@pytest.mark.parametrize("kind", ["direct", "gradient"])
def test_permutation_and_translation(models, atoms, kind):
    model = models[kind]
    model.edge_frame = "deterministic"  # frames follow the atoms, so both are exact up to round-off
    torch.manual_seed(0)
    e0, f0 = outputs(model, to_batch(atoms))
    perm = np.random.default_rng(1).permutation(len(atoms[0]))
    permuted = [atoms[0][perm], atoms[1]]
    shifted = [a.copy() for a in atoms]
    for a in shifted:
        a.translate([0.37, -1.21, 0.55])
    e_p, f_p = outputs(model, to_batch(permuted))
    e_t, f_t = outputs(model, to_batch(shifted))
    model.edge_frame = "random"
    n0 = len(atoms[0])
    assert rel_err(e_p, e0) < 1e-5 and rel_err(e_t, e0) < 1e-5
    assert rel_err(f_p[:n0], f0[:n0][torch.as_tensor(perm)]) < 1e-5
    # shifted float32 coordinates round differently (~1e-6 A), amplified by the S2 grid
    assert rel_err(f_t, f0) < 2e-4
