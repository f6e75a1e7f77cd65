"""``eqv2-plugin evaluate``: leaderboard metrics of a submission on labelled data.

The numbers come from fairchem's own ``fairchem.core.modules.evaluator.Evaluator`` with its
default metrics per task (S2EF: energy MAE, force MAE / x / y / z, force cosine, force
magnitude error, EFwT; IS2RE: energy MAE, MSE, EwT; IS2RS: ADwT, position MAE / MSE), fed as
fairchem feeds it: forces and IS2RS positions of the free atoms only (``fixed == 0``), the
EFwT / ADwT atom counts the free-atom counts, the IS2RS distances minimum-image in the labelled
cell.  Predictions are matched to labels by id; the split average is the plain mean of the split
metrics, as on the leaderboard.

Input: a submission (``{split}_{field}`` arrays, as ``submission`` writes) with labels per split,
or one fairchem results file (``s2ef_predictions.npz`` / ``relaxed_positions.npz``, unprefixed
arrays) with the labels of the split it predicted (``--labels NAME=PATH``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from eqv2_plugin.errors import UserInputError
from eqv2_plugin.leaderboard.check import check_arrays, describe, load_submission
from eqv2_plugin.leaderboard.formats import BENCHMARK_SPLITS, infer_task, key, split_fields

#: leaderboard columns per task: (fairchem metric name, column title)
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "s2ef": (
        ("energy_mae", "energy MAE [eV]"),
        ("forces_mae", "force MAE [eV/A]"),
        ("forces_cosine_similarity", "force cos"),
        ("energy_forces_within_threshold", "EFwT"),
    ),
    "is2re": (("energy_mae", "energy MAE [eV]"), ("energy_within_threshold", "EwT")),
    "is2rs": (("positions_average_distance_within_threshold", "ADwT"),),
}


def _per_system(values: np.ndarray, chunk_idx: np.ndarray) -> list[np.ndarray]:
    return np.split(np.asarray(values, dtype=np.float64), np.asarray(chunk_idx, dtype=np.int64))


def split_metrics(task: str, arrays: Mapping[str, np.ndarray], entries: Any) -> dict[str, float]:
    """fairchem's metrics of one split; ``arrays`` unprefixed (ids, energy, ...), ``entries`` labelled."""
    import torch
    from fairchem.core.modules.evaluator import Evaluator

    ids = arrays["ids"].astype(str).tolist()
    row = {i: k for k, i in enumerate(ids)}
    order = [row[i] for i in entries.ids]  # submission row of every labelled entry, in label order
    t = lambda x: torch.as_tensor(np.asarray(x, dtype=np.float64))  # noqa: E731
    n_free = torch.as_tensor(entries.n_free, dtype=torch.long)
    if task == "s2ef":
        forces = _per_system(arrays["forces"], arrays["chunk_idx"])
        prediction = {
            "energy": t(np.asarray(arrays["energy"], dtype=np.float64).reshape(-1)[order]),
            "forces": t(np.concatenate([forces[k] for k in order])),
            "natoms": n_free,
        }
        target = {
            "energy": t(entries.labels["energy"]),
            "forces": t(np.concatenate([f[m] for f, m in zip(entries.labels["forces"], entries.free)])),
            "natoms": n_free,
        }
    elif task == "is2re":
        prediction = {"energy": t(np.asarray(arrays["energy"], dtype=np.float64).reshape(-1)[order])}
        target = {"energy": t(entries.labels["energy"])}
    else:
        pos = _per_system(arrays["pos"], arrays["chunk_idx"])
        cell = t(entries.labels["cell"])
        pbc = torch.tensor([True, True, True])
        prediction = {
            "positions": t(np.concatenate([pos[k][m] for k, m in zip(order, entries.free)])),
            "cell": cell, "pbc": pbc, "natoms": n_free,
        }
        target = {
            "positions": t(np.concatenate([p[m] for p, m in zip(entries.labels["pos_relaxed"], entries.free)])),
            "cell": cell, "pbc": pbc, "natoms": n_free,
        }
    metrics = Evaluator(task=task).eval(prediction, target)
    return {name: float(value["metric"]) for name, value in metrics.items()}


