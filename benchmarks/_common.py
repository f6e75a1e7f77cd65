"""Shared pieces of the benchmarks: released configs, OC20-like batches, model
construction with shared weights, and the measurement worker.

Every measurement (one implementation, one configuration, one mode, one batch)
runs in a fresh Python process (``run_measurement`` re-invokes the calling
script with a hidden ``--worker SPEC.json OUT.json`` pair), so that the peak
resident set size (``ru_maxrss``) of that process belongs to that measurement
alone.  The worker writes a JSON result; the parent turns a worker killed by
the kernel (SIGKILL, the OOM killer) or an allocation failure into
``status: "OOM"`` instead of crashing.

Nothing here imports torch at module import time: the parent process stays
small and the worker can set its memory limit before torch is loaded.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))

# --------------------------------------------------------------------------------------
# Released EquiformerV2 configs (OC20 S2EF; /work/shared/reference/equiformer_v2.md section 2)
# --------------------------------------------------------------------------------------
COMMON = dict(
    use_pbc=True,
    regress_forces=True,
    otf_graph=True,
    max_neighbors=20,
    max_radius=12.0,
    max_num_elements=90,
    sphere_channels=128,
    attn_hidden_channels=64,
    num_heads=8,
    attn_alpha_channels=64,
    attn_value_channels=16,
    ffn_hidden_channels=128,
    norm_type="layer_norm_sh",
    grid_resolution=18,
    edge_channels=128,
    use_atom_edge_embedding=True,
    share_atom_edge_embedding=False,
    use_m_share_rad=False,
    distance_function="gaussian",
    use_s2_act_attn=False,
    use_attn_renorm=True,
    use_gate_act=False,
    use_grid_mlp=True,
    use_sep_s2_act=True,
    alpha_drop=0.1,
    drop_path_rate=0.05,
    proj_drop=0.0,
    weight_init="uniform",
)

CONFIGS = {
    "31M": dict(COMMON, num_layers=8, lmax_list=[4], mmax_list=[2], drop_path_rate=0.1),  # All+MD 31M
    "83M": dict(COMMON, num_layers=12, lmax_list=[6], mmax_list=[2], drop_path_rate=0.05),  # S2EF-2M 83M
    "153M": dict(COMMON, num_layers=20, lmax_list=[6], mmax_list=[3], drop_path_rate=0.1),  # All+MD 153M
}

METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
ADSORBATES = ("O", "H", "OH", "CO", "N", "NH", "NH2", "CH", "CH2", "CH3")
SPLIT_CODE = 99  # the random stream the tests use for their OC20-like systems (tests/_systems.py)


# --------------------------------------------------------------------------------------
# Systems
# --------------------------------------------------------------------------------------
def oc20_like_atoms(count: int, seed: int = 0, rattle: float = 0.05):
    """``count`` slab+adsorbate systems (45-68 atoms each, periodic), rattled so that
    no neighbour distances tie (same recipe as ``tests/_systems.py``)."""
    from eqv2_plugin.data.oc20_like import build_system, draw_spec, system_rng

    systems = []
    for i in range(count):
        rng = system_rng(seed, SPLIT_CODE, i)
        atoms = build_system(draw_spec(rng, i, METALS, ADSORBATES), rng)
        atoms.set_positions(atoms.get_positions() + rng.normal(scale=rattle, size=(len(atoms), 3)),
                            apply_constraint=False)
        systems.append(atoms)
    return systems


def repeated_atoms(repeat: int, seed: int = 0, rattle: float = 0.05):
    """One OC20-like system repeated ``repeat x repeat`` laterally (cell stays periodic),
    re-rattled so that the copies are not exact images of each other."""
    import numpy as np

    base = oc20_like_atoms(1, seed=seed, rattle=0.0)[0]
    big = base.repeat((int(repeat), int(repeat), 1))
    rng = np.random.default_rng([int(seed), SPLIT_CODE, 7, int(repeat)])
    big.set_positions(big.get_positions() + rng.normal(scale=rattle, size=(len(big), 3)),
                      apply_constraint=False)
    big.pbc = True
    return [big]


def atoms_for(systems: dict):
    if systems["kind"] == "oc20":
        return oc20_like_atoms(int(systems["count"]), seed=int(systems.get("seed", 0)))
    if systems["kind"] == "repeat":
        return repeated_atoms(int(systems["repeat"]), seed=int(systems.get("seed", 0)))
    raise ValueError(f"unknown systems kind {systems['kind']!r}")


def to_batch(atoms_list, dtype=None):
    """fairchem ``Batch`` of the systems (``otf_graph``: the models build the radius graph)."""
    import torch

    from eqv2_plugin.integration.batch import atoms_to_batch

    return atoms_to_batch(atoms_list, dtype or torch.float32)


def count_edges(batch, cfg: dict) -> int:
    """Edges of the radius graph the models build (cutoff, neighbour cap, strict)."""
    import torch
    from fairchem.core.common.utils import radius_graph_pbc

    with torch.no_grad():
        edge_index, _, _ = radius_graph_pbc(
            batch, cfg["max_radius"], cfg["max_neighbors"], enforce_max_neighbors_strictly=True
        )
    return int(edge_index.shape[1])


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------
def accepted_kwargs(cls) -> tuple[set, bool]:
    """Explicit keyword names accepted by ``cls.__init__`` along its MRO (our public
    class forwards ``*args, **kwargs`` to the backbone), and whether the chain ends in
    a bare ``**kwargs`` (which would accept anything)."""
    import inspect

    names: set = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names, False  # chain stops here
    return names, True


def add_measurement_args(p, timeout_s: float) -> None:
    """The worker and contention options shared by the benchmark scripts."""
    import argparse

    p.add_argument("--mem-limit-gb", type=float, default=None,
                   help="CPU workers: memory cap in GB (resident memory a worker may reach, enforced with RLIMIT_AS; default 0.9 x MemAvailable; 0 = none)")
    p.add_argument("--timeout", type=float, default=timeout_s, help="seconds per worker")
    p.add_argument("--max-retries", type=int, default=None,
                   help="CPU: timed runs during which other processes used >15%% of the CPUs are redone "
                        "(after waiting for an idle machine) up to this many times per measurement "
                        "(default 2 x reps; 0 = keep every run)")
    p.add_argument("--wait-idle", type=float, default=None,
                   help="before each CPU measurement wait up to this many seconds for the machine to be "
                        "<25%% busy (default 300 on cpu, 0 on cuda)")
    p.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)


def build_models(cfg: dict, impl: str, seed: int, backend: str | None = None):
    """The reference (fairchem 1.10 monolithic EquiformerV2) with ``torch.manual_seed(seed)``
    weights, and for ``impl == "ours"`` our model loaded with the same state dict.
    Returns (model, info)."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import EquiformerV2 as Ref

    ref_names, ref_any = accepted_kwargs(Ref)
    ref_cfg = cfg if ref_any else {k: v for k, v in cfg.items() if k in ref_names}  # ours-only keys (--set)
    torch.manual_seed(seed)
    ref = Ref(**ref_cfg)
    info = {"params": sum(p.numel() for p in ref.parameters())}
    if impl == "ref":
        return ref, info
    import eqv2_plugin

    kwargs = dict(cfg, edge_frame="random", direct_forces=True)
    names, _ = accepted_kwargs(eqv2_plugin.EquiformerV2)
    info["backend"] = None
    if backend is not None:
        if "kernel_backend" in names:
            kwargs["kernel_backend"] = backend
            info["backend"] = backend
        else:
            info["backend"] = f"ignored ({backend!r}: model has no kernel_backend argument)"
    ours = eqv2_plugin.EquiformerV2(**kwargs)
    ours.load_state_dict(ref.state_dict())
    del ref
    return ours, info


