#!/usr/bin/env python
"""Inference time and peak memory against system size, ours and the reference.

One OC20-like slab+adsorbate system (``--seed``) is repeated ``k x k`` laterally (the
cell stays periodic in all three directions) for k = 1, 2, ... until ``--max-atoms``
(or the explicit ``--repeats``).  Every (implementation, size) point is measured in a
fresh process: ``model.eval()``, ``torch.no_grad()``, energy + direct forces, median
of ``--reps`` runs after ``--warmup``; peak memory = peak RSS during the measured calls minus
the RSS after model + batch construction on CPU (``max_memory_allocated`` on CUDA).

The reference is measured only up to ``--max-ref-atoms`` atoms; once an
implementation runs out of memory or past ``--timeout``, its larger sizes are skipped.

``--layers`` overrides ``num_layers`` of the config (default: the config's own, 8 for
31M); time and memory per layer are roughly constant, so ``--layers 2`` gives the
scaling shape in a quarter of the time.

Writes ``--out`` (JSON) and ``--plot`` (PNG: time vs edges and memory vs edges,
log-log) and prints the fitted slope of log(time) vs log(edges).

Example (quick)::

    .venv/bin/python benchmarks/bench_scaling.py --layers 2 --max-atoms 2000 --max-ref-atoms 500 \\
        --out benchmarks/scaling.json --plot benchmarks/scaling.png
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="31M", choices=sorted(C.CONFIGS))
    p.add_argument("--layers", type=int, default=None, help="override num_layers (quick runs)")
    p.add_argument("--impl", default="both", choices=["ours", "ref", "both"])
    p.add_argument("--skip-reference", action="store_true", help="same as --impl ours")
    p.add_argument("--no-graph", action="store_true",
                   help="do not measure the radius graph alone (fairchem's radius_graph_pbc, called by both "
                        "models inside forward; measured by default as a third series)")
    p.add_argument("--repeats", type=int, nargs="+", default=None,
                   help="lateral repeats k (k x k copies of the base system); default: 1, 2, ... up to --max-atoms")
    p.add_argument("--max-atoms", type=int, default=2000, help="largest system (default 2000 atoms)")
    p.add_argument("--max-ref-atoms", type=int, default=500,
                   help="measure the reference only up to this many atoms (default 500)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--amp", action="store_true", help="CUDA only: fp16 autocast")
    p.add_argument("--backend", default=None, help="our model's kernel_backend, if it accepts one")
    C.add_measurement_args(p, timeout_s=1800.0)
    p.add_argument("--out", default="scaling.json")
    p.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    args = p.parse_args(argv)
    if args.skip_reference:
        args.impl = "ours"
    if args.amp and args.device != "cuda":
        p.error("--amp needs --device cuda")
    return args


def fit_slope(points):
    """Least-squares slope and intercept of log(y) against log(x)."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len(pts) < 2:
        return None, None
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None, None
    slope = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    return slope, my - slope * mx


