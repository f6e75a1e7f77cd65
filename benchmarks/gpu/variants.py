#!/usr/bin/env python
"""What the host-side shape of our model costs on a GPU: one process times our training step
(and inference) under variants that switch one execution choice each, next to the reference,
same weights and batch (the benchmark's ``_common.make_step``). Diagnostic variants (no gc, no
recomputation) are not options of the model: they tell where the time goes.

    python3 benchmarks/gpu/variants.py --amp --variants base cpu_shapes no_gc ref

Variants: ``base`` (the tree as it is), ``cpu_shapes`` (``escn.backend.launch_bound`` False:
per-degree GEMMs and 128-node grid-MLP chunks, as before it existed), ``no_gc`` (Python's
garbage collector off during the steps), ``no_edge_recompute`` (the attention keeps its edge
messages for the backward pass), ``recompute_conv1`` (the recomputed edge messages redo the
first SO(2) convolution's GEMMs instead of replaying its kept outputs, as before
``layers/kept_linear.py``), ``no_ffn_recompute`` (the grid MLP keeps its grid),
``determinism_check`` (torch.utils.checkpoint compares each recomputation with its first
pass, as before ``model/recompute.py`` turned that off), ``reentrant`` (torch's older
checkpoint: first pass without autograd, no saved-tensor hooks; cannot serve autograd.grad,
so not for gradient forces), ``no_rng_state`` (checkpoint does not save and restore the RNG
states), ``ref``.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _common as C  # noqa: E402


@contextlib.contextmanager
def variant(name: str, model):
    from unittest import mock

    import eqv2_plugin.model.ffn as ffn
    from eqv2_plugin.escn import backend
    from eqv2_plugin.model.attention import EdgeAttention

    with contextlib.ExitStack() as stack:
        if name == "cpu_shapes":
            stack.enter_context(mock.patch.object(backend, "launch_bound", lambda device: False))
        elif name == "no_gc":
            gc.disable()
            stack.callback(gc.enable)
        elif name == "no_edge_recompute":
            attention = [m for m in model.modules() if isinstance(m, EdgeAttention)]
            for m in attention:
                m.recompute_edges = False
            stack.callback(lambda: [setattr(m, "recompute_edges", True) for m in attention])
        elif name == "recompute_conv1":  # the first SO(2) convolution's GEMMs redone in the backward pass
            from eqv2_plugin.model import recompute

            stack.enter_context(mock.patch.object(recompute, "KeptOutputs", lambda: None))
        elif name == "no_ffn_recompute":
            stack.enter_context(mock.patch.object(ffn, "recompute_in_backward", lambda f, *a: f(*a)))
        elif name == "determinism_check":
            from eqv2_plugin.model import recompute

            stack.enter_context(mock.patch.object(recompute, "DETERMINISM_CHECK", "default"))
        elif name in ("reentrant", "no_rng_state"):
            from eqv2_plugin.model import recompute

            plain = recompute.checkpoint
            if name == "reentrant":  # no saved-tensor hooks; first pass without autograd (no autograd.grad)
                def swapped(fn, *a, **k):
                    return plain(fn, *a, use_reentrant=True)
            else:  # nothing random is recomputed: skip saving and restoring the RNG states
                def swapped(fn, *a, **k):
                    return plain(fn, *a, **k, preserve_rng_state=False)
            stack.enter_context(mock.patch.object(recompute, "checkpoint", swapped))
        elif name not in ("base", "ref"):
            raise ValueError(f"unknown variant {name!r}")
        yield


def time_steps(step, warmup: int, steps: int, device) -> dict:
    import torch

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    r = C.timed_steps(step, steps, device)
    times = r["times"]
    return {
        "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "gc": r["gc_collections"],
        "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--config", default="83M", choices=sorted(C.CONFIGS))
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--systems", type=int, default=8)
    p.add_argument("--backend", default="triton", choices=["torch", "triton"])
    p.add_argument("--modes", nargs="+", default=["train", "inference"])
    p.add_argument("--variants", nargs="+", default=["ref", "base", "cpu_shapes", "no_gc"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import torch

    device = torch.device(args.device)
    cfg = dict(C.CONFIGS[args.config])
    if args.layers:
        cfg["num_layers"] = args.layers
    batch = C.to_batch(C.oc20_like_atoms(args.systems, seed=args.seed)).to(device)
    precision = "AMP fp16" if args.amp else "fp32"
    models = {}
    print(f"{args.config}, {args.systems} systems, ours with {args.backend}, {precision}, "
          f"median of {args.steps} steps after {args.warmup}", flush=True)
    print(f"{'mode':10} {'variant':18} {'median s':>9} {'min s':>7} {'max s':>7} {'gc':>4} {'peak MB':>9}", flush=True)
    for mode in args.modes:
        for name in args.variants:
            impl = "ref" if name == "ref" else "ours"
            if impl not in models:
                models[impl] = C.build_models(cfg, impl, args.seed, args.backend if impl == "ours" else None)[0].to(device)
            model = models[impl]
            try:
                with variant(name, model):
                    r = time_steps(C.make_step(model, batch, mode, args.amp, args.seed), args.warmup, args.steps, device)
                print(f"{mode:10} {name:18} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['max_s']:7.3f} {r['gc']:4d} "
                      f"{r['peak_mb']:9.0f}", flush=True)
            except Exception as exc:  # noqa: BLE001 - one failing variant should not hide the others
                print(f"{mode:10} {name:18} failed: {type(exc).__name__}: {exc}", flush=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