# --------------------------------------------------------------------------------------
# Machine info, memory
# --------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_available_gb() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def mem_total_gb() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def code_version() -> dict:
    """The commit of the repository and a digest of uncommitted changes under src/ (the model
    code may change between measurements when others work in the same tree)."""
    import hashlib

    root = os.path.dirname(HERE)
    out = {}
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                       text=True, timeout=30).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", "src"], cwd=root, capture_output=True,
                              timeout=30).stdout
        untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--", "src"], cwd=root,
                                   capture_output=True, text=True, timeout=30).stdout.split()
        h = hashlib.sha1(diff)
        for name in sorted(untracked):
            try:
                with open(os.path.join(root, name), "rb") as fh:
                    h.update(name.encode() + b"\0" + fh.read())
            except OSError:
                pass
        out["src_dirty"] = bool(diff or untracked)
        out["src_diff_sha1"] = h.hexdigest()[:12] if out["src_dirty"] else None
    except Exception:  # pragma: no cover - not a git checkout
        pass
    return out


def machine_info(device: str = "cpu", threads: int | None = None) -> dict:
    info = {
        "code": code_version(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "mem_total_gb": round(mem_total_gb() or 0.0, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if threads:
            torch.set_num_threads(threads)
        info["torch_threads"] = torch.get_num_threads()
        if device == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except Exception:  # pragma: no cover
        pass
    try:
        from importlib.metadata import version

        info["fairchem_core"] = version("fairchem-core")
    except Exception:  # pragma: no cover
        pass
    return info


# --------------------------------------------------------------------------------------
# Worker
# --------------------------------------------------------------------------------------
def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    msg = str(exc)
    return name == "OutOfMemoryError" or "out of memory" in msg.lower() or "can't allocate memory" in msg \
        or "not enough memory" in msg.lower()


def _system_cpu_seconds() -> float | None:
    """CPU seconds used by the whole machine so far (all non-idle /proc/stat fields but guest)."""
    try:
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:9]]
    except OSError:
        return None
    busy = sum(vals) - vals[3] - vals[4]  # minus idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


class _GraphOnly:
    """Stand-in model for ``impl == "graph"`` (fairchem's on-the-fly radius graph, which the
    reference builds in every forward) and ``impl == "graph_ours"`` (ours, same edges)."""

    def __init__(self, cfg, ours: bool = False):
        self.cfg, self.ours = cfg, ours

    def to(self, device):
        return self

    def eval(self):
        return self

    def __call__(self, batch):
        if self.ours:
            from eqv2_plugin.model.neighbors import radius_graph_pbc as ours

            edge_index, _, _ = ours(batch.pos, batch.cell, batch.natoms, self.cfg["max_radius"],
                                    self.cfg["max_neighbors"], strict=True)
            return {"edge_index": edge_index}
        from fairchem.core.common.utils import radius_graph_pbc

        edge_index, _, _ = radius_graph_pbc(batch, self.cfg["max_radius"], self.cfg["max_neighbors"],
                                            enforce_max_neighbors_strictly=True)
        return {"edge_index": edge_index}


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> float | None:
    """Reset the kernel's peak-RSS mark (``VmHWM``; ``echo 5 > /proc/self/clear_refs``, Linux
    >= 4.0) and return the current RSS in MB, or None where that is not possible. The reset lets
    a measurement see its own peak even when model construction (the reference model the
    weights came from, since deleted) peaked higher."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _proc_status_kb("VmRSS") / 1024.0
    except OSError:
        return None


def _cap_memory(limit_gb: float) -> float | None:
    """Cap this process's address space so that its resident memory can grow to about
    ``limit_gb`` GB: RLIMIT_AS = current virtual size + (limit - current RSS). Set after the
    imports and model construction, whose virtual size (CUDA libraries, thread arenas)
    is far above their RSS. A measurement that needs more fails with an allocation error
    inside its own process (reported as OOM), instead of waking the kernel's OOM killer."""
    import resource

    try:
        vm, rss = _proc_status_kb("VmSize") * 1024, _proc_status_kb("VmRSS") * 1024
    except (OSError, KeyError):
        return None
    lim = int(vm + max(limit_gb * 1024**3 - rss, 0.5 * 1024**3))
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    return round(lim / 1024**3, 2)


def make_step(model, batch, mode: str, amp: bool, seed: int):
    """One measured call: ``inference`` (eval, no_grad, energy + direct forces) or ``train``
    (forward, loss = mean|E - E_t| + mean ||F - F_t||_2 against fixed random targets from
    ``seed``, backward, AdamW step; under ``amp`` fp16 autocast on CUDA with a GradScaler).
    Sets the model's train/eval mode."""
    import torch

    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if amp else \
        (lambda: torch.autocast("cpu", enabled=False))
    if mode == "inference":
        model.eval()

        def inference_once():
            with torch.no_grad(), autocast():
                out = model(batch)
            return out

        return inference_once

    device = batch.pos.device
    g = torch.Generator().manual_seed(seed + 1)
    e_target = torch.randn(len(batch.natoms), generator=g).to(device)
    f_target = torch.randn(int(batch.natoms.sum()), 3, generator=g).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-3)
    scaler = torch.amp.GradScaler("cuda") if amp else None  # torch.cuda.amp is deprecated in 2.4+

    def train_once():
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = model(batch)
        energy = out["energy"].reshape(-1).float()
        forces = out["forces"].float()
        loss = (energy - e_target).abs().mean() + (forces - f_target).norm(dim=-1).mean()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return {"loss": loss.detach()}

    return train_once


