"""Rewriting fairchem checkpoint files between fairchem's EquiformerV2 and ours.

A fairchem 1.x checkpoint is a dict with ``state_dict`` (keys usually prefixed
``module.`` by DistributedDataParallel), ``config`` (the run's config, whose
``model`` section names the model class), optionally ``ema`` (shadow copies of
the trainable parameters, as an ordered list) and trainer state.

``to_plugin`` renames the model (``equiformer_v2`` -> ``eqv2_plugin.EquiformerV2``,
hydra backbone and heads likewise) and the weights; ``to_fairchem`` does the
reverse and adds the buffers fairchem's modules keep in their state dicts. Our
parameters are registered in the same order as fairchem's (a test checks it),
so the EMA list carries over unchanged.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import torch

from eqv2_plugin.errors import UserInputError
from eqv2_plugin.model import checkpoint as names

# fairchem 1.10 registry names -> our dotted paths
MONOLITHIC = {"equiformer_v2": "eqv2_plugin.EquiformerV2"}
BACKBONES = {"equiformer_v2_backbone": "eqv2_plugin.EquiformerV2Backbone"}
ENERGY_HEADS = {
    "equiformerV2_scalar_head": "eqv2_plugin.EquiformerV2EnergyHead",
    "equiformer_v2_energy_head": "eqv2_plugin.EquiformerV2EnergyHead",
}
FORCE_HEADS = {
    "equiformerV2_vector_head": "eqv2_plugin.EquiformerV2ForceHead",
    "equiformer_v2_force_head": "eqv2_plugin.EquiformerV2ForceHead",
}
# our own arguments, which fairchem's classes do not accept
PLUGIN_ONLY_ARGS = ("edge_frame", "direct_forces", "energy_reduce", "kernel_backend", "recompute_edges", "cuda_graphs")


def _strip_module(key: str) -> tuple[str, str]:
    prefix = ""
    while key.startswith("module."):
        prefix += "module."
        key = key[len("module."):]
    return prefix, key


def _head_rules(model_cfg: dict) -> dict[str, dict[str, str]]:
    """Hydra head name -> the key renaming of that head's top-level module."""
    out = {}
    for head, cfg in (model_cfg.get("heads") or {}).items():
        module = cfg.get("module", "")
        if module in ENERGY_HEADS or module == "eqv2_plugin.EquiformerV2EnergyHead":
            out[head] = names.ENERGY_HEAD
        elif module in FORCE_HEADS or module == "eqv2_plugin.EquiformerV2ForceHead":
            out[head] = names.FORCE_HEAD
    return out


def kind_of(model_cfg: dict) -> tuple[str, str]:
    """``("monolithic"|"hydra", "fairchem"|"plugin")`` of a checkpoint's model config."""
    name = model_cfg.get("name")
    if name in MONOLITHIC:
        return "monolithic", "fairchem"
    if name in MONOLITHIC.values():
        return "monolithic", "plugin"
    if name == "hydra":
        backbone = (model_cfg.get("backbone") or {}).get("model")
        if backbone in BACKBONES:
            return "hydra", "fairchem"
        if backbone in BACKBONES.values():
            return "hydra", "plugin"
    raise UserInputError(
        f"model.name={name!r} is not an EquiformerV2 checkpoint (expected equiformer_v2, hydra with "
        f"equiformer_v2_backbone, or eqv2_plugin's classes)"
    )


def plugin_key(key: str, model_cfg: dict) -> str | None:
    """fairchem state-dict key -> ours (None for a fairchem buffer)."""
    prefix, key = _strip_module(key)
    if model_cfg.get("name") == "hydra" or key.startswith(("backbone.", "output_heads.")):
        if key.startswith("backbone."):
            new = names.from_reference_key(key[len("backbone."):], {})
            return None if new is None else f"{prefix}backbone.{new}"
        _, head, rest = key.split(".", 2)
        rules = _head_rules(model_cfg).get(head, {})
        new = names.from_reference_key(rest, rules)
        return None if new is None else f"{prefix}output_heads.{head}.{new}"
    new = names.from_reference_key(key)
    return None if new is None else prefix + new


