"""Every setting is also a command-line flag (`--order-timeout` for SLIPGUARD_ORDER_TIMEOUT)."""

from __future__ import annotations

import argparse

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
