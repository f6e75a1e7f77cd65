"""Per-edge rotation of node features into the edge frame and back.

Only the Wigner-D rows with ``|m| <= mmax`` are kept (the rest would be dropped
by the SO(2) convolution anyway), ordered in the m-major edge layout, so
rotating in lands directly in the layout the SO(2) convolutions use and no
permutation is needed. Built once per forward pass and shared by every layer.
"""
from __future__ import annotations

import torch

from eqv2_plugin.so3.layout import EdgeLayout
from eqv2_plugin.so3.wigner import wigner_blocks


class EdgeRotation:
    """Wigner-D data of one batch of edges.

    Attributes:
        wigner: ``[E, K, (lmax+1)**2]`` rows of ``D(R_e)`` for the edge coefficients.
        rescale: ``[K]`` truncation rescale applied when rotating back.
    """

    def __init__(self, frames: torch.Tensor, layout: EdgeLayout):
        self.layout = layout
        lmax = layout.lmax
        # geometry stays in the frames' precision under autocast (mixed-precision training);
        # the rotations themselves follow autocast where they are applied
        with torch.autocast(frames.device.type, enabled=False):
            blocks = wigner_blocks(frames, lmax)
        num_edges = frames.shape[0]
        # rows of edge coefficients grouped by degree, in edge-layout positions
        rows = []
        for l in range(lmax + 1):
            ms = [m for (ll, m) in layout.lm if ll == l]
            block = blocks[l][:, [m + l for m in ms], :]  # [E, r_l, 2l+1]
            rows.append((l, block))
        wigner = frames.new_zeros(num_edges, layout.num_coefficients, (lmax + 1) ** 2)
        for l, block in rows:
            positions = [k for k, (ll, _) in enumerate(layout.lm) if ll == l]
            wigner[:, positions, l * l : (l + 1) ** 2] = block
        self.wigner = wigner
        self.rescale = layout.rescale(frames.dtype).to(frames.device)

    @property
    def num_edges(self) -> int:
        return self.wigner.shape[0]

    def narrow(self, start: int, stop: int) -> "EdgeRotation":
        """The rotations of edges ``start:stop`` (views, no copy)."""
        part = object.__new__(EdgeRotation)
        part.layout, part.rescale = self.layout, self.rescale
        part.wigner = self.wigner[start:stop]
        return part

    def to_edge(self, x: torch.Tensor) -> torch.Tensor:
        """``[E, (lmax+1)**2, C]`` node-layout features -> ``[E, K, C]`` in the edge frame."""
        return torch.bmm(self.wigner.to(x.dtype), x)

    def from_edge(self, y: torch.Tensor) -> torch.Tensor:
        """``[E, K', C]`` edge-frame features (the first ``K' <= K`` edge coefficients, e.g.
        ``lmax+1`` for m=0 only) -> ``[E, (lmax+1)**2, C]``, with the truncation rescale."""
        return rotate_back(y, self.wigner.to(y.dtype), self.rescale.to(y.dtype))


def rotate_back(y: torch.Tensor, wigner: torch.Tensor, rescale: torch.Tensor) -> torch.Tensor:
    """``y [E, K', C]`` (first ``K'`` edge coefficients) -> ``[E, S, C]``: ``D[:K']^T (rescale * y)``."""
    k = y.shape[1]
    return torch.bmm(wigner[:, :k].transpose(1, 2), y * rescale[:k, None])
