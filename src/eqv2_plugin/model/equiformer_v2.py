"""The public models: the monolithic ``EquiformerV2`` and the hydra pieces
(``EquiformerV2Backbone`` + ``EquiformerV2EnergyHead`` + ``EquiformerV2ForceHead``),
named by dotted path in fairchem YAML (``model: {name: eqv2_plugin.EquiformerV2}``)."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from eqv2_plugin.model import checkpoint as ckpt
from eqv2_plugin.model.backbone import EquiformerV2Backbone as _Backbone
from eqv2_plugin.model.backbone import init_weights
from eqv2_plugin.model.cuda_graphs import GraphedInference, GraphFunction
from eqv2_plugin.model.graph import EdgeGraph
from eqv2_plugin.model.heads import DirectForceHead, EnergyHead, attention_forces, gradient_forces


def _load_with_clear_errors(module: nn.Module, load, state_dict, strict: bool):
    state_dict = ckpt.strip_ddp_prefix(state_dict, module.state_dict().keys())
    try:
        return load(state_dict, strict=strict)
    except RuntimeError as exc:
        raise RuntimeError(
            f"{type(module).__name__}: the checkpoint does not match this model's configuration "
            f"(lmax/mmax, channels, num_layers, heads, use_* flags, load_energy_lin_ref, direct_forces must "
            f"equal the ones it was trained with).\n{exc}"
        ) from None


class EquiformerV2Backbone(_Backbone):
    __doc__ = _Backbone.__doc__ + """
    Plus ``cuda_graphs`` (default False): replay inference on CUDA from CUDA graphs, per input
    shape (``eqv2_plugin.model.cuda_graphs``; direct forces only). The hydra backbone replays
    its node embeddings; the monolithic model its energies and forces.
    """

    def __init__(self, *args, cuda_graphs: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if cuda_graphs not in (True, False):
            raise ValueError(f"EquiformerV2: cuda_graphs must be true or false, got {cuda_graphs!r}")
        if cuda_graphs and self.regress_forces and not self.direct_forces:
            raise ValueError(
                "EquiformerV2: cuda_graphs records inference with direct forces; gradient forces need "
                "autograd through the model. Set direct_forces: true or cuda_graphs: false"
            )
        self.graphed_inference = GraphedInference() if cuda_graphs else None
        self._register_load_state_dict_pre_hook(_hook(ckpt.MONOLITHIC_HEADS))

    def replays(self, graph: EdgeGraph) -> bool:
        """Whether this call's computation after ``build_graph`` is replayed from a CUDA graph."""
        return self.graphed_inference is not None and not self.training and self.graphed_inference.applies(graph)

    def replayed(self, fn: GraphFunction, graph: EdgeGraph, natoms: torch.Tensor) -> dict[str, torch.Tensor]:
        """``fn(graph, natoms)``, from this shape's recording (made on its second sighting)."""
        return self.graphed_inference(fn, [*self.parameters(), *self.buffers()], graph, natoms)

    def forward(self, data) -> dict:
        with _grad_for_forces(self):
            graph = self.build_graph(data)
            if self.replays(graph):
                x = self.replayed(self._node_embedding, graph, data.natoms)["node_embedding"]
            else:
                x = self.node_features(graph)
        return {"node_embedding": x, "graph": graph, "gradient_forces": self.regress_forces and not self.direct_forces}

    def _node_embedding(self, graph: EdgeGraph, natoms: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"node_embedding": self.node_features(graph)}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return _load_with_clear_errors(self, super().load_state_dict, state_dict, strict)


