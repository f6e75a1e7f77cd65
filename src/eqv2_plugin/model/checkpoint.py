"""Reading state dicts saved by fairchem 1.10's EquiformerV2.

fairchem's parameter names differ from ours (``blocks.0.ga.so2_conv_1.fc_m0``
vs ``blocks.0.attention.conv1.m0_linear``), and its state dicts also carry
buffers we do not store (coefficient permutations, grid matrices, index
tables: we rebuild those from the configuration). ``from_reference_keys``
renames one key (or returns None for a buffer to drop); ``to_reference_keys``
is the inverse for parameters.

Parameter shapes are identical on both sides, so conversion is renaming only.
"""
from __future__ import annotations

import re
from collections import OrderedDict

# (fairchem pattern, ours) applied in order to every key; anchored on dots.
# the heads' top-level names: monolithic model, and the hydra heads on their own
MONOLITHIC_HEADS = {"energy_block.": "energy_head.ffn.", "force_block.": "force_head.attention."}
ENERGY_HEAD = {"energy_block.": "ffn."}
FORCE_HEAD = {"force_block.": "attention."}
_BODY_RULES = [
    (r"(^|\.)sphere_embedding\.", r"\1atom_embedding."),
    (r"(^|\.)edge_degree_embedding\.", r"\1edge_degree."),
    (r"(^|\.)source_embedding\.", r"\1src_embedding."),
    (r"(^|\.)target_embedding\.", r"\1tgt_embedding."),
    (r"\.norm_1\.", ".attn_norm."),
    (r"\.norm_2\.", ".ffn_norm."),
    (r"\.ga\.", ".attention."),
    (r"\.so2_conv_1\.", ".conv1."),
    (r"\.so2_conv_2\.", ".conv2."),
    (r"\.fc_m0\.", ".m0_linear."),
    (r"\.so2_m_conv\.(\d+)\.fc\.", r".m_linears.\1."),
    (r"(attention)\.rad_func\.net\.", r"\1.shared_radial.layers."),
    (r"\.rad_func\.net\.", ".radial.layers."),
    (r"\.alpha_norm\.", ".logit_norm."),
    (r"\.alpha_dot$", ".logit_weight"),
    (r"(attention)\.proj\.", r"\1.out_proj."),
    (r"\.so3_linear_1\.", ".lin_in."),
    (r"\.so3_linear_2\.", ".lin_out."),
    (r"\.gating_linear\.", ".gate_linear."),
    (r"\.norm_l0\.", ".l0_norm."),
    (r"\.affine_weight$", ".weight"),
    (r"\.affine_bias$", ".bias"),
    (r"(^|\.)norm\.", r"\1final_norm."),
]
# buffers of fairchem's modules; rebuilt from the configuration on our side
_BUFFER_PATTERNS = [
    r"(^|\.)SO3_rotation\.",
    r"(^|\.)mappingReduced\.",
    r"(^|\.)SO3_grid\.",
    r"(^|\.)distance_expansion\.offset$",
    r"\.expand_index$",
    r"\.balance_degree_weight$",
]

# markers that only a fairchem EquiformerV2 state dict has
_REFERENCE_MARKERS = ("sphere_embedding.weight", ".ga.so2_conv_1.", "edge_degree_embedding.", "energy_block.", "force_block.")


def looks_like_reference(keys) -> bool:
    return any(marker in key for key in keys for marker in _REFERENCE_MARKERS)


def from_reference_key(key: str, heads: dict[str, str] = MONOLITHIC_HEADS) -> str | None:
    """fairchem name -> ours (None for a buffer that we do not store)."""
    if any(re.search(p, key) for p in _BUFFER_PATTERNS):
        return None
    for old, new in heads.items():
        if key.startswith(old):
            key = new + key[len(old):]
    for pattern, repl in _BODY_RULES:
        key = re.sub(pattern, repl, key)
    return key


def from_reference_state_dict(
    state_dict: dict, prefix: str = "", heads: dict[str, str] = MONOLITHIC_HEADS
) -> OrderedDict:
    """Rename the keys of ``state_dict`` under ``prefix`` from fairchem's names to ours."""
    out = OrderedDict()
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            out[key] = value
            continue
        new = from_reference_key(key[len(prefix):], heads)
        if new is not None:
            out[prefix + new] = value
    return out


def rename_in_place(state_dict: dict, prefix: str, heads: dict[str, str] = MONOLITHIC_HEADS) -> None:
    """Load-time hook body: convert fairchem keys under ``prefix`` if there are any."""
    keys = [k for k in state_dict if k.startswith(prefix)]
    if not looks_like_reference([k[len(prefix):] for k in keys]):
        return
    converted = from_reference_state_dict({k: state_dict[k] for k in keys}, prefix, heads)
    for k in keys:
        del state_dict[k]
    state_dict.update(converted)


def strip_ddp_prefix(state_dict: dict, model_keys) -> dict:
    """Drop a leading ``module.`` (DistributedDataParallel) if the model has none."""
    if any(k.startswith("module.") for k in model_keys):
        return state_dict
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return OrderedDict((k[len("module."):], v) for k, v in state_dict.items())
    return state_dict
