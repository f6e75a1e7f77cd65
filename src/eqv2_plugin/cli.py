"""`eqv2-plugin` command line: the user's entry point beside `fairchem`.

Each subcommand lives next to the code it drives and registers itself here;
heavy imports (fairchem, ASE) happen only when a subcommand runs.
"""
from __future__ import annotations

import argparse
import sys

from eqv2_plugin.errors import UserInputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eqv2-plugin",
        description="EquiformerV2 for the fairchem-core 1.x trainer: data, checkpoints, evaluation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from eqv2_plugin.data.cli import register as register_data
    from eqv2_plugin.integration.cli import register as register_checkpoints
    from eqv2_plugin.leaderboard.cli import register as register_leaderboard
    from eqv2_plugin.launch.cli import register as register_launch

    register_data(sub)
    register_checkpoints(sub)
    register_leaderboard(sub)
    register_launch(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserInputError as exc:  # bad input: a message, not a traceback
        print(f"eqv2-plugin {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
