"""``eqv2-plugin check-submission``: verify an EvalAI file against the test LMDBs before upload.

Checks, per split of the benchmark: every array present with the shape and dtype of
``formats``; every id of the test split present exactly once and no other id; per id, the
number of force rows (S2EF: free atoms) or position rows (IS2RS: all atoms) between its chunk
indices equals the count in the test data; no NaN or infinite value.  Every problem names the
split and, where there is one, the id.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from eqv2_plugin.errors import UserInputError
from eqv2_plugin.leaderboard.formats import (
    BENCHMARK_SPLITS,
    TASK_FIELDS,
    float_dtypes,
    infer_benchmark,
    infer_task,
    key,
    read_npz,
    split_fields,
)

MAX_LISTED = 20  # problems listed in the error message


def load_submission(path: Path) -> dict[str, np.ndarray]:
    """All arrays of a submission ``.npz`` (no pickled objects, as EvalAI loads it)."""
    return read_npz(Path(path).expanduser())


def describe(arrays: Mapping[str, np.ndarray], task: str | None = None, benchmark: str | None = None) -> tuple[str, str]:
    """``(task, benchmark)`` of a submission: given, or inferred from its keys."""
    fields = split_fields(arrays)
    splits = [s for s in fields if s]
    task = task or infer_task(set().union(*fields.values()) if fields else set(), "submission")
    benchmark = benchmark or infer_benchmark(splits)
    return task, benchmark


def _owner(row: int, chunk_idx: np.ndarray) -> int:
    """Index of the system a concatenated row belongs to."""
    return int(np.searchsorted(chunk_idx, row, side="right"))


def structure_problems(
    arrays: Mapping[str, np.ndarray], task: str, benchmark: str, splits: Sequence[str] | None = None
) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """Problems that need no test data, and the arrays per split that passed the shape checks.

    ``splits`` defaults to the benchmark's; ``benchmark`` also sets the accepted dtypes.
    """
    problems: list[str] = []
    per_split: dict[str, dict[str, np.ndarray]] = {}
    fields = split_fields(arrays)
    splits = tuple(splits or BENCHMARK_SPLITS[benchmark])
    for split, names in fields.items():
        if split not in splits:
            listed = ", ".join(sorted(key(split, n) for n in names) if split else sorted(names))
            problems.append(
                f"unexpected array(s) {listed}: this {task.upper()} file has the splits {', '.join(splits)} "
                f"and the fields {', '.join(TASK_FIELDS[task])}"
            )
    for split in splits:
        names = fields.get(split, set())
        if not names:
            problems.append(f"split {split!r}: missing (no {split}_* arrays)")
            continue
        lacking = [f for f in TASK_FIELDS[task] if f not in names]
        unexpected = sorted(names - set(TASK_FIELDS[task]))
        if lacking:
            problems.append(f"split {split!r}: missing {', '.join(key(split, f) for f in lacking)}")
        if unexpected:
            problems.append(f"split {split!r}: unexpected {', '.join(key(split, f) for f in unexpected)} for {task.upper()}")
        if lacking:
            continue
        a = {f: arrays[key(split, f)] for f in TASK_FIELDS[task]}
        bad = _split_structure(split, a, task, benchmark)
        problems += bad
        if not bad:
            per_split[split] = a
    return problems, per_split


def _split_structure(split: str, a: dict[str, np.ndarray], task: str, benchmark: str) -> list[str]:
    out: list[str] = []
    ids = a["ids"]
    if ids.ndim != 1 or ids.dtype.kind not in "US":
        return [f"split {split!r}: {key(split, 'ids')} must be a 1-D string array, got {ids.dtype} {ids.shape}"]
    n = len(ids)
    names, counts = np.unique(ids.astype(str), return_counts=True)
    for name in names[counts > 1][:3]:
        out.append(f"split {split!r}, id {name!r}: appears {int(counts[names == name][0])} times")
    value_field = "forces" if task == "s2ef" else "pos" if task == "is2rs" else None
    if "energy" in a:
        e = a["energy"]
        allowed = ((n,), (n, 1))
        if e.shape not in allowed:
            out.append(f"split {split!r}: {key(split, 'energy')} has shape {e.shape}, expected ({n}, 1) or ({n},)")
        elif e.dtype.name not in float_dtypes(task, benchmark, "energy"):
            out.append(
                f"split {split!r}: {key(split, 'energy')} is {e.dtype}; {benchmark.upper()} {task.upper()} needs "
                f"{' or '.join(float_dtypes(task, benchmark, 'energy'))}"
            )
        else:
            bad = np.flatnonzero(~np.isfinite(e.reshape(n)))
            if bad.size:
                out.append(f"split {split!r}, id {str(ids[bad[0]])!r}: energy is {e.reshape(n)[bad[0]]} "
                           f"({bad.size} non-finite energ{'ies' if bad.size > 1 else 'y'} in this split)")
    if value_field:
        v, c = a[value_field], a["chunk_idx"]
        if v.ndim != 2 or v.shape[1] != 3:
            out.append(f"split {split!r}: {key(split, value_field)} has shape {v.shape}, expected (rows, 3)")
            return out
        if v.dtype.name not in float_dtypes(task, benchmark, value_field):
            out.append(
                f"split {split!r}: {key(split, value_field)} is {v.dtype}; {benchmark.upper()} {task.upper()} needs "
                f"{' or '.join(float_dtypes(task, benchmark, value_field))}"
            )
        if c.shape != (max(n - 1, 0),) or (c.size and c.dtype.kind not in "iu"):
            out.append(
                f"split {split!r}: {key(split, 'chunk_idx')} must hold {max(n - 1, 0)} integers (one per id but the "
                f"first), got {c.dtype} {c.shape}"
            )
            return out
        lengths = np.diff(np.concatenate([[0], c, [len(v)]])) if n else np.zeros(0)
        if (lengths < 0).any():
            k = int(np.flatnonzero(lengths < 0)[0])
            out.append(
                f"split {split!r}, id {str(ids[k])!r}: its chunk has {int(lengths[k])} rows; "
                f"{key(split, 'chunk_idx')} must be non-decreasing within 0..{len(v)}"
            )
            return out
        bad_rows = np.flatnonzero(~np.isfinite(v).all(axis=1))
        if bad_rows.size:
            owner = _owner(int(bad_rows[0]), c)
            out.append(
                f"split {split!r}, id {str(ids[owner])!r}: {value_field} has non-finite values "
                f"({bad_rows.size} such row{'s' if bad_rows.size > 1 else ''} in this split)"
            )
    return out


def check_arrays(
    arrays: Mapping[str, np.ndarray],
    test_data: Mapping[str, Any],
    task: str,
    benchmark: str,
    splits: Sequence[str] | None = None,
) -> tuple[list[str], dict[str, dict[str, int]]]:
    """All problems of a submission against ``test_data`` (split -> ``testdata.SplitEntries``)."""
    problems, per_split = structure_problems(arrays, task, benchmark, splits)
    summary: dict[str, dict[str, int]] = {}
    for split, a in per_split.items():
        entries = test_data.get(split)
        if entries is None:
            continue
        ids = a["ids"].astype(str)
        expected = {i: k for k, i in enumerate(entries.ids)}
        got = set(ids.tolist())
        missing = [i for i in entries.ids if i not in got]
        extra = [i for i in ids.tolist() if i not in expected]
        if missing:
            problems.append(
                f"split {split!r}, id {missing[0]!r}: in the test data but not in the submission "
                f"({len(missing)} of {len(entries.ids)} ids missing" + (f", e.g. {', '.join(missing[1:4])})" if len(missing) > 1 else ")")
            )
        if extra:
            problems.append(
                f"split {split!r}, id {extra[0]!r}: not in the test data ({entries.path})"
                + (f"; {len(extra)} such ids" if len(extra) > 1 else "")
            )
        rows = 0
        if task in ("s2ef", "is2rs"):
            field = "forces" if task == "s2ef" else "pos"
            what = "free atoms" if task == "s2ef" else "atoms"
            counts = entries.n_free if task == "s2ef" else entries.natoms
            values = a[field]
            rows = len(values)
            bounds = np.concatenate([[0], a["chunk_idx"], [rows]])
            for k, i in enumerate(ids.tolist()):
                if i not in expected:
                    continue
                have, want = int(bounds[k + 1] - bounds[k]), int(counts[expected[i]])
                if have != want:
                    problems.append(
                        f"split {split!r}, id {i!r}: {have} {field} rows between its chunk indices "
                        f"({int(bounds[k])}:{int(bounds[k + 1])}), the test data has {want} {what}"
                    )
                    break  # later chunks are shifted too
            total = int(counts.sum())
            if rows != total and not missing and not extra:
                problems.append(f"split {split!r}: {rows} {field} rows in all, the test data has {total} {what}")
        summary[split] = {"ids": len(ids), "rows": rows}
    return problems, summary


def check_submission(
    path: Path, test_data: Mapping[str, Path], task: str | None = None, benchmark: str | None = None
) -> dict[str, Any]:
    """Check the submission at ``path`` against the test LMDBs; raise ``UserInputError`` listing the problems.

    ``test_data`` maps split names to LMDB paths (see ``testdata.resolve_splits``).  Returns
    ``{"task", "benchmark", "splits": {split: {"ids", "rows"}}}`` when the file passes.
    """
    from eqv2_plugin.leaderboard.testdata import read_split

    arrays = load_submission(path)
    task, benchmark = describe(arrays, task, benchmark)
    missing = [s for s in BENCHMARK_SPLITS[benchmark] if s not in test_data]
    if missing:
        raise UserInputError(f"--test-data: no test data for split(s) {', '.join(missing)}")
    entries = {s: read_split(Path(test_data[s]), task, s, "--test-data") for s in BENCHMARK_SPLITS[benchmark]}
    problems, summary = check_arrays(arrays, entries, task, benchmark)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise UserInputError(
            f"{path} is not a valid {benchmark.upper()} {task.upper()} submission "
            f"({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n{listed}{more}"
        )
    return {"task": task, "benchmark": benchmark, "splits": summary}