def evaluate(
    predictions: Path,
    labels: Mapping[str, Path] | None = None,
    label_specs: list[str] | None = None,
    task: str | None = None,
    benchmark: str | None = None,
) -> dict[str, Any]:
    """Metrics of ``predictions`` against labelled LMDBs, per split and averaged.

    Give ``labels`` (split -> path) or ``label_specs`` (``--labels`` items: a make-data
    folder, or ``SPLIT=PATH``).  Returns ``{"task", "benchmark", "predictions", "splits":
    {split: {metric: value, "systems": n}}, "average": {metric: value}}``.
    """
    from eqv2_plugin.leaderboard.testdata import read_split, resolve_splits

    arrays = load_submission(predictions)
    fields = split_fields(arrays)
    single = "ids" in fields.get("", set())  # one fairchem results file, not a submission
    if single:
        task = task or infer_task(fields[""], str(predictions))
        specs = label_specs or [f"{name}={path}" for name, path in (labels or {}).items()]
        resolved = labels if labels is not None else resolve_splits(specs, task, None, "--labels", labelled=True)
        if len(resolved) != 1:
            raise UserInputError(
                f"--labels: {predictions} holds one split's predictions; give the labels of that split only "
                f"(e.g. --labels val_id=data/s2ef/val_id), got {len(resolved)}"
            )
        split = next(iter(resolved))
        arrays = {key(split, name): value for name, value in arrays.items()}
        splits = (split,)
        benchmark = benchmark or "oc20"
    else:
        task, benchmark = describe(arrays, task, benchmark)
        splits = BENCHMARK_SPLITS[benchmark]
        resolved = labels if labels is not None else resolve_splits(
            label_specs or [], task, benchmark, "--labels", labelled=True, required=splits
        )
        missing = [s for s in splits if s not in resolved]
        if missing:
            raise UserInputError(f"--labels: no labels for split(s) {', '.join(missing)}")
    entries = {s: read_split(Path(resolved[s]), task, s, "--labels", labels=True) for s in splits}
    problems, _ = check_arrays(arrays, entries, task, benchmark, splits)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems[:20])
        raise UserInputError(f"{predictions} does not match the labelled data:\n{listed}")
    per_split: dict[str, dict[str, float]] = {}
    for split in splits:
        part = {f: arrays[key(split, f)] for f in ("ids", "energy", "forces", "pos", "chunk_idx") if key(split, f) in arrays}
        per_split[split] = {**split_metrics(task, part, entries[split]), "systems": len(entries[split].ids)}
    names = [n for n in per_split[splits[0]] if n != "systems"]
    average = {n: float(np.mean([per_split[s][n] for s in splits])) for n in names}
    return {
        "task": task,
        "benchmark": benchmark if not single else None,
        "predictions": str(predictions),
        "labels": {s: str(resolved[s]) for s in splits},
        "evaluator": f"fairchem.core.modules.evaluator.Evaluator(task={task!r})",
        "splits": per_split,
        "average": average,
    }


def format_table(result: Mapping[str, Any]) -> str:
    """The leaderboard columns of ``evaluate``'s result as a plain-text table."""
    columns = COLUMNS[result["task"]]
    rows = [("split", "systems", *(title for _, title in columns))]
    for split, metrics in result["splits"].items():
        rows.append((split, str(metrics["systems"]), *(_fmt(metrics.get(name)) for name, _ in columns)))
    if len(result["splits"]) > 1:
        total = sum(m["systems"] for m in result["splits"].values())
        rows.append(("average", str(total), *(_fmt(result["average"].get(name)) for name, _ in columns)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(result["splits"]) > 1:
        lines.insert(len(lines) - 1, lines[1])
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def write_json(result: Mapping[str, Any], out: Path) -> Path:
    """Write ``evaluate``'s result to ``out`` as indented JSON; returns the path."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise UserInputError(f"--out: {out} is a folder; give a .json file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out