def timed_steps(step, n: int, device) -> dict:
    """Run ``step`` ``n`` times, each timed on its own (CUDA synchronized before and after).
    Returns ``times`` (s), Python's garbage collections during them (``gc_collections``,
    ``gc_seconds``) and, on CUDA, the caching allocator's counter increments (``allocator``):
    the usual suspects when a GPU step's time is bimodal."""
    import gc

    import torch

    cuda = device.type == "cuda"
    collected = {"s": 0.0, "n": 0}
    started = []

    def on_gc(phase, _info):
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            collected["s"] += time.perf_counter() - started.pop()
            collected["n"] += 1

    before = torch.cuda.memory_stats(device) if cuda else {}
    gc.callbacks.append(on_gc)
    times = []
    try:
        for _ in range(n):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    finally:
        gc.callbacks.remove(on_gc)
    after = torch.cuda.memory_stats(device) if cuda else {}
    allocator = {k: after[k] - before.get(k, 0) for k in ("num_alloc_retries", "num_device_alloc", "num_device_free")
                 if k in after}
    return {"times": times, "gc_collections": collected["n"], "gc_seconds": collected["s"], "allocator": allocator}


def _measure(spec: dict) -> dict:
    import gc
    import statistics

    import torch

    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(spec["seed"])
    cfg = dict(spec["cfg"])

    code = code_version()
    atoms = atoms_for(spec["systems"])
    batch = to_batch(atoms)
    n_atoms = int(batch.natoms.sum())
    if spec["impl"] in ("graph", "graph_ours"):  # a radius graph alone
        model, info = _GraphOnly(cfg, ours=spec["impl"] == "graph_ours"), {}
    else:
        model, info = build_models(cfg, spec["impl"], spec["seed"], spec.get("backend"))
    model = model.to(device)
    batch = batch.to(device)
    gc.collect()
    if spec.get("mem_limit_gb") and not cuda:
        info["address_space_cap_gb"] = _cap_memory(float(spec["mem_limit_gb"]))

    mode = spec["mode"]
    step = make_step(model, batch, mode, bool(spec.get("amp")) and cuda, spec["seed"])

    def sync():
        if cuda:
            torch.cuda.synchronize()


    # baseline: after model construction, batch building (and the graph count)
    sync()
    base_rss = maxrss_mb()
    rss_at_reset = None if cuda else _reset_peak_rss()
    base_alloc = 0.0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base_alloc = torch.cuda.memory_allocated(device) / 2**20

    import resource

    times, cpu_times, switches, others = [], [], [], []
    discarded = []  # timed runs thrown away because other processes competed for the CPUs
    sample = None
    warmup, reps = int(spec["warmup"]), int(spec["reps"])
    retries_left = int(spec.get("max_retries", 0))
    threshold = float(spec.get("contention_threshold", 0.15))
    run = 0
    while run < warmup + reps:
        torch.manual_seed(spec["seed"] + 100 + run)  # dropout / drop-path / random edge frames
        sync()
        s0 = _system_cpu_seconds()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        out = step()
        sync()
        dt = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        s1 = _system_cpu_seconds()
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        nsw = r1.ru_nivcsw - r0.ru_nivcsw
        # CPU used by all other processes during the run, as a fraction of the machine
        other = max(0.0, (s1 - s0) - cpu) / (dt * (os.cpu_count() or 1)) if s0 is not None else 0.0
        if sample is None and not spec["impl"].startswith("graph"):
            if mode == "inference":
                sample = {
                    "energy": [float(v) for v in out["energy"].detach().reshape(-1).cpu()],
                    "forces_rms": float(out["forces"].detach().float().pow(2).mean().sqrt().cpu()),
                    "forces_first": [float(v) for v in out["forces"].detach().float()[0].cpu()],
                    # all of them, for comparisons between runs (fp32 against AMP: gpu/amp_accuracy.py)
                    "forces": out["forces"].detach().float().cpu().tolist(),
                }
            else:
                sample = {"loss": float(out["loss"].cpu())}
        del out
        contended = not cuda and other > threshold
        tag = "warm-up" if run < warmup else "timed"
        print(f"    [{spec['impl']} {spec['label']} {mode}] run {run + 1} ({tag}): {dt:.3f} s "
              f"(cpu {cpu:.3f} s, involuntary switches {nsw}, other processes {100 * other:.0f}% of the CPUs"
              + (", contended: repeated)" if contended and run >= warmup and retries_left > 0 else ")"),
              file=sys.stderr, flush=True)
        if run >= warmup:
            if contended and retries_left > 0:
                retries_left -= 1
                discarded.append({"time_s": dt, "cpu_s": cpu, "other_cpu_frac": other})
                wait_for_idle(float(spec.get("wait_idle", 0.0)))
                continue
            times.append(dt)
            cpu_times.append(cpu)
            switches.append(nsw)
            others.append(other)
        run += 1

    peak_rss = maxrss_mb()
    peak_since_reset = _proc_status_kb("VmHWM") / 1024.0 if rss_at_reset is not None else None
    # counted only now: fairchem's radius_graph_pbc is itself memory hungry on large cells
    # (all pairs x periodic images), and counting before the baseline would hide the models'
    # own graph construction inside the baseline
    n_edges = count_edges(batch, cfg)
    result = {
        "status": "ok",
        "times_s": times,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "cpu_times_s": cpu_times,
        "median_cpu_s": statistics.median(cpu_times),
        "involuntary_switches": switches,
        "other_cpu_frac": others,
        "contended_runs": sum(o > threshold for o in others) if not cuda else 0,
        "discarded_contended_runs": discarded,
        "loadavg_end": list(os.getloadavg()),
        "code": code,
        "atoms": n_atoms,
        "edges": n_edges,
        "systems_in_batch": int(len(batch.natoms)),
        "threads": torch.get_num_threads(),
        "sample": sample,
        "baseline_rss_mb": base_rss,
        "peak_rss_mb": peak_rss,
        **info,
    }
    if cuda:
        peak_alloc = torch.cuda.max_memory_allocated(device) / 2**20
        result.update(
            peak_mb=peak_alloc - base_alloc, peak_abs_mb=peak_alloc, baseline_alloc_mb=base_alloc,
            peak_reserved_mb=torch.cuda.max_memory_reserved(device) / 2**20,
        )
    elif rss_at_reset is not None:
        result.update(peak_mb=peak_since_reset - rss_at_reset, peak_abs_mb=peak_rss,
                      peak_method="VmHWM after clear_refs minus VmRSS at the reset")
    else:
        result.update(peak_mb=peak_rss - base_rss, peak_abs_mb=peak_rss,
                      peak_method="ru_maxrss minus ru_maxrss after construction")
    return result


