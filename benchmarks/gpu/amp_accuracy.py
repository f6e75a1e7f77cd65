"""How far AMP moves each implementation's answer: compare the inference samples of two
``bench_model.py`` JSON files of the same command, one run in fp32 and one with ``--amp``.

Both runs draw the same weights, batch and random edge frames (the first run of each
measurement is seeded the same way), so per implementation the difference is AMP alone
(on CPU two fp32 runs give identical samples; on a GPU, atomic sums add fp32-level noise).

    python benchmarks/gpu/amp_accuracy.py FP32.json AMP.json
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def _inference_samples(path: str) -> dict[tuple[str, str], dict]:
    out = {}
    for row in json.load(open(path))["results"]:
        if row["mode"] != "inference":
            continue
        for impl, r in row.items():
            if isinstance(r, dict) and r.get("status") == "ok" and (r.get("sample") or {}).get("forces"):
                out[(row["config"], impl)] = r["sample"]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fp32_json")
    ap.add_argument("amp_json")
    args = ap.parse_args(argv)
    full, amp = _inference_samples(args.fp32_json), _inference_samples(args.amp_json)
    print("| config | implementation | max abs energy diff (eV) | max rel energy diff "
          "| forces rel error (L2 norm of the difference / L2 norm) | forces MAE (eV/A) |")
    print("|---|---|---|---|---|---|")
    for key in sorted(full.keys() & amp.keys()):
        e32, e16 = np.asarray(full[key]["energy"]), np.asarray(amp[key]["energy"])
        f32, f16 = np.asarray(full[key]["forces"]), np.asarray(amp[key]["forces"])
        if e32.shape != e16.shape or f32.shape != f16.shape:
            print(f"| {key[0]} | {key[1]} | different batches: not comparable | | | |")
            continue
        de = np.abs(e16 - e32)
        rel_e = de / np.maximum(np.abs(e32), 1e-12)
        rel_f = np.linalg.norm(f16 - f32) / max(np.linalg.norm(f32), 1e-12)
        print(f"| {key[0]} | {key[1]} | {de.max():.3e} | {rel_e.max():.3e} | {rel_f:.3e} | "
              f"{np.abs(f16 - f32).mean():.3e} |")
    missing = (full.keys() ^ amp.keys())
    if missing:
        print("only in one file:", ", ".join(f"{c} {i}" for c, i in sorted(missing)))


if __name__ == "__main__":
    main()