def to_plugin(checkpoint: dict) -> dict:
    """A fairchem EquiformerV2 checkpoint -> one that names and holds our model."""
    cfg = checkpoint["config"]["model"]
    kind, side = kind_of(cfg)
    if side == "plugin":
        raise UserInputError("the checkpoint already uses eqv2_plugin's model; nothing to convert")
    out = copy.copy(checkpoint)
    out["config"] = copy.deepcopy(checkpoint["config"])
    new_cfg = out["config"]["model"]
    if kind == "monolithic":
        new_cfg["name"] = MONOLITHIC[cfg["name"]]
    else:
        new_cfg["backbone"]["model"] = BACKBONES[cfg["backbone"]["model"]]
        for head in new_cfg.get("heads", {}).values():
            head["module"] = {**ENERGY_HEADS, **FORCE_HEADS}.get(head["module"], head["module"])
    state = OrderedDict()
    for key, value in checkpoint["state_dict"].items():
        new = plugin_key(key, cfg)
        if new is not None:
            state[new] = value
    out["state_dict"] = state
    return out


def to_fairchem(checkpoint: dict) -> dict:
    """One of our checkpoints -> a fairchem EquiformerV2 checkpoint (needs fairchem installed,
    whose model is built once to supply the buffers it stores in its state dicts)."""
    from fairchem.core.common.registry import registry
    from fairchem.core.common.utils import setup_imports

    cfg = checkpoint["config"]["model"]
    kind, side = kind_of(cfg)
    if side == "fairchem":
        raise UserInputError("the checkpoint already uses fairchem's EquiformerV2; nothing to convert")
    inner = cfg if kind == "monolithic" else cfg["backbone"]
    if inner.get("direct_forces", True) is False:
        raise UserInputError(
            "model.direct_forces=False (gradient forces) has no fairchem counterpart; "
            "only direct-force models convert to fairchem's EquiformerV2"
        )
    out = copy.copy(checkpoint)
    out["config"] = copy.deepcopy(checkpoint["config"])
    new_cfg = out["config"]["model"]
    reverse = lambda table: {v: k for k, v in table.items()}  # noqa: E731
    if kind == "monolithic":
        new_cfg["name"] = "equiformer_v2"
        for arg in (*PLUGIN_ONLY_ARGS, "activation_checkpoint"):
            new_cfg.pop(arg, None)
    else:
        new_cfg["backbone"]["model"] = reverse(BACKBONES)[cfg["backbone"]["model"]]
        for arg in PLUGIN_ONLY_ARGS:
            new_cfg["backbone"].pop(arg, None)
        for head in new_cfg.get("heads", {}).values():
            head["module"] = {
                "eqv2_plugin.EquiformerV2EnergyHead": "equiformerV2_scalar_head",
                "eqv2_plugin.EquiformerV2ForceHead": "equiformerV2_vector_head",
            }.get(head["module"], head["module"])
    # build fairchem's model to learn its key names and buffers
    setup_imports()
    model_args = copy.deepcopy(new_cfg)
    name = model_args.pop("name")
    reference = registry.get_model_class(name)(**model_args)
    ref_state = reference.state_dict()
    ours_to_ref = {plugin_key(k, new_cfg): k for k in ref_state}
    state = OrderedDict()
    prefix = ""
    for key, value in checkpoint["state_dict"].items():
        prefix, bare = _strip_module(key)
        if bare not in ours_to_ref:
            raise UserInputError(f"state_dict key {key!r} has no counterpart in fairchem's EquiformerV2")
        state[ours_to_ref.pop(bare)] = value
    for ref_key in ref_state:  # fairchem's buffers, in its order
        if plugin_key(ref_key, new_cfg) is None:
            state[ref_key] = ref_state[ref_key]
    out["state_dict"] = OrderedDict((prefix + k, state[k]) for k in ref_state if k in state)
    return out


def convert_file(src: Path, dst: Path, direction: str = "auto") -> str:
    """Convert a checkpoint file; returns the direction used."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise UserInputError(f"checkpoint {src} does not exist")
    if dst.exists() and dst.resolve() == src.resolve():
        raise UserInputError("OUT must differ from IN (the original is kept)")
    checkpoint = torch.load(src, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "config" not in checkpoint:
        raise UserInputError(f"{src} is not a fairchem checkpoint (no state_dict/config)")
    if direction == "auto":
        direction = "to-plugin" if kind_of(checkpoint["config"]["model"])[1] == "fairchem" else "to-fairchem"
    converted = to_plugin(checkpoint) if direction == "to-plugin" else to_fairchem(checkpoint)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(converted, dst)
    return direction
