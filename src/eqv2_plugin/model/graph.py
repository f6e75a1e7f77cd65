"""What every layer needs to know about the edges of one batch."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from eqv2_plugin.escn.backend import EscnOps
from eqv2_plugin.escn.edges import EdgeSegments
from eqv2_plugin.escn.rotation import EdgeRotation


@dataclass
class EdgeGraph:
    """Edges of a batch, in the orientation messages flow: ``source -> target``.

    Attributes:
        edge_index: ``[2, E]`` (source, target); messages are summed at the target.
        edge_vec: ``[E, 3]`` ``pos[source] - pos[target] + periodic offset``.
        edge_scalars: ``[E, D]`` invariant edge features (radial basis, and the
            shared atom embeddings when ``share_atom_edge_embedding``).
        rotation: Wigner-D data of the edge frames.
        atomic_numbers: ``[N]`` long.
        batch: ``[N]`` graph of each node.
        num_graphs: number of graphs in the batch.
        edges: the edges grouped by target / source (for kernel reductions).
        ops: the implementation of the eSCN hot path (``escn.backend``).
    """

    edge_index: torch.Tensor
    edge_vec: torch.Tensor
    edge_scalars: torch.Tensor
    rotation: EdgeRotation
    atomic_numbers: torch.Tensor
    batch: torch.Tensor
    num_graphs: int
    edges: EdgeSegments
    ops: EscnOps

    @property
    def num_nodes(self) -> int:
        return self.atomic_numbers.shape[0]

    def narrow(self, start: int, stop: int) -> "EdgeGraph":
        """The same nodes with only the edges ``start:stop`` (views, no copy)."""
        return replace(
            self,
            edge_index=self.edge_index[:, start:stop],
            edge_vec=self.edge_vec[start:stop],
            edge_scalars=self.edge_scalars[start:stop],
            rotation=self.rotation.narrow(start, stop),
            edges=self.edges.narrow(start, stop),
        )

    @property
    def source(self) -> torch.Tensor:
        return self.edge_index[0]

    @property
    def target(self) -> torch.Tensor:
        return self.edge_index[1]


def segment_softmax(logits: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax of ``logits [E, H]`` over the edges sharing a ``segment [E]`` id, in the logits' dtype.

    Computed in at least float32: under autocast the logits can be half precision, and whether
    ``exp`` lifts them to float32 depends on the device (CUDA's autocast does, the CPU's does not)."""
    work = logits.to(torch.promote_types(logits.dtype, torch.float32))
    shape = (num_segments, logits.shape[1])
    seg = segment[:, None].expand_as(work)
    seg_max = work.new_full(shape, float("-inf")).scatter_reduce(0, seg, work.detach(), "amax")
    z = torch.exp(work - seg_max.index_select(0, segment))
    denom = work.new_zeros(shape).index_add(0, segment, z)
    return (z / (denom.index_select(0, segment) + 1e-16)).to(logits.dtype)
