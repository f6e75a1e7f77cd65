"""``eqv2-plugin convert-checkpoint``."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-checkpoint",
        help="rewrite a fairchem EquiformerV2 checkpoint for eqv2_plugin, or back",
        description=(
            "Rewrite a fairchem checkpoint file (checkpoint.pt / best_checkpoint.pt) of fairchem's "
            "EquiformerV2 (monolithic equiformer_v2 or hydra) so that its config names eqv2_plugin's "
            "model and its weights use our parameter names, or the reverse. The direction is detected "
            "from the checkpoint's config unless given. Trainer state (optimizer, EMA, scheduler, "
            "normalizers) is kept."
        ),
    )
    p.add_argument("src", metavar="IN", help="checkpoint to read")
    p.add_argument("dst", metavar="OUT", help="checkpoint to write")
    p.add_argument("--direction", choices=["auto", "to-plugin", "to-fairchem"], default="auto")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from eqv2_plugin.integration.checkpoint_file import convert_file

    direction = convert_file(args.src, args.dst, args.direction)
    print(f"wrote {args.dst} ({direction})")
    return 0