def worker_main(spec_path: str, out_path: str) -> int:
    """Entry of a worker process: run one measurement, write its JSON result."""
    with open(spec_path) as fh:
        spec = json.load(fh)
    try:
        result = _measure(spec)
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        status = "OOM" if _is_oom(exc) else "error"
        result = {"status": status, "error": f"{type(exc).__name__}: {str(exc)[:2000]}",
                  "traceback": traceback.format_exc()[-4000:]}
        try:
            result["peak_rss_mb"] = maxrss_mb()
        except Exception:
            pass
    with open(out_path, "w") as fh:
        json.dump(result, fh)
    return 0


def default_mem_limit_gb() -> float | None:
    """Memory cap for CPU workers: 90% of the memory available now (see ``_cap_memory``), so
    that a runaway measurement fails inside its own process instead of waking the OOM killer
    (which could pick another process on a shared machine)."""
    avail = mem_available_gb()
    return None if avail is None else round(0.9 * avail, 1)


def cpu_busy_fraction(seconds: float = 2.0) -> float:
    """Fraction of all CPUs busy (user+system+steal) over ``seconds`` (from /proc/stat)."""
    def read():
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
        idle = vals[3] + vals[4]
        return sum(vals[:8]), idle
    try:
        t0, i0 = read()
        time.sleep(seconds)
        t1, i1 = read()
    except OSError:
        return 0.0
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def wait_for_idle(max_wait: float, threshold: float = 0.25) -> dict:
    """Wait (at most ``max_wait`` s) until the machine is less than ``threshold`` busy:
    the benchmarks share a 2-core machine with other work (test runs), which would
    slow whichever measurement it overlaps."""
    t0 = time.time()
    busy = cpu_busy_fraction(1.0)
    while busy > threshold and time.time() - t0 < max_wait:
        busy = cpu_busy_fraction(2.0)
    return {"busy_before": round(busy, 3), "waited_s": round(time.time() - t0, 1)}


