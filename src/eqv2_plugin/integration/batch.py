"""ASE structures -> a fairchem ``Batch`` (what the trainers feed the model)."""
from __future__ import annotations

import numpy as np
import torch
from fairchem.core.datasets import data_list_collater
from fairchem.core.preprocessing import AtomsToGraphs


def atoms_to_batch(atoms_list, dtype: torch.dtype = torch.float32):
    """Collated ``Batch`` of ``ase.Atoms`` with positions and cell in ``dtype``, no stored graph
    (``otf_graph``). Positions are taken unwrapped, exactly as given."""
    a2g = AtomsToGraphs(r_energy=False, r_forces=False, r_edges=False, r_fixed=True)
    data_list = []
    for i, atoms in enumerate(atoms_list):
        d = a2g.convert(atoms)
        d.pos = torch.as_tensor(atoms.get_positions(wrap=False), dtype=dtype)
        d.cell = torch.as_tensor(np.asarray(atoms.cell), dtype=dtype)[None]
        d.sid = i
        data_list.append(d)
    return data_list_collater(data_list, otf_graph=True)
