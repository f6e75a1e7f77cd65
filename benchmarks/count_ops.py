#!/usr/bin/env python
"""Operators per training step and per inference, ours against the reference, counted on the CPU.

On a GPU a step of either model is bound by the host launching operators, not by the GPU
(H200, 83M, 8 systems, AMP: ours' training step kept the GPU busy 124 ms of ~0.3-0.5 s;
``RESULTS.md``), so the number of operators is what a GPU step's host time follows, and it can
be counted here without a GPU: every ATen call under a ``TorchDispatchMode`` (below autograd and
autocast, so the backward pass and autocast's casts count too), split into views (no kernel)
and the rest (a kernel launch each on a GPU). Triton kernels are not ATen calls: ours' launches
of them are listed separately (the ATen calls triton's interpreter makes while it runs one here
are not counted: they are not launches).

Counts do not depend on widths or the number of atoms (one graph, one edge chunk: ours runs in
its GPU shapes, ``escn.backend.launch_bound``), so the models here are the config's structure
(degrees, orders, grid, layers) with narrow channels, on a 4-atom periodic cell. Per layer =
the count with two layers minus the count with one.

    python benchmarks/count_ops.py --config 83M --amp
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

NARROW = dict(sphere_channels=16, attn_hidden_channels=8, num_heads=2, attn_alpha_channels=8,
              attn_value_channels=4, ffn_hidden_channels=16, edge_channels=8)
VIEWS = {"view", "_unsafe_view", "slice", "select", "transpose", "t", "permute", "expand", "unsqueeze",
         "squeeze", "unbind", "split", "split_with_sizes", "detach", "alias", "as_strided", "_reshape_alias",
         "lift_fresh", "narrow", "reshape", "view_as", "diagonal", "unfold", "chunk"}


def small_cell(seed: int):
    """A rattled 4-atom fcc Cu cell (periodic; 20 neighbours each within the cutoff): counts do
    not depend on the number of atoms, and triton's interpreter is slow on a real system."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def count(impl: str, cfg: dict, mode: str, amp: bool, seed: int) -> tuple[collections.Counter, int]:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not inside_launch:  # the interpreter's own copies of a kernel's arguments are no launches
                self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    model, _ = C.build_models(cfg, impl, seed, "triton" if impl == "ours" else None)
    batch = C.to_batch([small_cell(seed)])
    launches = collections.Counter()
    inside_launch = False
    if impl == "ours":  # Triton launches: ``kernels.NAME[grid](...)`` goes through a counting proxy
        from eqv2_plugin.escn.triton import kernels

        class Launches:
            def __init__(self, name, kernel):
                self.name, self.kernel = name, kernel

            def __getitem__(self, grid):
                launches[self.name] += 1

                def launch(*args, **kwargs):
                    nonlocal inside_launch
                    inside_launch = True
                    try:
                        return self.kernel[grid](*args, **kwargs)
                    finally:
                        inside_launch = False

                return launch

        import inspect
        import re

        from eqv2_plugin.escn.triton import ops

        # the kernels ops.py launches (it names no @triton.jit helper the kernels call)
        for name in set(re.findall(r"kernels\.(\w+)", inspect.getsource(ops))):
            if hasattr(getattr(kernels, name, None), "fn"):
                setattr(kernels, name, Launches(name, getattr(kernels, name)))

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(batch)
        return out["energy"].float().sum() + out["forces"].float().pow(2).sum()

    if mode == "inference":
        model.eval()
        with torch.no_grad():
            forward()
            launches.clear()
            with Counter() as c:
                forward()
    else:
        model.train()
        forward().backward()
        model.zero_grad(set_to_none=True)  # as a training step: the gradients are new tensors, not added to
        launches.clear()
        with Counter() as c:
            loss = forward()
            loss.backward()
    if impl == "ours":
        for name in dir(kernels):
            if isinstance(getattr(kernels, name), Launches):
                setattr(kernels, name, getattr(kernels, name).kernel)
    return c.ops, sum(launches.values())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="83M", choices=sorted(C.CONFIGS))
    p.add_argument("--amp", action="store_true", help="under (CPU, bfloat16) autocast: its casts count")
    p.add_argument("--modes", nargs="+", default=["train", "inference"])
    p.add_argument("--top", type=int, default=12, help="also list the most frequent operators")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: our kernels run interpreted
    from unittest import mock

    from eqv2_plugin.escn import backend

    layers = C.CONFIGS[args.config]["num_layers"]
    print(f"{args.config} structure ({layers} layers), narrow channels, 4-atom cell, "
          f"{'bf16 autocast' if args.amp else 'fp32'}; ours in its GPU shapes with Triton kernels")
    print(f"{'mode':10} {'impl':5} {'per layer':>10} {'(no view)':>10} {'rest':>6} {'(no view)':>10} "
          f"{'total':>7} {'(no view)':>10} {'Triton':>7}")
    with mock.patch.object(backend, "launch_bound", lambda device: True):
        for mode in args.modes:
            totals = {}
            for impl in ("ref", "ours"):
                counts = []
                for n in (1, 2):
                    cfg = dict(C.CONFIGS[args.config], **NARROW, num_layers=n)
                    counts.append(count(impl, cfg, mode, args.amp, args.seed))
                (one, t1), (two, t2) = counts
                no_view = lambda c: sum(v for k, v in c.items() if k not in VIEWS)  # noqa: E731
                per, per_nv = sum(two.values()) - sum(one.values()), no_view(two) - no_view(one)
                rest, rest_nv = sum(one.values()) - per, no_view(one) - per_nv
                total, total_nv = rest + layers * per, rest_nv + layers * per_nv
                triton = (t1 - (t2 - t1)) + layers * (t2 - t1)
                totals[impl] = (total, total_nv)
                print(f"{mode:10} {impl:5} {per:10d} {per_nv:10d} {rest:6d} {rest_nv:10d} {total:7d} {total_nv:10d} "
                      f"{triton:7d}", flush=True)
                if args.top:
                    layer_ops = two - one
                    top = ", ".join(f"{k} {v}" for k, v in layer_ops.most_common(args.top))
                    print(f"{'':17}per layer: {top}")
            (r, r_nv), (o, o_nv) = totals["ref"], totals["ours"]
            print(f"{mode:10} ours/ref: {o / r:.2f} of all operators, {o_nv / r_nv:.2f} without views")
    return 0


if __name__ == "__main__":
    sys.exit(main())
