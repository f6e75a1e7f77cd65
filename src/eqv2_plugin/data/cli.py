"""``eqv2-plugin make-data``: write a small OC20-like data set as fairchem LMDBs.

Only argparse lives here; the work is in ``eqv2_plugin.data.dataset`` and is
imported when the command runs, so building the top-level parser stays fast.
"""
from __future__ import annotations

import argparse
import sys

# Mirrors dataset.DEFAULT_SIZES / oc20_like.METALS / ADSORBATE_NAMES without importing them
# (numpy-free import); tests check that the two agree.
_DEFAULT_SIZES = (
    "train=12,val_id=3,val_ood=3,test=3,is2re_train=6,is2re_val=3,"
    "test_id=2,test_ood_ads=2,test_ood_cat=2,test_ood_both=2,"
    "is2re_test_id=2,is2re_test_ood_ads=2,is2re_test_ood_cat=2,is2re_test_ood_both=2"
)
_METALS = "Cu,Ag,Au,Ni,Pd,Pt,Al"
_ADSORBATES = "H,O,N,C,OH,H2O,NH,NH2,NH3,CH,CH2,CH3,CO,NO"

_EPILOG = f"""\
sizes count systems per split (an S2EF system gives --frames entries, an IS2RE
system one); unnamed splits keep their default:
  {_DEFAULT_SIZES}
keys: train, val_id, val_ood, test, test_id, test_ood_ads, test_ood_cat,
test_ood_both (s2ef/...), is2re_train, is2re_val, is2re_test_id,
is2re_test_ood_ads, is2re_test_ood_cat, is2re_test_ood_both (is2re/...)

output: OUT/s2ef/{{train,val_id,val_ood,test}}/, OUT/is2re/{{train,val}}/ and the
leaderboard test splits OUT/s2ef/test_{{id,ood_ads,ood_cat,ood_both}}/ and
OUT/is2re/test_{{id,ood_ads,ood_cat,ood_both}}/ (IS2RE and IS2RS), each a folder of
fairchem LMDBs (data.0000.lmdb ...) with metadata.npz, plus OUT/manifest.json.
Use a split folder as a fairchem dataset src, e.g. dataset.train.src: OUT/s2ef/train.
One metal and one adsorbate (chosen from the seed) are held out of training: they
appear only in s2ef/val_ood and the ood test splits (ood_ads: held-out adsorbate,
ood_cat: held-out metal, ood_both: both), as in OC20.
Labels: EMT total energy (eV) and forces (eV/A); is2re entries hold y_init,
y_relaxed, pos_relaxed. s2ef/test and the test_* splits have no labels (as on the
leaderboard); OUT/labels/<split>/ holds labelled copies of the test_* splits for
`eqv2-plugin evaluate`. The same arguments store the same values
(manifest.json keeps a SHA-256 of each split's values; the .lmdb bytes differ
because torch pickles embed memory addresses).

example:
  eqv2-plugin make-data --out data/oc20_like --seed 1 --sizes train=200,val_id=20
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``make-data`` to the ``eqv2-plugin`` subcommands."""
    parser = subparsers.add_parser(
        "make-data",
        help="generate a small OC20-like S2EF/IS2RE data set (ASE slabs + adsorbates, EMT labels)",
        description=(
            "Build fcc(111)/(100)/(211) metal slabs with H/C/N/O adsorbates, label them\n"
            "with ASE's EMT calculator and write fairchem 1.x LMDB splits (S2EF train/\n"
            "val_id/val_ood/test, IS2RE train/val, and OC20-named leaderboard test splits\n"
            "id/ood_ads/ood_cat/ood_both for S2EF and IS2RE/IS2RS) with OC20 tags, fixed\n"
            "atoms and metadata.npz. Takes seconds with the default sizes."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--sizes",
        default="",
        metavar="KEY=N,...",
        help="systems per split, e.g. train=200,val_id=20 (defaults below)",
    )
    parser.add_argument(
        "--frames", type=int, default=4, metavar="N", help="S2EF frames per system (default: 4)"
    )
    parser.add_argument(
        "--metals",
        default=_METALS,
        metavar="M,...",
        help=f"comma-separated EMT metals, at least 2 (default: {_METALS})",
    )
    parser.add_argument(
        "--adsorbates",
        default=_ADSORBATES,
        metavar="A,...",
        help=f"comma-separated adsorbates, at least 2 (default: {_ADSORBATES})",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace DIR if it exists and is not empty"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="worker processes (default: one per CPU, at most 8); the output does not depend on it",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``make-data`` for parsed arguments; returns the exit code."""
    from eqv2_plugin.data.dataset import default_workers, generate_dataset, parse_sizes, summarize

    def progress(line: str) -> None:
        print(f"make-data: {line}", file=sys.stderr, flush=True)

    summary = generate_dataset(
        args.out,
        seed=args.seed,
        sizes=parse_sizes(args.sizes),
        metals=args.metals,
        adsorbates=args.adsorbates,
        overwrite=args.overwrite,
        frames=args.frames,
        workers=default_workers() if args.workers is None else args.workers,
        progress=None if args.quiet else progress,
    )
    print(summarize(summary["out"]))
    print(f"wrote {summary['out']} in {summary['seconds']:.1f}s")
    return 0
