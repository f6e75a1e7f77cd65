#!/usr/bin/env bash
# Download, here, the wheels the GPU benchmark needs on the GPU machines
# (Python 3.12, torch 2.11, triton 3.6, e3nn and torch_geometric installed;
# no network there). They go to .whl/ (git-ignored through .git/info/exclude)
# and travel with `device run --carry .whl`.
#
# What fairchem 1.10's EquiformerV2 import needs beyond that image (found by
# blocking imports one by one): ase, lmdb, pydantic (+ pydantic-core,
# annotated-types, typing-inspection). torch_scatter is replaced by the
# import-only placeholder in benchmarks/gpu/placeholder/ (its functions raise).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .git/info && touch .git/info/exclude
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl \
  fairchem-core==1.10.0 ase==3.25.0 lmdb==1.7.5 pydantic==2.14.4 pydantic-core==2.50.5 \
  annotated-types==0.8.0 typing-inspection==0.4.5
ls -la .whl
du -sh .whl
