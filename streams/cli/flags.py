"""Every setting is also a command-line flag (`--order-timeout` for SLIPGUARD_ORDER_TIMEOUT),
except that a secret's flag takes a file holding it (`--database-url-file PATH`, as
SLIPGUARD_DATABASE_URL_FILE): any user of the host can read a process's command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeAlias

from streams.settings import SECRET_FIELDS, Settings

Handler = Callable[[Settings, argparse.Namespace], int]
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # what add_subparsers returns


class _SecretAsValue(argparse.Action):
    """`--database-url VALUE`, refused in one line that does not repeat the value. Without
    it argparse would take `--database-url=VALUE` as an abbreviation of `--database-url-file`
    and print the secret as a path it cannot read."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        name = self.dest.removeprefix("refused_")
        parser.exit(2, f"slipguard: {option_string} is a secret, never given on the command line (any user of the "
                       f"host can read it there): put it in a file and give {option_string}-file PATH, or set "
                       f"SLIPGUARD_{name.upper()} or SLIPGUARD_{name.upper()}_FILE\n")


def _add_secret_flag(group: argparse._ArgumentGroup, name: str) -> None:
    flag = "--" + name.replace("_", "-")
    group.add_argument(f"{flag}-file", dest=f"secret_file_{name}", metavar="PATH", default=None,
                       help=f"a file holding SLIPGUARD_{name.upper()} (a secret: never a value on the command line)")
    group.add_argument(flag, dest=f"refused_{name}", nargs="?", action=_SecretAsValue, help=argparse.SUPPRESS)


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each also SLIPGUARD_<NAME>)")
    for name, field in Settings.model_fields.items():
        if name in SECRET_FIELDS:
            _add_secret_flag(group, name)
            continue
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=f"setting_{name}",
            metavar=name.upper(),
            default=None,
            help=field.description or f"SLIPGUARD_{name.upper()}",
        )


def command(parent: Commands, name: str, about: str, handler: Handler) -> argparse.ArgumentParser:
    """A (sub)command that takes every setting as a flag and runs `handler`."""
    parser = parent.add_parser(name, help=about)
    add_settings_flags(parser)
    parser.set_defaults(handler=handler)
    return parser


def group(parent: Commands, name: str, about: str) -> Commands:
    """A command with actions (`slipguard db migrate`): the parent of its `command`s."""
    return parent.add_parser(name, help=about).add_subparsers(dest="action", required=True, metavar="ACTION")
