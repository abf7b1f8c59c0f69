"""The `slipguard` command: parses flags and environment once, then runs a command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from streams.settings import ConfigError, Settings, load_settings

Handler = Callable[[Settings, argparse.Namespace], int]


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each also SLIPGUARD_<NAME>)")
    for name, field in Settings.model_fields.items():
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"setting_{name}",
            metavar=name.upper(),
            default=None,
            help=field.description or f"SLIPGUARD_{name.upper()}",
        )


def _topics_create(settings: Settings, args: argparse.Namespace) -> int:
    from streams.kafka.topics import TopicLayoutError, create_topics

    try:
        for line in create_topics(settings):
            print(line)
    except TopicLayoutError as exc:
        print(f"slipguard topics create: {exc}", file=sys.stderr)
        return 3
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slipguard", description="Detect and recover paid orders that never came back.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    topics = commands.add_parser("topics", help="create or verify topics")
    topics_sub = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = topics_sub.add_parser("create", help="create or verify every topic; payments and orders co-partitioned")
    _add_settings_flags(create)
    create.set_defaults(handler=_topics_create)

    for register in _command_modules():
        register(commands, _add_settings_flags)
    return parser


def _command_modules() -> list[Callable]:
    """Commands defined in their own modules register themselves here."""
    registrars: list[Callable] = []
    for module in ("streams.join_cli", "streams.recover_cli", "streams.ops_cli"):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        registrars.append(mod.register)
    return registrars


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {k.removeprefix("setting_"): v for k, v in vars(args).items() if k.startswith("setting_")}
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        print(f"slipguard: {exc}", file=sys.stderr)
        return 2
    from streams.logs import setup_logging

    setup_logging(settings)
    handler: Handler = args.handler
    return handler(settings, args)


def run() -> None:
    sys.exit(main())
