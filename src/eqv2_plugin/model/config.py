"""Constructor arguments of EquiformerV2, their validation, and the defaults of
fairchem 1.10's implementation (so configs written for it work unchanged)."""
from __future__ import annotations

from eqv2_plugin.escn.backend import KERNEL_BACKENDS
from eqv2_plugin.layers.norms import NORM_TYPES
from eqv2_plugin.so3.frames import FRAME_MODES
from eqv2_plugin.so3.wigner import MAX_SUPPORTED_LMAX

# Scale constants of the reference; released OC20/OC22 configs keep them.
AVG_NUM_NODES = 77.81317
AVG_DEGREE = 23.395238876342773

# Accepted for config compatibility; the reference stores them but never uses them.
INERT_ARGUMENTS = ("num_sphere_samples", "num_distance_basis", "attn_activation", "ffn_activation")


def _positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"EquiformerV2: {name} must be a positive integer, got {value!r}")


def _rate(name: str, value) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"EquiformerV2: {name} must be a number in [0, 1), got {value!r}")


def validate_config(cfg: dict) -> tuple[int, int]:
    """Check a backbone configuration; return ``(lmax, mmax)``. Raises ``ValueError``
    naming the offending argument and what would fix it."""
    lmax_list, mmax_list = cfg["lmax_list"], cfg["mmax_list"]
    if not isinstance(lmax_list, (list, tuple)) or not isinstance(mmax_list, (list, tuple)):
        raise ValueError("EquiformerV2: lmax_list and mmax_list must be lists, e.g. lmax_list: [6], mmax_list: [2]")
    if len(lmax_list) != 1 or len(mmax_list) != 1:
        raise ValueError(
            f"EquiformerV2: only one resolution is supported (lmax_list={list(lmax_list)}, "
            f"mmax_list={list(mmax_list)}); use single-element lists as all released configs do"
        )
    lmax, mmax = lmax_list[0], mmax_list[0]
    if not isinstance(lmax, int) or lmax < 1:
        raise ValueError(f"EquiformerV2: lmax_list[0] must be an integer >= 1, got {lmax!r}")
    if lmax > MAX_SUPPORTED_LMAX:
        raise ValueError(f"EquiformerV2: lmax_list[0]={lmax} exceeds the supported maximum {MAX_SUPPORTED_LMAX}")
    if not isinstance(mmax, int) or mmax < 0:
        raise ValueError(f"EquiformerV2: mmax_list[0] must be a non-negative integer, got {mmax!r}")
    if mmax > lmax:
        raise ValueError(f"EquiformerV2: mmax_list[0]={mmax} must not exceed lmax_list[0]={lmax}")
    for name in (
        "num_layers", "sphere_channels", "attn_hidden_channels", "num_heads", "attn_alpha_channels",
        "attn_value_channels", "ffn_hidden_channels", "edge_channels", "max_num_elements", "max_neighbors",
    ):
        _positive_int(name, cfg[name])
    if cfg["grid_resolution"] is not None:
        _positive_int("grid_resolution", cfg["grid_resolution"])
        if cfg["grid_resolution"] < 2 * (lmax + 1) or cfg["grid_resolution"] % 2:
            raise ValueError(
                f"EquiformerV2: grid_resolution={cfg['grid_resolution']} cannot resolve degree lmax={lmax} "
                f"on the S2 grid; use an even number >= {2 * (lmax + 1)} (released configs: 18) or null"
            )
    if not isinstance(cfg["max_radius"], (int, float)) or cfg["max_radius"] <= 0:
        raise ValueError(f"EquiformerV2: max_radius must be a positive number of Angstrom, got {cfg['max_radius']!r}")
    if cfg["norm_type"] not in NORM_TYPES:
        raise ValueError(f"EquiformerV2: norm_type must be one of {NORM_TYPES}, got {cfg['norm_type']!r}")
    if cfg["use_s2_act_attn"]:
        raise ValueError(
            "EquiformerV2: use_s2_act_attn=True is not supported (the reference asserts it off); set it to False"
        )
    if cfg["distance_function"] != "gaussian":
        raise ValueError(f"EquiformerV2: distance_function must be 'gaussian', got {cfg['distance_function']!r}")
    if cfg["weight_init"] not in ("normal", "uniform"):
        raise ValueError(f"EquiformerV2: weight_init must be 'normal' or 'uniform', got {cfg['weight_init']!r}")
    if cfg["share_atom_edge_embedding"] and not cfg["use_atom_edge_embedding"]:
        raise ValueError("EquiformerV2: share_atom_edge_embedding=True needs use_atom_edge_embedding=True")
    if cfg["use_energy_lin_ref"] and not cfg["load_energy_lin_ref"]:
        raise ValueError(
            "EquiformerV2: use_energy_lin_ref=True needs load_energy_lin_ref=True (the references are parameters)"
        )
    if cfg["edge_frame"] not in FRAME_MODES:
        raise ValueError(f"EquiformerV2: edge_frame must be one of {FRAME_MODES}, got {cfg['edge_frame']!r}")
    if cfg["kernel_backend"] not in KERNEL_BACKENDS:
        raise ValueError(
            f"EquiformerV2: kernel_backend must be one of {KERNEL_BACKENDS}, got {cfg['kernel_backend']!r}"
        )
    for name in ("alpha_drop", "drop_path_rate", "proj_drop"):
        _rate(name, cfg[name])
    for name in ("avg_num_nodes", "avg_degree"):
        if cfg[name] is not None and (not isinstance(cfg[name], (int, float)) or cfg[name] <= 0):
            raise ValueError(f"EquiformerV2: {name} must be a positive number or null, got {cfg[name]!r}")
    return lmax, mmax
