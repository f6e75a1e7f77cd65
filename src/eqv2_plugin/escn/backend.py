"""The eSCN hot path behind one interface, with interchangeable implementations.

Three operations carry most of EquiformerV2's time and memory, all per edge:

* ``gather_rotate``: gather the source and target node features of every edge,
  concatenate them along channels and rotate them into the edge frame
  (compact Wigner rows, edge layout);
* ``rotate_scatter``: weight edge-frame messages by their attention
  coefficients, rotate them back (with the truncation rescale) and sum them at
  the target node;
* ``grid_silu``: the S2-grid SiLU ``from_grid @ silu(to_grid @ x)``;

and, per node, the separable layer norm that precedes every attention and FFN
(``separable_layer_norm``): a dozen small operators per call in torch, each a
launch on a GPU, where a training step is bound by launches.

``TorchOps`` (``escn/torch_ops.py``) is plain PyTorch: the default on CPU and
the reference that every kernel is tested against. ``TritonOps``
(``escn/triton/``) fuses each operation into Triton kernels with
deterministic, atomic-free reductions (edges are visited in target / source
order). The model argument ``kernel_backend`` picks one:

* ``"auto"``: Triton on CUDA tensors when triton is importable, torch otherwise;
* ``"torch"``: always the torch path;
* ``"triton"``: always Triton (CUDA tensors, or CPU tensors with
  ``TRITON_INTERPRET=1``, which is how the kernels are tested without a GPU).
"""
from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from eqv2_plugin.escn.edges import EdgeSegments
    from eqv2_plugin.escn.rotation import EdgeRotation

KERNEL_BACKENDS = ("auto", "torch", "triton")


class EscnOps(Protocol):
    """What an implementation of the hot path provides (shapes: ``N`` nodes,
    ``E`` edges, ``S = (lmax+1)^2`` node coefficients, ``K`` edge coefficients)."""

    name: str

    def gather_rotate(self, x: torch.Tensor, rotation: "EdgeRotation", edges: "EdgeSegments") -> torch.Tensor:
        """``x [N, S, C]`` -> ``[E, K, 2C]``: ``D_e (x[source_e] | x[target_e])``."""

    def rotate_scatter(
        self,
        values: torch.Tensor,
        rotation: "EdgeRotation",
        edges: "EdgeSegments",
        alpha: torch.Tensor | None,
        num_nodes: int,
    ) -> torch.Tensor:
        """``values [E, K', C]`` (the first ``K'`` edge coefficients), ``alpha [E, H]``
        (``C = H * V``; ``None`` = no weighting) -> ``[N, S, C]``:
        ``sum_{e -> n} D_e^T (rescale * alpha_e * values_e)``."""

    def grid_silu(self, x: torch.Tensor, to_grid: torch.Tensor, from_grid: torch.Tensor) -> torch.Tensor:
        """``x [R, K, C]``, ``to_grid [G, K]``, ``from_grid [K, G]`` -> ``[R, K, C]``."""

    def separable_layer_norm(
        self,
        x: torch.Tensor,
        l0_weight: torch.Tensor,
        l0_bias: torch.Tensor,
        weight: torch.Tensor,
        balance: torch.Tensor,
        degree_minus_one: torch.Tensor,
        eps: float,
    ) -> torch.Tensor:
        """``x [N, S, C]`` -> ``[N, S, C]`` (float32 at least): EquiformerV2's separable layer
        norm, defined by ``layers.norms.separable_layer_norm``."""

    def edge_chunks(self, num_edges: int, bytes_per_edge: int, device: torch.device) -> list[tuple[int, int]]:
        """How the model should split its per-edge pipelines: ``[(start, stop), ...]`` edge
        ranges processed one after the other (one range = no splitting)."""


def launch_bound(device: torch.device) -> bool:
    """Whether work on ``device`` should be shaped for a GPU: there a training step is bound by
    the host launching operators (the device finishes each in microseconds), so fewer, larger
    operators win. On the CPU (False) the operators themselves bind, and cache-sized pieces
    (edge chunks, per-degree GEMMs) win. The one switch between the two shapes of the same
    functions; tests flip it to run the GPU shapes on the CPU."""
    return device.type != "cpu"


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type``, or None (torch 2.4 and newer APIs)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # older signature: no argument means CUDA
        enabled = device_type == "cuda" and torch.is_autocast_enabled()
    if not enabled:
        return None
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype(device_type)
    return torch.get_autocast_gpu_dtype()


def triton_available() -> bool:
    """Whether the triton package can be imported (it ships with CUDA builds of torch)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """``TRITON_INTERPRET=1``: kernels run on the CPU through triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_ops(kernel_backend: str, device: torch.device) -> EscnOps:
    """The implementation to use for tensors on ``device``."""
    if kernel_backend not in KERNEL_BACKENDS:
        raise ValueError(f"EquiformerV2: kernel_backend must be one of {KERNEL_BACKENDS}, got {kernel_backend!r}")
    use_triton = kernel_backend == "triton" or (
        kernel_backend == "auto" and device.type == "cuda" and triton_available()
    )
    if not use_triton:
        from eqv2_plugin.escn.torch_ops import TORCH_OPS

        return TORCH_OPS
    if not triton_available():
        raise RuntimeError(
            "EquiformerV2: kernel_backend='triton' but the triton package is not installed; "
            "install a CUDA build of torch (it ships triton) or use kernel_backend='torch'"
        )
    if device.type != "cuda" and not triton_interpreted():
        raise RuntimeError(
            f"EquiformerV2: kernel_backend='triton' needs CUDA tensors, got tensors on {device}; "
            "use kernel_backend='auto' (torch on CPU) or set TRITON_INTERPRET=1 to run the kernels interpreted"
        )
    from eqv2_plugin.escn.triton.ops import TRITON_OPS

    return TRITON_OPS