def run_measurement(script: str, spec: dict, timeout: float | None = None, wait_idle: float = 0.0) -> dict:
    """Run one measurement in a fresh process (``python SCRIPT --worker SPEC OUT``)."""
    idle = wait_for_idle(wait_idle) if wait_idle > 0 else {}
    if idle.get("waited_s", 0) > 1:
        print(f"   (waited {idle['waited_s']} s for an idle machine; busy fraction now {idle['busy_before']})",
              flush=True)
    with tempfile.TemporaryDirectory(prefix="eqv2bench_") as tmp:
        spec_path = os.path.join(tmp, "spec.json")
        out_path = os.path.join(tmp, "out.json")
        with open(spec_path, "w") as fh:
            json.dump(spec, fh)
        env = dict(os.environ)
        env.setdefault("PYTHONWARNINGS", "ignore")
        t0 = time.time()
        try:
            proc = subprocess.run([sys.executable, script, "--worker", spec_path, out_path],
                                  env=env, timeout=timeout, stdout=subprocess.PIPE, stderr=None, text=True)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            return {"status": "TIMEOUT", "error": f"worker exceeded {timeout} s"}
        wall = time.time() - t0
        if os.path.exists(out_path):
            with open(out_path) as fh:
                result = json.load(fh)
        elif rc in (-signal.SIGKILL, 128 + signal.SIGKILL):
            result = {"status": "OOM", "error": "worker killed by SIGKILL (out-of-memory killer?)"}
        else:
            result = {"status": "error", "error": f"worker exited with code {rc} without a result",
                      "stdout": (proc.stdout or "")[-2000:]}
        result["returncode"] = rc
        result.update(idle)
        result["worker_wall_s"] = wall
        return result


