#!/usr/bin/env python
"""Our EquiformerV2 against fairchem 1.10's (``equiformer_v2_deprecated.EquiformerV2``)
with the same weights on the same OC20-like batch.

For each config and mode, each implementation is measured in its own fresh process:

* ``inference``: ``model.eval()``, ``torch.no_grad()``, energy + direct forces (what
  fairchem's predict does; the reference turns autograd back on inside its forward);
* ``train``: ``model.train()``, forward, loss = mean|E - E_t| + mean ||F - F_t||_2 (fixed
  random targets), backward, AdamW step;

median wall time of ``--reps`` runs after ``--warmup`` runs, and peak memory: on CPU the
peak RSS of the worker process during the measured calls minus its RSS after model
construction and batch building (``peak_mb``, peak mark reset through ``/proc/self/clear_refs``;
the absolute peak is ``peak_abs_mb``); on CUDA
``max_memory_allocated`` minus the allocation before the first run.

Example::

    .venv/bin/python benchmarks/bench_model.py --config 31M --reps 3 --out benchmarks/results_31M.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

MODES = ("inference", "train")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", default=["31M", "83M"], choices=sorted(C.CONFIGS),
                   help="released configs to measure (default: 31M 83M)")
    p.add_argument("--mode", default="both", choices=["inference", "train", "both"])
    p.add_argument("--impl", default="both", choices=["ours", "ref", "both"])
    p.add_argument("--skip-reference", action="store_true", help="same as --impl ours")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--systems", type=int, default=2, help="OC20-like systems in the batch (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the systems and of the weights")
    p.add_argument("--reps", type=int, default=3, help="timed runs (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the workers")
    p.add_argument("--amp", action="store_true", help="CUDA only: fp16 autocast for both implementations")
    p.add_argument("--backend", nargs="+", default=None,
                   help="our model's kernel_backend, one or several (e.g. 'torch triton': each is measured "
                        "as its own column, with the triton/torch ratio); default: the model's default")
    p.add_argument("--layers", type=int, default=None, help="override num_layers (quick runs)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config keys for both implementations (YAML values), e.g. activation_checkpoint=true")
    C.add_measurement_args(p, timeout_s=3600.0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.skip_reference:
        args.impl = "ours"
    if args.amp and args.device != "cuda":
        p.error("--amp needs --device cuda")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return C.worker_main(*args.worker)

    ours_labels = ["ours"] if not args.backend else [f"ours:{b}" for b in args.backend]
    impls = (["ref"] if args.impl in ("both", "ref") else []) + (ours_labels if args.impl != "ref" else [])
    modes = list(MODES) if args.mode == "both" else [args.mode]
    wait_idle = args.wait_idle if args.wait_idle is not None else (300.0 if args.device == "cpu" else 0.0)
    max_retries = args.max_retries if args.max_retries is not None else 2 * args.reps
    mem_limit = args.mem_limit_gb if args.mem_limit_gb is not None else C.default_mem_limit_gb()
    machine = C.machine_info(args.device, args.threads)
    print(C.machine_line(machine), flush=True)
    print(f"batch: {args.systems} OC20-like systems (seed {args.seed}); device {args.device}; "
          f"reps {args.reps} after {args.warmup} warm-up; amp {args.amp}; "
          f"CPU worker memory cap {mem_limit or 'none'} GB", flush=True)

    results = []
    t_start = time.time()

    def write_out(rows: list[dict], complete: bool) -> None:
        # rewritten after every measurement, so a run stopped by an outer time limit keeps what it measured
        if not args.out:
            return
        payload = {"machine": machine, "args": {k: v for k, v in vars(args).items() if k != "worker"},
                   "complete": complete, "results": rows}
        with open(args.out, "w") as fh:
            json.dump(payload, fh, indent=1)

    for name in args.config:
        cfg = dict(C.CONFIGS[name])
        if args.layers:
            cfg["num_layers"] = args.layers
        for item in args.set:
            key, _, value = item.partition("=")
            cfg[key] = yaml.safe_load(value)
        label = name if not args.layers else f"{name}/{args.layers}L"
        for mode in modes:
            row = {"config": label, "mode": mode, "cfg": cfg}
            for impl in impls:
                backend = impl.split(":", 1)[1] if ":" in impl else None
                spec = dict(
                    impl=impl.split(":")[0], cfg=cfg, label=label, mode=mode, device=args.device, seed=args.seed,
                    systems={"kind": "oc20", "count": args.systems, "seed": args.seed},
                    reps=args.reps, warmup=args.warmup, threads=args.threads, amp=args.amp,
                    backend=backend, mem_limit_gb=mem_limit if args.device == "cpu" else None,
                    wait_idle=wait_idle, max_retries=max_retries,
                )
                print(f"== {label} {mode} {impl} ...", flush=True)
                r = C.run_measurement(os.path.abspath(__file__), spec, timeout=args.timeout,
                                      wait_idle=wait_idle)
                row[impl] = r
                write_out(results + [row], complete=False)
                if r.get("code") and r["code"] != machine["code"]:
                    print(f"   note: the model code changed since the start: {r['code']}", flush=True)
                if r["status"] == "ok":
                    print(f"   {impl}: median {r['median_s']:.3f} s, peak +{r['peak_mb']:.0f} MB "
                          f"(abs {r['peak_abs_mb']:.0f} MB), {r['atoms']} atoms, {r['edges']} edges, "
                          f"threads {r['threads']}", flush=True)
                else:
                    print(f"   {impl}: {r['status']}: {r.get('error', '')[:500]}", flush=True)
            ref, ours = row.get("ref"), row.get(ours_labels[0])
            if ref and ours and ref.get("status") == ours.get("status") == "ok" and mode == "inference":
                e_r, e_o = ref["sample"]["energy"], ours["sample"]["energy"]
                row["energy_max_abs_diff"] = max(abs(a - b) for a, b in zip(e_r, e_o))
                row["forces_rms_ref_ours"] = [ref["sample"]["forces_rms"], ours["sample"]["forces_rms"]]
            results.append(row)

    header = ["config", "mode", "atoms", "edges", "ref s"]
    for o in ours_labels:
        header += [f"{o} s", f"speed-up ref/{o}"]
    header += ["ref peak MB"]
    for o in ours_labels:
        header += [f"{o} peak MB", f"mem {o}/ref"]
    if "ours:torch" in ours_labels and "ours:triton" in ours_labels:
        header += ["triton speed-up over our torch path"]
    rows = []
    for row in results:
        ref = row.get("ref")
        any_ok = next((row[i] for i in impls if row.get(i) and row[i].get("status") == "ok"), {})
        cells = [row["config"], row["mode"], any_ok.get("atoms", "-"), any_ok.get("edges", "-"), C.fmt_time(ref)]
        for o in ours_labels:
            cells += [C.fmt_time(row.get(o)), C.ratio(ref, row.get(o), "median_s")]
        cells += [C.fmt_mb(ref)]
        for o in ours_labels:
            cells += [C.fmt_mb(row.get(o)), C.ratio(row.get(o), ref, "peak_mb")]
        if "ours:torch" in ours_labels and "ours:triton" in ours_labels:
            cells += [C.ratio(row.get("ours:torch"), row.get("ours:triton"), "median_s")]
        rows.append(cells)
    print()
    print(f"Machine: {machine['cpu_model']}; cores used (torch threads) {machine.get('torch_threads')} of "
          f"{machine['logical_cpus']} logical CPUs; {machine['mem_total_gb']} GB RAM; torch {machine.get('torch')}; "
          f"fairchem-core {machine.get('fairchem_core')}; device {args.device}"
          + (f" ({machine['gpu']})" if "gpu" in machine else ""))
    print(f"Code: commit {machine['code'].get('commit')}"
          + (f" + uncommitted src changes {machine['code'].get('src_diff_sha1')}" if machine['code'].get('src_dirty')
             else " (clean src)"))
    print(f"Batch: {args.systems} OC20-like systems, float32, reps {args.reps} (median) after {args.warmup} warm-up"
          + (", AMP fp16" if args.amp else ""))
    print("peak MB = extra memory the measured calls needed: "
          + ("CUDA max_memory_allocated minus the allocation before them" if args.device == "cuda"
             else "peak RSS during them minus the RSS after model + batch construction (see peak_method)")
          + "; abs MB = absolute peak")
    print(C.markdown_table(header, rows))
    if args.device == "cpu":
        print()
        print("Process CPU time (user+system) per call, median; 'others' = median share of the CPUs used by "
              "other processes during the kept timed runs (kept runs still contended, contended runs redone):")
        rows = []
        for row in results:
            ref, ours = row.get("ref"), row.get(ours_labels[0])
            rows.append([row["config"], row["mode"], C.fmt_cpu(ref), C.fmt_cpu(ours),
                         C.ratio(ref, ours, "median_cpu_s"), C.fmt_contention(ref), C.fmt_contention(ours)])
        print(C.markdown_table(["config", "mode", "ref cpu s", "ours cpu s", "cpu ratio (ref/ours)", "ref others",
                                "ours others"], rows))
    for row in results:
        if "energy_max_abs_diff" in row:
            print(f"sanity {row['config']}: max |E_ref - E_ours| = {row['energy_max_abs_diff']:.3e} eV, "
                  f"forces rms ref/ours = {row['forces_rms_ref_ours'][0]:.4e} / {row['forces_rms_ref_ours'][1]:.4e} "
                  "(random edge frames in both: small differences expected)")
    print(f"total wall time {time.time() - t_start:.0f} s")

    if args.out:
        write_out(results, complete=True)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
