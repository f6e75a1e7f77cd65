"""`make demo`: the main job on the embedded default data.

Generates the OC20-like S2EF and IS2RE data sets (ASE + EMT) into
``demo_out/data`` and prints a summary of them.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eqv2_plugin.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from eqv2_plugin.data.oc20_like import generate_dataset, summarize

    data_dir = args.out / "data"
    start = time.perf_counter()
    print(f"[demo] generating OC20-like data (EMT labels) into {data_dir} ...", flush=True)
    generate_dataset(data_dir, seed=args.seed, overwrite=True)
    print(f"[demo] done in {time.perf_counter() - start:.1f} s\n")
    print(summarize(data_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
