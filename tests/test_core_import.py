"""The core imports and runs without fairchem (the GPU machines have none)."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def test_core_imports_and_runs_without_fairchem():
    script = textwrap.dedent(
        """
        import sys, builtins
        real_import = builtins.__import__
        def guarded(name, *args, **kwargs):
            if name == "fairchem" or name.startswith("fairchem.") or name.startswith("torch_scatter"):
                raise ImportError(f"blocked import of {name}")
            return real_import(name, *args, **kwargs)
        builtins.__import__ = guarded

        import torch
        import eqv2_plugin
        from eqv2_plugin import EquiformerV2, EquiformerV2Backbone, EquiformerV2EnergyHead, EquiformerV2ForceHead
        import eqv2_plugin.so3, eqv2_plugin.layers.norms, eqv2_plugin.escn, eqv2_plugin.cli

        # a precomputed graph: two atoms in a box, no periodic images
        class Batch:
            pass
        b = Batch()
        b.pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.5, 0.2]])
        b.atomic_numbers = torch.tensor([8, 29])
        b.batch = torch.zeros(2, dtype=torch.long)
        b.natoms = torch.tensor([2])
        b.edge_index = torch.tensor([[0, 1], [1, 0]])
        model = EquiformerV2(
            otf_graph=False, use_pbc=False, num_layers=1, sphere_channels=8, attn_hidden_channels=8,
            num_heads=2, attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8,
            lmax_list=[2], mmax_list=[1], edge_channels=8, use_grid_mlp=True, norm_type="layer_norm_sh",
        ).eval()
        out = model(b)
        assert out["energy"].shape == (1,) and out["forces"].shape == (2, 3)

        # a periodic system with the graph built on the fly (our own radius graph)
        b.cell = torch.eye(3)[None] * 3.0
        del b.edge_index
        periodic = EquiformerV2(
            otf_graph=True, use_pbc=True, max_radius=4.0, max_neighbors=10, num_layers=1, sphere_channels=8,
            attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4, attn_value_channels=4,
            ffn_hidden_channels=8, lmax_list=[2], mmax_list=[1], edge_channels=8, norm_type="layer_norm_sh",
        ).eval()
        out = periodic(b)
        assert torch.isfinite(out["forces"]).all() and out["forces"].abs().sum() > 0
        assert not any(m == "fairchem" or m.startswith("fairchem.") for m in sys.modules)
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok")


def test_package_import_is_light():
    res = subprocess.run(
        [sys.executable, "-c", "import sys, eqv2_plugin; print(sorted(m for m in ('torch', 'fairchem', 'e3nn') if m in sys.modules))"],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
