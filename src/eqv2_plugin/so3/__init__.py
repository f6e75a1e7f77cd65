"""SO(3) bookkeeping: coefficient layouts, edge frames, Wigner-D blocks, S2 grids.

The model reads ``eqv2_plugin.so3.edge_frames`` as a module attribute at call
time, so replacing it (e.g. in a test) changes the frames every layer sees.
"""
from eqv2_plugin.so3.frames import FRAME_MODES, edge_frames
from eqv2_plugin.so3.grid import grid_shape, s2_grid_matrices
from eqv2_plugin.so3.layout import (
    EdgeLayout,
    degree_of_node_coefficients,
    node_index,
    num_node_coefficients,
    truncation_rescale,
)
from eqv2_plugin.so3.wigner import MAX_SUPPORTED_LMAX, wigner_blocks

__all__ = [
    "FRAME_MODES",
    "MAX_SUPPORTED_LMAX",
    "EdgeLayout",
    "degree_of_node_coefficients",
    "edge_frames",
    "grid_shape",
    "node_index",
    "num_node_coefficients",
    "s2_grid_matrices",
    "truncation_rescale",
    "wigner_blocks",
]
