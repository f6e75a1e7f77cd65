"""The EquiformerV2 backbone: embeddings, transformer blocks, final norm."""
from __future__ import annotations

import math

import torch
from torch import nn

import eqv2_plugin.so3 as so3
from eqv2_plugin.escn.backend import resolve_ops
from eqv2_plugin.escn.edges import EdgeSegments
from eqv2_plugin.escn.rotation import EdgeRotation
from eqv2_plugin.layers.linear import DegreeWiseLinear
from eqv2_plugin.layers.norms import make_norm
from eqv2_plugin.layers.radial import GaussianBasis, RadialMLP, with_atom_pair
from eqv2_plugin.model.attention import EdgeAttention
from eqv2_plugin.model.block import TransformerBlock
from eqv2_plugin.model.config import AVG_DEGREE, AVG_NUM_NODES, validate_config
from eqv2_plugin.model.embedding import EdgeDegreeEmbedding
from eqv2_plugin.model.ffn import FeedForward
from eqv2_plugin.model.graph import EdgeGraph
from eqv2_plugin.model.inputs import OVERLAP_DISTANCE, check_inputs, compute_edges
from eqv2_plugin.model.recompute import recompute_in_backward
from eqv2_plugin.so3.layout import EdgeLayout


class EquiformerV2Backbone(nn.Module):
    """EquiformerV2 backbone (Liao et al., ICLR 2024).

    Same constructor arguments and defaults as fairchem 1.10's
    ``equiformer_v2_backbone``, so its configs and checkpoints work unchanged.
    ``num_sphere_samples``, ``num_distance_basis``, ``attn_activation`` and
    ``ffn_activation`` are accepted for config compatibility and are inert
    (the reference ignores them too: 600 Gaussians and SiLU are fixed).

    Our own arguments:
        edge_frame: ``"random"`` (default, as the reference: a random roll about
            each edge axis on every forward) or ``"deterministic"`` (a fixed,
            documented roll; bit-for-bit reproducible). See ``so3.frames``.
        direct_forces: ``True`` (default) predicts forces with the attention
            head (as the reference); ``False`` makes forces ``-dE/dpos``
            (conservative), which needs positions to carry gradients.
        kernel_backend: ``"auto"`` (default: Triton kernels on CUDA, PyTorch on
            CPU), ``"torch"`` or ``"triton"``; the implementation of the eSCN
            hot path (``escn.backend``). Same function either way.
        recompute_edges: ``True`` (default) rebuilds each attention's rotated
            messages, radial weights, first SO(2) convolution and activation in
            the backward pass instead of storing them (about a third of the
            training memory, ~15% more compute; on an H200 ``False`` took 24 %
            off an 83M fp32 training step and doubled its memory);
            ``activation_checkpoint`` recomputes whole blocks.

    ``forward(data)`` returns ``{"node_embedding": [N, (L+1)^2, C], "graph": EdgeGraph}``.
    ``data`` needs ``pos [N,3]``, ``atomic_numbers [N]``, ``batch [N]``,
    ``natoms [B]`` and either ``cell [B,3,3]`` (on-the-fly periodic graph,
    through fairchem) or precomputed ``edge_index`` / ``cell_offsets``.
    """

    def __init__(
        self,
        use_pbc: bool = True,
        use_pbc_single: bool = False,
        regress_forces: bool = True,
        otf_graph: bool = True,
        max_neighbors: int = 500,
        max_radius: float = 5.0,
        max_num_elements: int = 90,
        num_layers: int = 12,
        sphere_channels: int = 128,
        attn_hidden_channels: int = 128,
        num_heads: int = 8,
        attn_alpha_channels: int = 32,
        attn_value_channels: int = 16,
        ffn_hidden_channels: int = 512,
        norm_type: str = "rms_norm_sh",
        lmax_list: list[int] | None = None,
        mmax_list: list[int] | None = None,
        grid_resolution: int | None = None,
        num_sphere_samples: int = 128,
        edge_channels: int = 128,
        use_atom_edge_embedding: bool = True,
        share_atom_edge_embedding: bool = False,
        use_m_share_rad: bool = False,
        distance_function: str = "gaussian",
        num_distance_basis: int = 512,
        attn_activation: str = "scaled_silu",
        use_s2_act_attn: bool = False,
        use_attn_renorm: bool = True,
        ffn_activation: str = "scaled_silu",
        use_gate_act: bool = False,
        use_grid_mlp: bool = False,
        use_sep_s2_act: bool = True,
        alpha_drop: float = 0.1,
        drop_path_rate: float = 0.05,
        proj_drop: float = 0.0,
        weight_init: str = "normal",
        enforce_max_neighbors_strictly: bool = True,
        avg_num_nodes: float | None = None,
        avg_degree: float | None = None,
        use_energy_lin_ref: bool | None = False,
        load_energy_lin_ref: bool | None = False,
        activation_checkpoint: bool | None = False,
        edge_frame: str = "random",
        direct_forces: bool = True,
        kernel_backend: str = "auto",
        recompute_edges: bool = True,
    ):
        super().__init__()
        lmax_list = [6] if lmax_list is None else list(lmax_list)
        mmax_list = [2] if mmax_list is None else list(mmax_list)
        cfg = dict(locals())
        for key in ("self", "__class__"):
            cfg.pop(key, None)
        lmax, mmax = validate_config(cfg)

        self.use_pbc, self.use_pbc_single, self.otf_graph = use_pbc, use_pbc_single, otf_graph
        self.regress_forces = regress_forces
        self.direct_forces = bool(direct_forces)
        self.max_neighbors, self.max_radius, self.cutoff = max_neighbors, max_radius, max_radius
        self.enforce_max_neighbors_strictly = enforce_max_neighbors_strictly
        self.max_num_elements = max_num_elements
        self.num_layers, self.sphere_channels = num_layers, sphere_channels
        self.attn_hidden_channels, self.num_heads = attn_hidden_channels, num_heads
        self.attn_alpha_channels, self.attn_value_channels = attn_alpha_channels, attn_value_channels
        self.ffn_hidden_channels, self.norm_type = ffn_hidden_channels, norm_type
        self.lmax_list, self.mmax_list, self.lmax, self.mmax = lmax_list, mmax_list, lmax, mmax
        self.grid_resolution, self.edge_channels = grid_resolution, edge_channels
        self.use_atom_edge_embedding = use_atom_edge_embedding
        self.share_atom_edge_embedding = share_atom_edge_embedding
        self.block_use_atom_edge_embedding = use_atom_edge_embedding and not share_atom_edge_embedding
        self.use_m_share_rad, self.use_attn_renorm = use_m_share_rad, use_attn_renorm
        self.use_gate_act, self.use_grid_mlp, self.use_sep_s2_act = use_gate_act, use_grid_mlp, use_sep_s2_act
        self.alpha_drop, self.drop_path_rate, self.proj_drop = alpha_drop, drop_path_rate, proj_drop
        self.weight_init = weight_init
        self.avg_num_nodes = avg_num_nodes or AVG_NUM_NODES
        self.avg_degree = avg_degree or AVG_DEGREE
        self.use_energy_lin_ref, self.load_energy_lin_ref = bool(use_energy_lin_ref), bool(load_energy_lin_ref)
        self.activation_checkpoint = bool(activation_checkpoint)
        self.edge_frame = edge_frame
        self.kernel_backend = kernel_backend
        self.recompute_edges = bool(recompute_edges)
        self.layout = EdgeLayout(lmax, mmax)

        self.atom_embedding = nn.Embedding(max_num_elements, sphere_channels)
        self.distance_basis = GaussianBasis(max_radius)
        self.edge_channels_list = [self.distance_basis.num_basis, edge_channels, edge_channels]
        if share_atom_edge_embedding:
            self.src_embedding = nn.Embedding(max_num_elements, edge_channels)
            self.tgt_embedding = nn.Embedding(max_num_elements, edge_channels)
            self.edge_channels_list[0] += 2 * edge_channels
        else:
            self.src_embedding = self.tgt_embedding = None

        self.edge_degree = EdgeDegreeEmbedding(
            sphere_channels, lmax, self.edge_channels_list, max_num_elements,
            self.block_use_atom_edge_embedding, self.avg_degree,
        )
        self.blocks = nn.ModuleList(
            TransformerBlock(
                self.make_attention(sphere_channels, alpha_drop),
                self.make_ffn(sphere_channels),
                norm_type, lmax, sphere_channels, drop_path_rate, proj_drop,
            )
            for _ in range(num_layers)
        )
        self.final_norm = make_norm(norm_type, lmax, sphere_channels)
        init_weights(self, weight_init)

    # -- factories shared with the heads -----------------------------------
    def make_attention(self, out_channels: int, alpha_drop: float) -> EdgeAttention:
        return EdgeAttention(
            self.sphere_channels, self.attn_hidden_channels, self.num_heads, self.attn_alpha_channels,
            self.attn_value_channels, out_channels, self.layout, self.edge_channels_list,
            self.max_num_elements, self.grid_resolution,
            use_atom_edge_embedding=self.block_use_atom_edge_embedding,
            use_m_share_rad=self.use_m_share_rad, use_attn_renorm=self.use_attn_renorm,
            use_gate_act=self.use_gate_act, use_sep_s2_act=self.use_sep_s2_act, alpha_drop=alpha_drop,
            recompute_edges=self.recompute_edges,
        )

    def make_ffn(self, out_channels: int) -> FeedForward:
        return FeedForward(
            self.sphere_channels, self.ffn_hidden_channels, out_channels, self.lmax, self.grid_resolution,
            use_gate_act=self.use_gate_act, use_grid_mlp=self.use_grid_mlp, use_sep_s2_act=self.use_sep_s2_act,
        )

    # -- forward -----------------------------------------------------------
    def build_graph(self, data) -> EdgeGraph:
        """Edges, edge frames, Wigner-D data and edge scalars of a batch."""
        atomic_numbers = check_inputs(data, self.max_num_elements)
        if not self.direct_forces and self.regress_forces and not data.pos.requires_grad:
            data.pos.requires_grad_(True)
        edge_index, edge_vec = compute_edges(self, data)
        dist = edge_vec.norm(dim=-1)
        if dist.numel() and bool((dist < OVERLAP_DISTANCE).any()):  # precomputed graphs
            e = int(torch.nonzero(dist < OVERLAP_DISTANCE)[0, 0])
            s, t = int(edge_index[0, e]), int(edge_index[1, e])
            raise ValueError(
                f"EquiformerV2: atoms {s} and {t} are {float(dist[e]):.2e} A apart (overlapping atoms, "
                f"or a duplicated atom); check the input positions"
            )
        frames = so3.edge_frames(edge_vec, mode=self.edge_frame)
        rotation = EdgeRotation(frames, self.layout)
        edge_scalars = self.distance_basis(dist)
        if self.src_embedding is not None:
            edge_scalars = with_atom_pair(edge_scalars, atomic_numbers, edge_index, self.src_embedding, self.tgt_embedding)
        return EdgeGraph(
            edge_index=edge_index, edge_vec=edge_vec, edge_scalars=edge_scalars, rotation=rotation,
            atomic_numbers=atomic_numbers, batch=data.batch, num_graphs=int(data.natoms.shape[0]),
            edges=EdgeSegments(edge_index, atomic_numbers.shape[0]),
            ops=resolve_ops(self.kernel_backend, edge_vec.device),
        )

    def embed(self, data) -> dict:
        graph = self.build_graph(data)
        return {"node_embedding": self.node_features(graph), "graph": graph}

    def node_features(self, graph: EdgeGraph) -> torch.Tensor:
        """``[N, (lmax+1)^2, C]``: embeddings, blocks and the final norm over a built graph."""
        x = self.edge_degree(graph)
        l0, rest = x.split([1, x.shape[1] - 1], dim=1)
        x = torch.cat([l0 + self.atom_embedding(graph.atomic_numbers).unsqueeze(1), rest], dim=1)
        for block in self.blocks:
            if self.activation_checkpoint and torch.is_grad_enabled():
                x = recompute_in_backward(block, x, graph)
            else:
                x = block(x, graph)
        return self.final_norm(x, graph.ops)

    def forward(self, data) -> dict:
        return self.embed(data)

    # -- optimiser helpers -------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay: biases, norm affine parameters
        and the attention logit LayerNorms (as the reference)."""
        return no_weight_decay_names(self)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def init_weights(module: nn.Module, weight_init: str) -> None:
    """EquiformerV2's initialisation: biases 0; ``"normal"`` draws weights from
    N(0, 1/fan_in) (``"uniform"`` keeps U(+-1/sqrt(fan_in))); radial MLPs are
    always uniform; LayerNorms reset to (1, 0). Embeddings are untouched."""
    for m in module.modules():
        if isinstance(m, RadialMLP):
            for lin in m.modules():
                if isinstance(lin, nn.Linear):
                    bound = 1.0 / math.sqrt(lin.in_features)
                    nn.init.uniform_(lin.weight, -bound, bound)
                    nn.init.zeros_(lin.bias)
    radial_linears = {id(lin) for m in module.modules() if isinstance(m, RadialMLP) for lin in m.modules()}
    for m in module.modules():
        if id(m) in radial_linears:
            continue
        if isinstance(m, (nn.Linear, DegreeWiseLinear)):
            if m.bias is not None:
                nn.init.zeros_(m.bias)
            if weight_init == "normal":
                nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(m.in_features))
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def no_weight_decay_names(model: nn.Module) -> set[str]:
    from eqv2_plugin.layers.norms import EquivariantLayerNorm, EquivariantRMSNorm, SeparableLayerNorm

    names = set()
    for prefix, m in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(m, (nn.Linear, DegreeWiseLinear)):
            if getattr(m, "bias", None) is not None:
                names.add(f"{dot}bias")
        elif isinstance(m, (nn.LayerNorm, EquivariantLayerNorm, SeparableLayerNorm, EquivariantRMSNorm)):
            names.update(f"{dot}{n}" for n, _ in m.named_parameters(recurse=False))
    return names
