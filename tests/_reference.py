"""fairchem 1.10's EquiformerV2 as a test oracle, and ours loaded with its weights."""
from __future__ import annotations

import contextlib

import torch

import eqv2_plugin  # noqa: F401  (models are named by dotted path)
import eqv2_plugin.so3 as so3

# A small version of the released-config block (L4 M2 grid-MLP SLN model).
SMALL = dict(
    use_pbc=True, regress_forces=True, otf_graph=True, max_neighbors=20, max_radius=6.0,
    max_num_elements=90, num_layers=2, sphere_channels=16, attn_hidden_channels=8, num_heads=2,
    attn_alpha_channels=8, attn_value_channels=4, ffn_hidden_channels=16, norm_type="layer_norm_sh",
    lmax_list=[4], mmax_list=[2], grid_resolution=18, edge_channels=8, use_atom_edge_embedding=True,
    share_atom_edge_embedding=False, use_m_share_rad=False, distance_function="gaussian",
    use_attn_renorm=True, use_gate_act=False, use_grid_mlp=True, use_sep_s2_act=True,
    alpha_drop=0.1, drop_path_rate=0.1, proj_drop=0.0, weight_init="uniform",
)


def fixed_frames(edge_vec: torch.Tensor, **_: object) -> torch.Tensor:
    """One frame function for both implementations (our deterministic one)."""
    return so3.frames.edge_frames(edge_vec, mode="deterministic")


@contextlib.contextmanager
def shared_frames(monkeypatch):
    """Make fairchem's EquiformerV2 and ours use ``fixed_frames``."""
    import fairchem.core.models.equiformer_v2.equiformer_v2 as ref_backbone
    import fairchem.core.models.equiformer_v2.equiformer_v2_deprecated as ref_mono

    original = so3.frames.edge_frames
    monkeypatch.setattr(ref_backbone, "init_edge_rot_mat", lambda v: original(v, mode="deterministic"))
    monkeypatch.setattr(ref_mono, "init_edge_rot_mat", lambda v: original(v, mode="deterministic"))
    monkeypatch.setattr(so3, "edge_frames", lambda v, **kw: original(v, mode="deterministic"))
    yield


@contextlib.contextmanager
def edge_chunks_of(size: int = 37):
    """Make the torch path split every per-edge pipeline into ``size``-edge chunks (on CPU it
    splits only batches whose per-edge tensors exceed several MB); yields the list of chunk
    counts seen, so a test can check that splitting really happened."""
    from unittest import mock

    from eqv2_plugin.escn.edges import edge_ranges
    from eqv2_plugin.escn.torch_ops import TorchOps

    seen: list[int] = []

    def chunks(self, num_edges, bytes_per_edge, device):
        ranges = edge_ranges(num_edges, size)
        seen.append(len(ranges))
        return ranges

    with mock.patch.object(TorchOps, "edge_chunks", chunks):
        yield seen


def perturb_(model: torch.nn.Module, seed: int = 1, scale: float = 0.1) -> None:
    """Move every parameter away from its initial value so that each one matters
    (norm weights start at 1, biases at 0, edge embeddings at +-0.001)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            # drawn on the CPU generator, so a model on a GPU gets the same values
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))


def reference_monolithic(cfg: dict) -> torch.nn.Module:
    from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import EquiformerV2

    return EquiformerV2(**cfg)


def hydra(backbone: str, energy_head: str, force_head: str, cfg: dict, reduce: str = "sum"):
    from fairchem.core.models.base import HydraModel

    return HydraModel(
        backbone={"model": backbone, **cfg},
        heads={"energy": {"module": energy_head, "reduce": reduce}, "forces": {"module": force_head}},
    )


def reference_hydra(cfg: dict, reduce: str = "sum"):
    return hydra("equiformer_v2_backbone", "equiformerV2_scalar_head", "equiformerV2_vector_head", cfg, reduce)


def our_hydra(cfg: dict, reduce: str = "sum"):
    return hydra("eqv2_plugin.EquiformerV2Backbone", "eqv2_plugin.EquiformerV2EnergyHead",
                 "eqv2_plugin.EquiformerV2ForceHead", cfg, reduce)


def outputs(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(batch)
    energy, forces = out["energy"], out["forces"]
    if isinstance(energy, dict):  # hydra: {head: {name: tensor}}
        energy, forces = energy["energy"], forces["forces"]
    return energy.detach().reshape(-1), forces.detach()


def reference_to_float32(ref: torch.nn.Module) -> None:
    """Cast fairchem's model to float32 with an on-the-fly graph (it caches dtype-bound
    index tables on first use, which must be dropped)."""
    ref.float()
    for m in ref.modules():
        if hasattr(m, "rotate_inv_rescale_cache"):
            m.rotate_inv_rescale_cache = m.mask_indices_cache = m.lmax_cache = m.mmax_cache = None
        if hasattr(m, "otf_graph"):
            m.otf_graph = True


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def setup_registry() -> None:
    from fairchem.core.common.utils import setup_imports

    setup_imports()


