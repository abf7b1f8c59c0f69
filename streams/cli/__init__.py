"""The `slipguard` command: parses flags and environment once, then runs a command.

One module per command group, each with a `register(commands)`:
join (the join worker), recover (the recovery writer, `db migrate`), ops (`topics`,
`lag`), tools (`demo`, `loadgen`, the benchmarks).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from streams.cli import join, ops, recover, tools
from streams.cli.flags import Handler
from streams.settings import ConfigError, Settings, load_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slipguard",
                                     description="Detect and recover paid orders that never came back.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (ops, join, recover, tools):
        module.register(commands)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings: environment, then flags (values, and secrets' files) on top."""
    given = vars(args)
    overrides = {k.removeprefix("setting_"): v for k, v in given.items() if k.startswith("setting_")}
    files = {k.removeprefix("secret_file_"): v for k, v in given.items() if k.startswith("secret_file_")}
    return load_settings(secret_files=files, env_file=given.get("env_file"), **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"slipguard: {exc}", file=sys.stderr)
        return 2
    from streams.ops.logs import setup_logging

    setup_logging(settings)
    handler: Handler = args.handler
    return handler(settings, args)


def run() -> None:
    sys.exit(main())
