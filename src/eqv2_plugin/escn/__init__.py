"""The eSCN hot path: rotating features into edge frames, SO(2) convolutions,
and rotating messages back.

``EdgeRotation`` owns the per-edge Wigner-D data for one forward pass;
``SO2Convolution`` is the SO(2)-equivariant linear map on edge-frame features.
Both work in the truncated m-major edge layout (``so3.EdgeLayout``).
"""
from eqv2_plugin.escn.rotation import EdgeRotation
from eqv2_plugin.escn.so2 import SO2Convolution

__all__ = ["EdgeRotation", "SO2Convolution"]