class EquiformerV2(EquiformerV2Backbone):
    """EquiformerV2 with its energy and force heads in one module (fairchem's
    ``equiformer_v2``): ``forward(data) -> {"energy": [B], "forces": [N, 3]}``.

    Takes every backbone argument (see ``EquiformerV2Backbone``, ``cuda_graphs`` included) plus
    ``energy_reduce``: ``"sum"`` (divide by ``avg_num_nodes``, the reference) or
    ``"mean"`` (divide by the number of atoms).
    """

    def __init__(self, *args, energy_reduce: str = "sum", **kwargs):
        super().__init__(*args, **kwargs)
        self.energy_head = EnergyHead(self, energy_reduce)
        self.force_head = DirectForceHead(self) if (self.regress_forces and self.direct_forces) else None
        init_weights(self.energy_head, self.weight_init)
        if self.force_head is not None:
            init_weights(self.force_head, self.weight_init)
        if self.load_energy_lin_ref:
            self.energy_lin_ref = nn.Parameter(torch.zeros(self.max_num_elements), requires_grad=False)

    def forward(self, data) -> dict[str, torch.Tensor]:
        with _grad_for_forces(self):
            graph = self.build_graph(data)
        if self.replays(graph):
            return self.replayed(self.outputs, graph, data.natoms)
        return self.outputs(graph, data.natoms, data.pos)

    def outputs(
        self, graph: EdgeGraph, natoms: torch.Tensor, pos: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Energies ``[B]`` and forces ``[N, 3]`` over a built graph (``pos``: for gradient forces)."""
        with _grad_for_forces(self):
            x = self.node_features(graph)
            with _heads_in_fp32(x):
                x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
                energy = self.energy_head(x, graph, natoms)
        if self.use_energy_lin_ref:
            with torch.autocast("cuda", enabled=False):
                energy = energy.to(self.energy_lin_ref.dtype).index_add(
                    0, graph.batch, self.energy_lin_ref[graph.atomic_numbers]
                )
        out = {"energy": energy}
        if self.regress_forces:
            if self.direct_forces:
                with _heads_in_fp32(x):
                    out["forces"] = self.force_head(x, graph)
            else:
                out["forces"] = gradient_forces(energy, pos, self.training)
        return out


class EquiformerV2EnergyHead(EnergyHead):
    """Hydra energy head (fairchem's ``equiformerV2_scalar_head``):
    ``forward(data, emb) -> {output_name: [B]}``."""

    def __init__(self, backbone, output_name: str = "energy", reduce: str = "sum"):
        super().__init__(backbone, reduce)
        self.output_name = output_name
        init_weights(self, backbone.weight_init)
        self._register_load_state_dict_pre_hook(_hook(ckpt.ENERGY_HEAD))

    @property
    def use_amp(self) -> bool:  # fairchem runs heads outside autocast unless this is True
        return False

    def forward(self, data, emb: dict) -> dict[str, torch.Tensor]:
        with torch.enable_grad() if emb.get("gradient_forces") else contextlib.nullcontext():
            energy = super().forward(emb["node_embedding"], emb["graph"], data.natoms)
        if emb.get("gradient_forces"):
            emb["energy_for_forces"] = energy
        return {self.output_name: energy}


class EquiformerV2ForceHead(nn.Module):
    """Hydra force head (fairchem's ``equiformerV2_vector_head``):
    ``forward(data, emb) -> {output_name: [N, 3]}``.

    With a direct-force backbone it is the attention head; with
    ``direct_forces: False`` on the backbone it returns ``-dE/dpos`` of the
    energy head's output, so the energy head must run first (fairchem runs heads
    in name order: call them ``energy`` and ``forces``).
    """

    def __init__(self, backbone, output_name: str = "forces"):
        super().__init__()
        self.output_name = output_name
        self.direct = backbone.direct_forces
        self.activation_checkpoint = backbone.activation_checkpoint
        if self.direct:  # gradient forces have no parameters of their own
            self.attention = backbone.make_attention(1, alpha_drop=0.0)
            init_weights(self, backbone.weight_init)
        self._register_load_state_dict_pre_hook(_hook(ckpt.FORCE_HEAD))

    @property
    def use_amp(self) -> bool:
        return False

    def forward(self, data, emb: dict) -> dict[str, torch.Tensor]:
        if self.direct:
            forces = attention_forces(self.attention, emb["node_embedding"], emb["graph"], self.activation_checkpoint)
            return {self.output_name: forces}
        if "energy_for_forces" not in emb:
            raise RuntimeError(
                "EquiformerV2ForceHead: gradient forces need the energy head to run first; "
                "name the hydra heads 'energy' and 'forces' (fairchem runs them in name order)"
            )
        return {self.output_name: gradient_forces(emb["energy_for_forces"], data.pos, self.training)}


def _heads_in_fp32(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Under --amp the heads run in float32, as fairchem runs hydra heads (``use_amp`` False):
    the energy is a sum over atoms and the forces a difference of large terms, both of which
    lose too much in float16. The backbone keeps autocast (its norms are float32 already)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _grad_for_forces(model) -> contextlib.AbstractContextManager:
    """Autograd only where gradient forces need it (never for direct forces)."""
    if model.regress_forces and not model.direct_forces:
        return torch.enable_grad()
    return contextlib.nullcontext()


def _hook(heads: dict[str, str]):
    def hook(state_dict, prefix, *args):
        ckpt.rename_in_place(state_dict, prefix, heads)

    return hook
