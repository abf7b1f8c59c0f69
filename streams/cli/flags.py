"""Every setting is also a command-line flag (`--order-timeout` for SLIPGUARD_ORDER_TIMEOUT)."""

from __future__ import annotations

import argparse
from typing import Any

from streams.settings import Settings


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each also SLIPGUARD_<NAME>)")
    for name, field in Settings.model_fields.items():
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"setting_{name}",
            metavar=name.upper(),
            default=None,
            help=field.description or f"SLIPGUARD_{name.upper()}",
        )


def command(parent: Any, name: str, about: str, handler: Any) -> argparse.ArgumentParser:
    """A (sub)command that takes every setting as a flag and runs `handler`."""
    parser = parent.add_parser(name, help=about)
    add_settings_flags(parser)
    parser.set_defaults(handler=handler)
    return parser


def group(parent: Any, name: str, about: str) -> Any:
    """A command with actions (`slipguard db migrate`): the parent of its `command`s."""
    return parent.add_parser(name, help=about).add_subparsers(dest="action", required=True, metavar="ACTION")