def fmt_time(r: dict | None) -> str:
    if r is None:
        return "-"
    if r.get("status") != "ok":
        return r.get("status", "?")
    return f"{r['median_s']:.3f}"


def fmt_cpu(r: dict | None) -> str:
    if r is None:
        return "-"
    if r.get("status") != "ok":
        return r.get("status", "?")
    return f"{r['median_cpu_s']:.3f}"


def fmt_switches(r: dict | None) -> str:
    if r is None or r.get("status") != "ok":
        return "-"
    sw = sorted(r["involuntary_switches"])
    return str(sw[len(sw) // 2])


def fmt_contention(r: dict | None) -> str:
    """Median share of the CPUs other processes used during the kept timed runs, and how
    many kept runs were still contended / how many contended runs were discarded and redone."""
    if r is None or r.get("status") != "ok" or "other_cpu_frac" not in r:
        return "-"
    o = sorted(r["other_cpu_frac"])
    return (f"{100 * o[len(o) // 2]:.0f}% ({r.get('contended_runs', 0)} kept, "
            f"{len(r.get('discarded_contended_runs', []))} redone)")


def fmt_mb(r: dict | None, key: str = "peak_mb") -> str:
    if r is None:
        return "-"
    if r.get("status") != "ok":
        return r.get("status", "?")
    return f"{r[key]:.0f}"


def ratio(num: dict | None, den: dict | None, key: str) -> str:
    if not num or not den or num.get("status") != "ok" or den.get("status") != "ok" or not den[key]:
        return "-"
    return f"{num[key] / den[key]:.2f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def machine_line(machine: dict) -> str:
    """One printed line describing the machine and the code measured."""
    code = machine["code"]
    return (f"machine: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs, "
            f"{machine['mem_total_gb']} GB RAM, torch {machine.get('torch')} "
            f"(threads {machine.get('torch_threads')}), fairchem-core {machine.get('fairchem_core')}"
            + (f", GPU {machine['gpu']}" if "gpu" in machine else "")
            + f"; code {code.get('commit')}"
            + (f" + uncommitted src changes {code.get('src_diff_sha1')}" if code.get("src_dirty") else ""))
