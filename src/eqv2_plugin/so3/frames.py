"""Edge frames: the rotation that carries each edge direction onto +y.

Convention (shared with EquiformerV2 and e3nn, whose polar axis is y): for an
edge vector ``r`` (``pos[source] - pos[target] + periodic offset``) the frame
``R`` is a proper rotation (det +1) with ``R @ r/|r| = (0, 1, 0)``. Its rows are
``(a, r_hat, b)`` with ``a = normalize(r_hat x v)`` and ``b = a x r_hat`` for a
helper vector ``v`` not parallel to ``r_hat``.

The roll about the edge axis is a free choice that the SO(2) convolutions are
invariant to (exactly for the linear parts; up to S2-grid aliasing for the
grid activations). Two modes:

* ``"deterministic"``: ``v`` is the coordinate axis least aligned with
  ``r_hat`` (the first one on ties). Bit-for-bit reproducible; the roll jumps
  where the least-aligned axis changes, which is harmless because the model is
  roll-invariant up to the grid aliasing.
* ``"random"``: the deterministic frame followed by a uniformly random roll
  about +y, drawn from torch's RNG on every call (what EquiformerV2 does;
  the roll acts as a data augmentation during training).

Frames are differentiable in ``edge_vec`` (needed for gradient forces).
"""
from __future__ import annotations

import math

import torch

FRAME_MODES = ("random", "deterministic")


def edge_frames(
    edge_vec: torch.Tensor,
    mode: str = "random",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rotation matrices aligning each edge with +y.

    Args:
        edge_vec: ``[E, 3]`` edge vectors (need not be normalised, must be non-zero).
        mode: ``"random"`` or ``"deterministic"`` (see module docstring).
        generator: optional RNG for the random roll.

    Returns:
        ``[E, 3, 3]`` rotations ``R`` with ``R @ edge_vec[e] / |edge_vec[e]| = (0, 1, 0)``.
    """
    if mode not in FRAME_MODES:
        raise ValueError(f"edge frame mode must be one of {FRAME_MODES}, got {mode!r}")
    r_hat = edge_vec / edge_vec.norm(dim=-1, keepdim=True)
    # helper axis: the coordinate axis least aligned with the edge (never parallel)
    axis = r_hat.detach().abs().argmin(dim=-1)
    v = torch.nn.functional.one_hot(axis, 3).to(r_hat.dtype)
    a = torch.linalg.cross(r_hat, v, dim=-1)
    a = a / a.norm(dim=-1, keepdim=True)
    b = torch.linalg.cross(a, r_hat, dim=-1)
    if mode == "random":
        theta = torch.rand(
            r_hat.shape[0], dtype=r_hat.dtype, device=r_hat.device, generator=generator
        ) * (2 * math.pi)
        c, s = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
        # roll about +y in the edge frame: rows (a, r_hat, b) -> (c a - s b, r_hat, s a + c b)
        a, b = c * a - s * b, s * a + c * b
    return torch.stack([a, r_hat, b], dim=1)