def plot(results, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.5))
    styles = {"ref": dict(color="tab:red", marker="s", label="fairchem 1.10 reference"),
              "ours": dict(color="tab:blue", marker="o", label="eqv2_plugin (ours)"),
              "graph": dict(color="tab:gray", marker="^", label="fairchem's radius graph alone (in the reference)"),
              "graph_ours": dict(color="tab:green", marker="v", label="our radius graph alone (in ours)")}
    for impl, style in styles.items():
        pts = [r for r in results if r["impl"] == impl and r["status"] == "ok"]
        if not pts:
            continue
        edges = [r["edges"] for r in pts]
        ax_t.plot(edges, [r["median_s"] for r in pts], **style)
        ax_m.plot(edges, [max(r["peak_mb"], 1e-3) for r in pts], **style)
        ax_m.plot(edges, [r["peak_abs_mb"] for r in pts], color=style["color"], linestyle=":", alpha=0.6,
                  label=style["label"] + " (absolute)")
        for r in pts:
            if r.get("contended_runs"):
                ax_t.annotate("contended", (r["edges"], r["median_s"]), color=style["color"], fontsize=7,
                              xytext=(4, -10), textcoords="offset points")
        for r in results:
            if r["impl"] == impl and r["status"] != "ok" and r.get("edges"):
                ax_t.annotate(r["status"], (r["edges"], pts[-1]["median_s"]), color=style["color"], fontsize=8)
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for ax, ylabel in ((ax_t, "inference time per call (s)"), (ax_m, "peak memory above baseline (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("edges (radius graph)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_t.set_title("time vs edges")
    ax_m.set_title("memory vs edges")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return C.worker_main(*args.worker)

    cfg = dict(C.CONFIGS[args.config])
    if args.layers:
        cfg["num_layers"] = args.layers
    label = args.config if not args.layers else f"{args.config}/{args.layers}L"
    base_atoms = len(C.repeated_atoms(1, seed=args.seed)[0])
    repeats = args.repeats or [k for k in range(1, 100) if base_atoms * k * k <= args.max_atoms * 1.1]
    impls = ["ref", "ours"] if args.impl == "both" else [args.impl]
    if not args.no_graph:
        impls += ["graph", "graph_ours"]
    wait_idle = args.wait_idle if args.wait_idle is not None else (300.0 if args.device == "cpu" else 0.0)
    max_retries = args.max_retries if args.max_retries is not None else 2 * args.reps
    mem_limit = args.mem_limit_gb if args.mem_limit_gb is not None else C.default_mem_limit_gb()
    machine = C.machine_info(args.device, args.threads)
    print(C.machine_line(machine), flush=True)
    print(f"config {label}; base system {base_atoms} atoms (seed {args.seed}); repeats {repeats}; "
          f"reference up to {args.max_ref_atoms} atoms; CPU worker memory cap {mem_limit or 'none'} GB", flush=True)

    results = []
    stopped = {}  # impl -> reason its larger sizes are skipped
    t_start = time.time()
    for k in repeats:
        n_atoms = base_atoms * k * k
        for impl in impls:
            rec = {"impl": impl, "repeat": k, "atoms": n_atoms}
            if impl == "ref" and n_atoms > args.max_ref_atoms:
                continue
            if impl in stopped:
                rec.update(status="skipped", error=f"after {stopped[impl]} at a smaller size")
                results.append(rec)
                continue
            spec = dict(
                impl=impl, cfg=cfg, label=f"{label} k={k}", mode="inference", device=args.device, seed=args.seed,
                systems={"kind": "repeat", "repeat": k, "seed": args.seed}, reps=args.reps, warmup=args.warmup,
                threads=args.threads, amp=args.amp, backend=args.backend,
                mem_limit_gb=mem_limit if args.device == "cpu" else None,
                    wait_idle=wait_idle, max_retries=max_retries,
            )
            print(f"== {impl} k={k} ({n_atoms} atoms) ...", flush=True)
            r = C.run_measurement(os.path.abspath(__file__), spec, timeout=args.timeout, wait_idle=wait_idle)
            rec.update(r)
            if r.get("code") and r["code"] != machine["code"]:
                print(f"   note: the model code changed since the start: {r['code']}", flush=True)
            rec["atoms"] = r.get("atoms", n_atoms)
            results.append(rec)
            if r["status"] == "ok":
                print(f"   {impl}: {r['atoms']} atoms, {r['edges']} edges: median {r['median_s']:.3f} s "
                      f"(cpu {r['median_cpu_s']:.3f} s), peak +{r['peak_mb']:.0f} MB (abs {r['peak_abs_mb']:.0f} MB)",
                      flush=True)
            else:
                print(f"   {impl}: {r['status']}: {r.get('error', '')[:500]}", flush=True)
                stopped[impl] = r["status"]

    # edges of sizes where only one implementation ran are known from that run
    edges_by_k = {r["repeat"]: r["edges"] for r in results if r.get("status") == "ok"}
    for r in results:
        r.setdefault("edges", edges_by_k.get(r["repeat"]))

    rows = []
    for k in repeats:
        ref = next((r for r in results if r["impl"] == "ref" and r["repeat"] == k), None)
        ours = next((r for r in results if r["impl"] == "ours" and r["repeat"] == k), None)
        graph = next((r for r in results if r["impl"] == "graph" and r["repeat"] == k), None)
        graph_ours = next((r for r in results if r["impl"] == "graph_ours" and r["repeat"] == k), None)
        any_r = next((r for r in (ref, ours, graph) if r and r.get("status") == "ok"), {})
        rows.append([k, any_r.get("atoms", base_atoms * k * k), any_r.get("edges", "-"),
                     C.fmt_time(ref), C.fmt_time(ours), C.ratio(ref, ours, "median_s"),
                     C.fmt_time(graph), C.fmt_mb(graph), C.fmt_time(graph_ours), C.fmt_mb(graph_ours),
                     C.fmt_cpu(ref), C.fmt_cpu(ours),
                     C.fmt_mb(ref), C.fmt_mb(ours), C.ratio(ours, ref, "peak_mb"),
                     C.fmt_mb(ref, "peak_abs_mb"), C.fmt_mb(ours, "peak_abs_mb"),
                     C.fmt_contention(ref), C.fmt_contention(ours)])
    print()
    print(f"Machine: {machine['cpu_model']}; torch threads {machine.get('torch_threads')}; torch {machine.get('torch')}; "
          f"device {args.device}. Config {label} (inference, energy + direct forces, no_grad), "
          f"median of {args.reps} after {args.warmup} warm-up.")
    print("graph s / graph MB: fairchem's radius_graph_pbc alone (time, peak above baseline), built inside every "
          "forward of the reference; our graph s / MB: ours (model.neighbors, the same edges), inside ours.")
    print(C.markdown_table(["k", "atoms", "edges", "ref s", "ours s", "speed-up", "graph s", "graph MB", "our graph s",
                            "our graph MB", "ref cpu s", "ours cpu s",
                            "ref peak MB", "ours peak MB", "mem ratio (ours/ref)", "ref abs MB", "ours abs MB",
                            "ref others", "ours others"], rows))

    fits = {}
    for impl in impls:
        pts = [r for r in results if r["impl"] == impl and r.get("status") == "ok"]
        slope_t, _ = fit_slope([(r["edges"], r["median_s"]) for r in pts])
        slope_m, _ = fit_slope([(r["edges"], r["peak_mb"]) for r in pts])
        fits[impl] = {"time_vs_edges_slope": slope_t, "memory_vs_edges_slope": slope_m, "points": len(pts)}
        if slope_t is not None:
            name = {"ours": "ours", "ref": "reference", "graph": "fairchem's radius graph alone",
                    "graph_ours": "our radius graph alone"}[impl]
            print(f"fitted slope d log(time) / d log(edges), {name}: {slope_t:.3f} "
                  f"(memory: {slope_m:.3f}; {len(pts)} points)")
    graph_of = {"ref": "graph", "ours": "graph_ours"}
    for impl in [i for i in impls if i in graph_of]:
        graph_by_k = {r["repeat"]: r for r in results if r["impl"] == graph_of[impl] and r.get("status") == "ok"}
        pts = [(r["edges"], r["median_s"] - graph_by_k[r["repeat"]]["median_s"]) for r in results
               if r["impl"] == impl and r.get("status") == "ok" and r["repeat"] in graph_by_k]
        slope, _ = fit_slope(pts)
        if slope is not None:
            fits[impl]["time_minus_graph_vs_edges_slope"] = slope
            name = "ours" if impl == "ours" else "reference"
            print(f"fitted slope of (time - radius graph time) vs edges, {name}: {slope:.3f}")
    big = [r for r in results if r["impl"] == "ours" and r.get("status") == "ok" and r["edges"] >= 2000]
    if len(big) >= 2:
        s, _ = fit_slope([(r["edges"], r["median_s"]) for r in big])
        fits["ours"]["time_vs_edges_slope_ge_2000_edges"] = s
        print(f"fitted slope for ours over points with >= 2000 edges: {s:.3f}")
    print(f"total wall time {time.time() - t_start:.0f} s")

    payload = {"machine": machine, "args": {k: v for k, v in vars(args).items() if k != "worker"},
               "config": cfg, "base_atoms": base_atoms, "results": results, "fits": fits}
    with open(args.out, "w") as fh:
        json.dump(payload, fh, indent=1)
    print(f"wrote {args.out}")
    png = args.plot or os.path.splitext(args.out)[0] + ".png"
    try:
        plot(results, png, f"EquiformerV2 {label} inference, {args.device}, "
                           f"{machine.get('gpu') or machine['cpu_model']} ({machine.get('torch_threads')} threads)")
        print(f"wrote {png}")
    except Exception as exc:  # pragma: no cover - plotting must not lose the measurements
        print(f"plot failed: {type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
