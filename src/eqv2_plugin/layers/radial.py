"""Radial basis and the radial MLPs that turn edge scalars into weights."""
from __future__ import annotations

import torch
from torch import nn

# EquiformerV2 hard-codes 600 Gaussians whatever `num_distance_basis` says.
NUM_GAUSSIANS = 600
GAUSSIAN_WIDTH_FACTOR = 2.0


class GaussianBasis(nn.Module):
    """Gaussians ``exp(-(d - mu_k)^2 / (2 sigma^2))`` on ``mu_k = linspace(0, cutoff, n)``
    with ``sigma = width_factor * spacing``.  ``[E] -> [E, n]``."""

    def __init__(self, cutoff: float, num_basis: int = NUM_GAUSSIANS, width_factor: float = GAUSSIAN_WIDTH_FACTOR):
        super().__init__()
        centers = torch.linspace(0.0, cutoff, num_basis)
        self.num_basis = num_basis
        self.coeff = -0.5 / (width_factor * (centers[1] - centers[0])).item() ** 2
        self.register_buffer("centers", centers, persistent=False)

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.coeff * (dist[:, None] - self.centers[None, :]) ** 2)


class RadialMLP(nn.Module):
    """``Linear -> LayerNorm -> SiLU`` repeated, then a final ``Linear``.

    ``channels = [in, hidden, ..., out]``; ``[E, in] -> [E, out]``.
    """

    def __init__(self, channels: list[int]):
        super().__init__()
        mods: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            mods.append(nn.Linear(c_in, c_out))
            if i < len(channels) - 2:
                mods += [nn.LayerNorm(c_out), nn.SiLU()]
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def atom_pair_embeddings(
    edge_channels_list: list[int], num_elements: int, enabled: bool
) -> tuple[list[int], nn.Embedding | None, nn.Embedding | None]:
    """Source and target atom-type embeddings appended to the edge scalars of one radial
    function (initialised U(+-0.001), so that they start as a small perturbation).

    Returns the radial function's channel list (its input widened by both embeddings when
    ``enabled``) and the two embeddings (None when not).
    """
    channels = list(edge_channels_list)
    if not enabled:
        return channels, None, None
    pair = (nn.Embedding(num_elements, channels[-1]), nn.Embedding(num_elements, channels[-1]))
    for emb in pair:
        nn.init.uniform_(emb.weight, -0.001, 0.001)
    channels[0] += 2 * channels[-1]
    return channels, pair[0], pair[1]


def with_atom_pair(
    edge_scalars: torch.Tensor,
    atomic_numbers: torch.Tensor,
    edge_index: torch.Tensor,
    src_embedding: nn.Embedding,
    tgt_embedding: nn.Embedding,
) -> torch.Tensor:
    """``[E, D] -> [E, D + 2 channels]``: the edge scalars with both atoms' embeddings."""
    return torch.cat(
        [edge_scalars, src_embedding(atomic_numbers[edge_index[0]]), tgt_embedding(atomic_numbers[edge_index[1]])],
        dim=1,
    )
