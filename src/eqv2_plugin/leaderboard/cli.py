"""``eqv2-plugin predict-splits | submission | check-submission | evaluate`` (argparse only).

The work is imported when a command runs, so building the top-level parser stays light.
"""
from __future__ import annotations

import argparse
import sys

_BENCHMARKS = ("oc20", "oc22")
_SPLIT_FLAGS = (("id", "--id"), ("ood_ads", "--ood-ads"), ("ood_cat", "--ood-cat"), ("ood_both", "--ood-both"),
                ("ood", "--ood"))

_FLOW = """\
the leaderboard flow (the embedded data: eqv2-plugin make-data --out data):
  eqv2-plugin predict-splits --config-yml CFG --checkpoint CKPT --test-data data --out pred --cpu
  eqv2-plugin predict-splits --mode run-relaxations --config-yml RELAX_CFG --checkpoint CKPT \\
      --test-data data --out pred --cpu
  eqv2-plugin submission --task s2ef --predictions pred --out s2ef_submission.npz --test-data data
  eqv2-plugin submission --task is2re --predictions pred --out is2re_submission.npz
  eqv2-plugin submission --task is2rs --predictions pred --out is2rs_submission.npz
  eqv2-plugin check-submission is2rs_submission.npz --test-data data
  eqv2-plugin evaluate s2ef_submission.npz --labels data     (labelled copies, offline)
"""


