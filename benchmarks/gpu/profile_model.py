#!/usr/bin/env python
"""Where the GPU time goes: torch.profiler tables of one config (default 83M, 8 OC20-like
systems, the benchmark's weights and batch), for the reference and ours with each backend,
inference and training step, fp32 or (``--amp``) under fp16 autocast. Prints, per case, the
operators and kernels with the most self device time over ``--steps`` profiled steps (after
``--warmup`` unprofiled ones).

    python3 benchmarks/gpu/profile_model.py --device cuda --cases ours:triton:train ref:train
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _common as C  # noqa: E402


def profile_case(impl: str, backend: str | None, mode: str, args) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(args.device)
    cfg = dict(C.CONFIGS[args.config])
    if args.layers:
        cfg["num_layers"] = args.layers
    model, _ = C.build_models(cfg, impl, args.seed, backend)
    model = model.to(device)
    batch = C.to_batch(C.oc20_like_atoms(args.systems, seed=args.seed)).to(device)
    step = C.make_step(model, batch, mode, args.amp, args.seed)  # the benchmark's measured call

    for _ in range(args.warmup):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    timeline = step_timeline(step, args.timeline, device) if args.timeline else ""
    events = prof.key_averages()
    for key in (("self_device_time_total", "self_cuda_time_total") if device.type == "cuda" else ("self_cpu_time_total",)):
        try:
            return events.table(sort_by=key, row_limit=args.rows, max_name_column_width=70) + timeline
        except (AttributeError, KeyError, ValueError):
            continue
    return events.table(row_limit=args.rows) + timeline


def step_timeline(step, n: int, device) -> str:
    """Wall time of each of ``n`` more steps (``_common.timed_steps``), with the time Python's
    garbage collector took during them and the CUDA allocator's counters: ours' training steps
    on the H200 alternated between ~0.37 and ~0.47 s, and a collection or an allocator retry
    (free and re-malloc) are the usual suspects for such a bimodal step time."""
    r = C.timed_steps(step, n, device)
    counters = ", ".join(f"{k} +{v}" for k, v in r["allocator"].items())
    return (f"\nstep times (ms): {' '.join(f'{1000 * t:.0f}' for t in r['times'])}\n"
            f"Python gc during them: {r['gc_collections']} collections, {1000 * r['gc_seconds']:.1f} ms"
            + (f"; CUDA allocator: {counters}" if counters else "") + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--config", default="83M", choices=sorted(C.CONFIGS))
    p.add_argument("--layers", type=int, default=None, help="override num_layers (quick runs)")
    p.add_argument("--systems", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--timeline", type=int, default=0,
                   help="after the profile, time this many more steps one by one (with gc and allocator counters)")
    p.add_argument("--amp", action="store_true", help="fp16 autocast (CUDA), with a GradScaler for training")
    p.add_argument("--cases", nargs="+", default=["ref:train", "ours:triton:train", "ours:triton:inference"],
                   help="IMPL[:BACKEND]:MODE, e.g. ref:train ours:torch:inference")
    args = p.parse_args()
    import gc

    import torch

    if args.amp and args.device != "cuda":
        p.error("--amp needs --device cuda")
    for case in args.cases:
        parts = case.split(":")
        impl, mode = parts[0], parts[-1]
        backend = parts[1] if len(parts) == 3 else None
        precision = "AMP fp16" if args.amp else "fp32"
        print(f"\n==== {args.config} {case} {precision} ({args.systems} systems, {args.steps} steps, {args.device})", flush=True)
        try:
            print(profile_case(impl, backend, mode, args), flush=True)
        except Exception as exc:  # noqa: BLE001 - one failing case should not hide the others
            print(f"failed: {type(exc).__name__}: {exc}", flush=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
