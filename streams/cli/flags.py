"""Every setting a command uses is also one of its flags (`--order-timeout` for
SLIPGUARD_ORDER_TIMEOUT), grouped in its `--help` as SETTING_GROUPS has them, except that a
secret's flag takes a file holding it (`--database-url-file PATH`, as
SLIPGUARD_DATABASE_URL_FILE): any user of the host can read a process's command line.
A setting a command does not use is not a flag of it (`slipguard lag --changelog-format`
is refused), though the environment may still hold it for the commands that do."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Collection
from typing import Any, TypeAlias

from streams.settings import SECRET_FIELDS, SETTING_GROUPS, Settings

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


class _SecretNotUsed(argparse.Action):
    """`--database-url VALUE` on a command that does not use it: refused without repeating
    the value (argparse's own error would print it as an unrecognized argument)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.exit(2, f"slipguard: {parser.prog} does not use {option_string} (and a secret is never given on the "
                       f"command line: any user of the host can read it there)\n")


def _add_secret_flag(group: argparse._ArgumentGroup, name: str) -> None:
    flag = "--" + name.replace("_", "-")
    group.add_argument(f"{flag}-file", dest=f"secret_file_{name}", metavar="PATH", default=None,
                       help=f"a file holding SLIPGUARD_{name.upper()} (a secret: never a value on the command line)")
    group.add_argument(flag, dest=f"refused_{name}", nargs="?", action=_SecretAsValue, help=argparse.SUPPRESS)


def _default(name: str) -> str:
    default = Settings.model_fields[name].default
    if default is None or name in SECRET_FIELDS:
        return ""
    return f" (default {default})"


def add_settings_flags(parser: argparse.ArgumentParser, uses: Collection[str]) -> None:
    """The flags of the settings a command uses, grouped as SETTING_GROUPS has them; every
    secret's refusal on every command (argparse would otherwise echo the value it refuses)."""
    unknown = set(uses) - set(Settings.model_fields)
    if unknown:
        raise ValueError(f"not settings: {', '.join(sorted(unknown))}")
    where = parser.add_argument_group(
        "settings", "Each setting below is also an environment variable SLIPGUARD_<NAME> (--order-timeout: "
                    "SLIPGUARD_ORDER_TIMEOUT). Flags win over the environment, the environment over --env-file.")
    where.add_argument("--env-file", dest="env_file", metavar="PATH", default=None,
                       help="read SLIPGUARD_* settings from this file (NAME=value lines, as `slipguard demo` writes "
                            "them)")
    for title, names in SETTING_GROUPS.items():
        used = [n for n in names if n in uses]
        if not used:
            continue
        group = parser.add_argument_group(title)
        for name in used:
            if name in SECRET_FIELDS:
                _add_secret_flag(group, name)
                continue
            group.add_argument("--" + name.replace("_", "-"), dest=f"setting_{name}", metavar=name.upper(),
                               default=None, help=f"{Settings.model_fields[name].description}{_default(name)}")
    for name in SECRET_FIELDS:
        if name not in uses:
            parser.add_argument("--" + name.replace("_", "-"), dest=f"refused_{name}", nargs="?",
                                action=_SecretNotUsed, help=argparse.SUPPRESS)


def settings_in(*groups: str) -> tuple[str, ...]:
    """The settings of some of SETTING_GROUPS, for a command's `uses`."""
    return tuple(name for title in groups for name in SETTING_GROUPS[title])


# What every command that speaks to Kafka uses.
KAFKA_CLIENT = settings_in("Kafka connection", "Kafka security", "logging")


def command(parent: Commands, name: str, about: str, handler: Handler,
            uses: Collection[str]) -> argparse.ArgumentParser:
    """A (sub)command that takes the settings it `uses` as flags and runs `handler`."""
    parser = parent.add_parser(name, help=about, description=about)
    add_settings_flags(parser, uses)
    parser.set_defaults(handler=handler, uses=frozenset(uses))
    return parser


def group(parent: Commands, name: str, about: str) -> Commands:
    """A command with actions (`slipguard db migrate`): the parent of its `command`s."""
    return parent.add_parser(name, help=about).add_subparsers(dest="action", required=True, metavar="ACTION")