def _test_data_help(what: str) -> str:
    return (
        f"{what}: an `eqv2-plugin make-data` folder (its OC20-named test splits), or SPLIT=PATH "
        "once per split (a folder of .lmdb files or one .lmdb file), e.g. --test-data id=/data/s2ef/test/id"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the leaderboard subcommands to ``eqv2-plugin``."""
    fmt = argparse.RawDescriptionHelpFormatter

    p = subparsers.add_parser(
        "predict-splits",
        help="run fairchem --mode predict / run-relaxations on every leaderboard test split",
        description="Run fairchem's CLI once per test split with a trained checkpoint and collect the results\n"
        "as OUT/s2ef/<split>.npz, OUT/is2re/<split>/ (trajectories), OUT/is2rs/<split>.npz.",
        epilog=_FLOW + "\nArguments after `--` go to fairchem unchanged (e.g. -- --num-gpus 4 --amp).",
        formatter_class=fmt,
    )
    p.add_argument("--mode", choices=("predict", "run-relaxations"), default="predict",
                   help="predict: S2EF (or IS2RE-direct) predictions; run-relaxations: ML relaxations, giving "
                        "IS2RE energies (trajectories) and IS2RS positions (default: predict)")
    p.add_argument("--task", choices=("s2ef", "is2re"), default="s2ef",
                   help="with --mode predict: the model's task, picks the test splits and the output folder "
                        "(default: s2ef)")
    p.add_argument("--config-yml", required=True, metavar="CFG",
                   help="fairchem config of the model (for relaxations with a task.relax_opt block)")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="trained checkpoint (e.g. best_checkpoint.pt)")
    p.add_argument("--test-data", action="append", required=True, metavar="DATA", help=_test_data_help("test splits"))
    p.add_argument("--benchmark", choices=_BENCHMARKS, default=None,
                   help="split names: oc20 (id, ood_ads, ood_cat, ood_both) or oc22 (id, ood); default: oc22 when "
                        "the splits are id and ood, else oc20")
    p.add_argument("--splits", default="", metavar="S,...", help="only these splits (default: all given)")
    p.add_argument("--out", required=True, metavar="PRED", help="output folder")
    p.add_argument("--cpu", action="store_true", help="pass --cpu to fairchem")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs of these splits")
    p.add_argument("fairchem_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=run_predict_splits)

    p = subparsers.add_parser(
        "submission",
        help="assemble the EvalAI submission file (S2EF, IS2RE or IS2RS; OC20 or OC22)",
        description="Join the per-split predictions into the .npz EvalAI expects: arrays named\n"
        "{split}_{ids,energy,forces,chunk_idx} (S2EF), {split}_{ids,energy} (IS2RE) or\n"
        "{split}_{ids,pos,chunk_idx} (IS2RS). S2EF forces are those of the free atoms, as fairchem\n"
        "writes them; OC20 S2EF is stored as float16 (fairchem's default), OC22 as float32.",
        epilog=_FLOW,
        formatter_class=fmt,
    )
    p.add_argument("--task", required=True, choices=("s2ef", "is2re", "is2rs"))
    p.add_argument("--benchmark", choices=_BENCHMARKS, default=None,
                   help="oc20 (id, ood_ads, ood_cat, ood_both) or oc22 (id, ood); default: oc22 with --ood, else oc20")
    p.add_argument("--predictions", metavar="PRED", help="a predict-splits output folder (per-split paths below win)")
    for split, flag in _SPLIT_FLAGS:
        p.add_argument(flag, dest=f"split_{split}", metavar="PATH",
                       help=f"predictions of the {split} split: s2ef_predictions.npz (S2EF), a trajectory folder or "
                            "is2re_predictions.npz (IS2RE), relaxed_positions.npz (IS2RS)" if split == "id" else
                       f"predictions of the {split} split")
    p.add_argument("--dtype", choices=("float16", "float32"), default=None,
                   help="S2EF energies and forces (default: float16 for OC20, float32 for OC22, which requires it)")
    p.add_argument("--out", required=True, metavar="FILE", help="the submission file (.npz)")
    p.add_argument("--test-data", action="append", metavar="DATA",
                   help="also run check-submission against this test data; " + _test_data_help("test splits"))
    p.set_defaults(func=run_submission)

    p = subparsers.add_parser(
        "check-submission",
        help="verify a submission file against the test LMDBs before uploading it",
        description="Check every split: arrays present with the right shapes and dtypes, every test id present\n"
        "exactly once, per-id free-atom (S2EF) / atom (IS2RS) counts equal to the chunk indices, no NaN.\n"
        "Exit status 2 and a list of problems (split and id) when it fails.",
        formatter_class=fmt,
    )
    p.add_argument("file", metavar="FILE", help="submission .npz")
    p.add_argument("--test-data", action="append", required=True, metavar="DATA", help=_test_data_help("test splits"))
    p.add_argument("--task", choices=("s2ef", "is2re", "is2rs"), default=None, help="default: from the arrays")
    p.add_argument("--benchmark", choices=_BENCHMARKS, default=None, help="default: from the split names")
    p.set_defaults(func=run_check)

    p = subparsers.add_parser(
        "evaluate",
        help="leaderboard metrics (fairchem's Evaluator) of a submission on labelled data",
        description="Score a submission, or one fairchem results file (s2ef_predictions.npz,\n"
        "relaxed_positions.npz), against labelled LMDBs with fairchem's Evaluator: S2EF energy MAE,\n"
        "force MAE, force cosine, EFwT; IS2RE energy MAE, EwT; IS2RS ADwT. Prints a table and\n"
        "writes every metric as JSON.",
        formatter_class=fmt,
    )
    p.add_argument("predictions", metavar="FILE", help="submission .npz, or one split's fairchem results file")
    p.add_argument("--labels", action="append", required=True, metavar="DATA",
                   help="labelled data: a make-data folder (the labelled copies of its test splits), or SPLIT=PATH "
                        "once per split, e.g. --labels val_id=data/s2ef/val_id")
    p.add_argument("--task", choices=("s2ef", "is2re", "is2rs"), default=None, help="default: from the arrays")
    p.add_argument("--benchmark", choices=_BENCHMARKS, default=None, help="default: from the split names")
    p.add_argument("--out", metavar="JSON", default=None, help="metrics file (default: FILE with .metrics.json)")
    p.set_defaults(func=run_evaluate)


def _benchmark_from(args: argparse.Namespace, names: list[str]) -> str:
    if args.benchmark:
        return args.benchmark
    return "oc22" if "ood" in names and not set(names) & {"ood_ads", "ood_cat", "ood_both"} else "oc20"


def run_predict_splits(args: argparse.Namespace) -> int:
    from eqv2_plugin.errors import UserInputError
    from eqv2_plugin.leaderboard.predict import predict_splits
    from eqv2_plugin.leaderboard.testdata import resolve_splits

    task = "is2rs" if args.mode == "run-relaxations" else args.task
    names = [s.partition("=")[0] for s in args.test_data if "=" in s]
    benchmark = _benchmark_from(args, names)
    splits = resolve_splits(args.test_data, task, benchmark, "--test-data")
    if args.splits:
        wanted = [s.strip() for s in args.splits.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in splits]
        if unknown:
            raise UserInputError(f"--splits: {', '.join(unknown)} not among the test splits ({', '.join(splits)})")
        splits = {s: splits[s] for s in wanted}
    extra = list(args.fairchem_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    if args.cpu and "--cpu" not in extra:
        extra.insert(0, "--cpu")
    results = predict_splits(args.mode, args.config_yml, args.checkpoint, splits, args.out, task=args.task,
                             fairchem_args=extra, overwrite=args.overwrite,
                             progress=lambda line: print(f"predict-splits: {line}", file=sys.stderr, flush=True))
    for split, paths in results.items():
        print(f"{split:9s} " + "  ".join(f"{t}: {p}" for t, p in paths.items()))
    tasks = ("is2re", "is2rs") if args.mode == "run-relaxations" else (args.task,)
    bench = "" if benchmark == "oc20" else f" --benchmark {benchmark}"
    for t in tasks:
        print(f"next: eqv2-plugin submission --task {t}{bench} --predictions {args.out} --out {t}_submission.npz")
    return 0


def run_submission(args: argparse.Namespace) -> int:
    from pathlib import Path

    from eqv2_plugin.errors import UserInputError
    from eqv2_plugin.leaderboard.formats import BENCHMARK_SPLITS
    from eqv2_plugin.leaderboard.submission import build_submission, prediction_path, write_submission

    given = {split: getattr(args, f"split_{split}") for split, _ in _SPLIT_FLAGS if getattr(args, f"split_{split}")}
    benchmark = args.benchmark or ("oc22" if "ood" in given else "oc20")
    sources = {}
    if args.predictions:
        root = Path(args.predictions).expanduser()
        if not root.is_dir():
            raise UserInputError(f"--predictions: {root} is not a folder")
        sources = {s: prediction_path(root, args.task, s) for s in BENCHMARK_SPLITS[benchmark]}
    sources.update({s: Path(p) for s, p in given.items()})
    if not sources:
        raise UserInputError("give --predictions PRED (a predict-splits folder) or one path per split (--id PATH ...)")
    arrays = build_submission(args.task, benchmark, sources, args.dtype)
    out = write_submission(arrays, Path(args.out))
    sizes = ", ".join(f"{s} {len(arrays[f'{s}_ids'])}" for s in BENCHMARK_SPLITS[benchmark])
    dtypes = sorted({a.dtype.name for k, a in arrays.items() if a.dtype.kind == "f"})
    print(f"wrote {out} ({benchmark.upper()} {args.task.upper()}, {'/'.join(dtypes)}; ids per split: {sizes})")
    if args.test_data:
        _check_and_report(out, args.test_data, args.task, benchmark)
    return 0


def _check_and_report(path, test_data, task, benchmark) -> None:
    from eqv2_plugin.leaderboard.check import check_submission, describe, load_submission
    from eqv2_plugin.leaderboard.testdata import resolve_splits

    if task is None or benchmark is None:
        task, benchmark = describe(load_submission(path), task, benchmark)
    splits = resolve_splits(test_data, task, benchmark, "--test-data")
    report = check_submission(path, splits, task, benchmark)
    rows = "; ".join(
        f"{s} {r['ids']} ids" + (f" / {r['rows']} rows" if r["rows"] else "") for s, r in report["splits"].items()
    )
    print(f"OK: {path} is a valid {benchmark.upper()} {task.upper()} submission ({rows})")


def run_check(args: argparse.Namespace) -> int:
    _check_and_report(args.file, args.test_data, args.task, args.benchmark)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from eqv2_plugin.leaderboard.evaluate import evaluate, format_table, write_json

    result = evaluate(Path(args.predictions).expanduser(), label_specs=args.labels, task=args.task,
                      benchmark=args.benchmark)
    out = Path(args.out) if args.out else Path(args.predictions).with_suffix(".metrics.json")
    write_json(result, out)
    title = f"{result['task'].upper()}" + (f" ({result['benchmark'].upper()})" if result["benchmark"] else "")
    print(f"{title} metrics of {args.predictions} (fairchem Evaluator)")
    print(format_table(result))
    print(f"all metrics: {out}")
    return 0
