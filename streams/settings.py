"""Every setting of slipguard: environment variables SLIPGUARD_*, each also a flag (a
secret's flag names a file holding it: a value on the command line is in /proc/*/cmdline).

Parsed and validated once, at the edge (streams.cli); the rest of the code receives
plain values from here.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PROCESS_ID = f"{socket.gethostname()[:60]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
LOCAL_DATABASE_URL = "postgresql://slipguard:slipguard@127.0.0.1:25432/slipguard"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


# The longest duration any setting takes: 100 years. Event times plus any sum of settings
# stay far inside a signed 64-bit count of milliseconds (the native core's and Kafka's), so
# no setting can make a time wrap around.
MAX_DURATION_MS = 100 * 365 * 86_400_000


def parse_duration_ms(value: Any) -> int:
    """'60s', '1h', '250ms', '5' (seconds) or a number of seconds -> whole milliseconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 60s, 5m or 1h")
    if isinstance(value, (int, float)):
        ms = value * 1000
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError("expected a duration such as 60s, 5m, 1h or 250ms")
        ms = float(match.group(1)) * _UNIT_MS[match.group(2)]
    if not -MAX_DURATION_MS <= ms <= MAX_DURATION_MS:  # (also infinities and NaN)
        raise ValueError(f"{value!r} is longer than any setting takes (at most 100 years)")
    return int(ms)


DurationMs = Annotated[int, BeforeValidator(parse_duration_ms)]


def duration(default: str, **constraints: Any) -> Any:
    """A DurationMs field whose default is written as a user writes it ("60s"): parsed like
    any value (validate_default), so the setting holds whole milliseconds. Typed Any as
    what it is, a pydantic FieldInfo (Field itself claims to return its default's type)."""
    return Field(default, **constraints)


DURATION_FIELDS = ("order_timeout", "grace", "late_horizon", "max_future", "commit_interval", "topic_wait")
TOPIC_SETTINGS = ("payments", "orders", "recovery", "late", "anomalies", "dlq")


class Settings(BaseSettings):
    """slipguard's configuration. Durations are held in milliseconds."""

    model_config = SettingsConfigDict(env_prefix="SLIPGUARD_", extra="ignore", validate_default=True)

    bootstrap_servers: str = Field("127.0.0.1:9092", min_length=1,
                                   description="Kafka bootstrap servers, host:port[,host:port]")
    database_url: SecretStr = Field(SecretStr(LOCAL_DATABASE_URL), description="PostgreSQL connection URL")

    payments_topic: str = Field("payments", description="the payments input (as many partitions as orders)")
    orders_topic: str = Field("orders", description="the orders input (as many partitions as payments)")
    recovery_topic: str = Field("orders.recovery", description="output: payments whose order did not come in time")
    late_topic: str = Field("orders.late", description="output: orders that came after their payment was recovered")
    anomalies_topic: str = Field("payments.anomalies", description="output: mismatched pairs, duplicate payments, "
                                                                       "bad signatures, paid_at skew")
    dlq_topic: str = Field("slipguard.dlq", description="output: records that could not be decoded or validated")

    order_timeout: DurationMs = duration("60s", gt=0, description="how long a payment waits for its order")
    grace: DurationMs = duration("5s", ge=0, description="allowed out-of-orderness past the deadline")
    late_horizon: DurationMs = duration("1h", ge=0, description="how long recovered payments are remembered "
                                                                "after their recovery")
    max_future: DurationMs = duration("1h", gt=0, description="how far ahead of the worker's clock a record's "
                                                              "timestamp may be; further goes to the DLQ")
    processing_guarantee: Literal["exactly_once", "at_least_once"] = Field(
        "exactly_once", description="exactly_once: each recovery once for read_committed readers, whatever "
                                    "crashes; at_least_once: it may repeat, with the same recovery_id")

    join_group: str = Field("slipguard-join", min_length=1,
                            description="the join's consumer group; its changelog is <group>-state-changelog")
    recover_group: str = Field("slipguard-recover", min_length=1, description="the recovery writer's consumer group")
    payment_hmac_key: SecretStr | None = Field(None, description="unset: signatures not checked")
    payment_hmac_previous_key: SecretStr | None = Field(
        None, description="during a key rotation, the key payments were signed with before: a payment signed "
                          "with either key is valid (unset it once every producer signs with the new key)")
    minimise_personal_data: bool = Field(
        False, description="leave payments' and orders' metadata out of anomalies and of dead letters (whose "
                           "value then keeps only the record without its metadata, and whose error names fields, "
                           "never values)")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="the port of /metrics, /healthz and /readyz: unset, 9400 for join, 9401 "
                                          "for recover, 9402 for lag --serve; 0 turns it off")
    metrics_host: str = Field("127.0.0.1", min_length=1, max_length=253,
                              description="address the metrics endpoint binds: 127.0.0.1 (this host only), "
                                          "0.0.0.0 (every interface: what a container scraped by Prometheus or "
                                          "probed by Kubernetes needs), or one interface's address")

    partitions: int = Field(6, ge=1, le=10_000, description="partitions for topics that `topics create` makes")
    replication_factor: int = Field(-1, ge=-1, le=32, description="-1: the broker's default")
    min_insync_replicas: int | None = Field(None, ge=1, le=32, description="for the changelog the join creates; "
                                                                            "unset: the broker's default")
    instance_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="optional stable name of this worker (a StatefulSet pod name): its transactional.id and "
                    "static group membership; unset: unique per process",
    )
    group_protocol: Literal["auto", "consumer", "classic"] = Field(
        "auto", description="the join group's protocol: consumer (KIP-848, Kafka 4.0+: server-side range "
                            "assignor, incremental rebalances), classic (client-side eager range), or auto: "
                            "consumer where the broker offers it, else classic")
    batch_size: int = Field(10_000, ge=1, le=1_000_000, description="records the join reads per consume() call")
    commit_interval: DurationMs = duration("100ms", gt=0, description="how often the join commits its transaction")
    changelog_format: int = Field(
        4, ge=2, le=4, description="the changelog format the join writes: 4 (3 and settled pairs), 3 (compact "
                       "pending payments) while a release before 4 still runs or may be rolled back to (it reads "
                       "2 and 3), or 2 while a release before 3 does (it reads only 2); this release reads all")
    core: Literal["native", "python"] | None = Field(
        None, description="the join's record path: native (Rust, slipguard_native; the default where it is built) "
                          "or python (the reference, and the fallback where it is not built)")
    topic_wait: DurationMs = duration("30s", gt=0, description="how long the join waits at start for its input "
                                                              "topics to appear (created alongside a deployment)")

    # Kafka security: passed through to every client the program makes.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    kafka_sasl_username: str | None = Field(None, description="the SASL user name")
    kafka_sasl_password: SecretStr | None = Field(None, description="the SASL password")
    kafka_ssl_ca_location: str | None = Field(None, description="a CA certificate file (PEM) to verify the brokers by")
    kafka_ssl_certificate_location: str | None = Field(None, description="a client certificate (PEM), for TLS "
                                                                               "client authentication")
    kafka_ssl_key_location: str | None = Field(None, description="the client certificate's private key (PEM)")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="the client key's password")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["text", "json"] = Field("text", description="text, or json: one JSON object per line")

    @field_validator("bootstrap_servers")
    @classmethod
    def _hosts(cls, value: str) -> str:
        for part in value.split(","):
            host, _, port = part.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port], got {value!r}")
        return value

    @field_validator("payment_hmac_key", "payment_hmac_previous_key")
    @classmethod
    def _key_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty or short key is a mistake (an empty secret mounted, a placeholder), not
        # "signatures off": unset the variable for that.
        if value is not None and len(value.get_secret_value().encode()) < 16:
            raise ValueError("the HMAC key must be at least 16 bytes; unset the variable to turn signature checks off")
        return value

    @model_validator(mode="after")
    def _previous_key_needs_a_key(self) -> Settings:
        if self.payment_hmac_previous_key is not None and self.payment_hmac_key is None:
            raise ValueError("SLIPGUARD_PAYMENT_HMAC_PREVIOUS_KEY is set without SLIPGUARD_PAYMENT_HMAC_KEY; set the "
                             "current key too (a rotation accepts both), or unset both to turn signature checks off")
        return self

    @model_validator(mode="after")
    def _native_core_built(self) -> Settings:
        if self.core == "native":
            try:
                import slipguard_native  # noqa: F401
            except ImportError:
                raise ValueError("SLIPGUARD_CORE=native, but slipguard_native is not built in this environment: "
                                 "run `make venv` where cargo is, or set SLIPGUARD_CORE=python") from None
        return self

    @model_validator(mode="after")
    def _sasl_complete(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError("SASL needs SLIPGUARD_KAFKA_SASL_MECHANISM, _SASL_USERNAME and _SASL_PASSWORD")
        return self

    @property
    def hmac_keys(self) -> tuple[bytes, ...]:
        """The keys a payment's signature may be made with (current first); empty: not checked."""
        keys = (self.payment_hmac_key, self.payment_hmac_previous_key)
        return tuple(k.get_secret_value().encode("utf-8") for k in keys if k is not None)

    def worker_id(self) -> str:
        """This process's name in the group: the configured instance id, else one unique
        per process (host, pid and a random part), so that workers need no per-process
        configuration to coexist and never share a transactional.id."""
        return self.instance_id or _PROCESS_ID

    @property
    def changelog_topic(self) -> str:
        """The join's compacted state changelog, co-partitioned with payments and orders."""
        return f"{self.join_group}-state-changelog"

    def derive(self, **over: Any) -> Settings:
        """A copy with some settings changed; values as a user writes them ("5s", "payments")."""
        fields = self.model_dump() | {k: f"{getattr(self, k)}ms" for k in DURATION_FIELDS}
        return Settings.model_validate(fields | over)

    def with_prefix(self, prefix: str, **over: Any) -> Settings:
        """A copy whose topics and groups carry a prefix: a run that sees no one else's records."""
        names = {f"{t}_topic": f"{prefix}.{getattr(self, f'{t}_topic')}" for t in TOPIC_SETTINGS}
        groups = {"join_group": f"{prefix}-join", "recover_group": f"{prefix}-recover", "instance_id": prefix}
        return self.derive(**(names | groups | over))

    def to_env(self) -> dict[str, str]:
        """SLIPGUARD_* variables that give a child process exactly these settings."""
        env = {}
        for name in Settings.model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            env[f"SLIPGUARD_{name.upper()}"] = f"{value}ms" if name in DURATION_FIELDS else str(value)
        return env

    def metrics_port_for(self, command: str) -> int:
        if self.metrics_port is not None:
            return self.metrics_port
        return {"join": 9400, "recover": 9401}.get(command, 0)


# The settings by what they are about, in the order `--help` and the configuration page
# show them. Every setting is in exactly one group (tests/test_settings.py).
SETTING_GROUPS: dict[str, tuple[str, ...]] = {
    "Kafka connection": ("bootstrap_servers",),
    "Kafka security": ("kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
                       "kafka_sasl_password", "kafka_ssl_ca_location", "kafka_ssl_certificate_location",
                       "kafka_ssl_key_location", "kafka_ssl_key_password"),
    "topics": ("payments_topic", "orders_topic", "recovery_topic", "late_topic", "anomalies_topic", "dlq_topic"),
    "consumer groups": ("join_group", "recover_group", "instance_id"),
    "the join's rules": ("order_timeout", "grace", "late_horizon", "max_future"),
    "the join's tuning": ("processing_guarantee", "group_protocol", "batch_size", "commit_interval",
                          "changelog_format", "core", "topic_wait"),
    "topics slipguard creates": ("partitions", "replication_factor", "min_insync_replicas"),
    "signatures and personal data": ("payment_hmac_key", "payment_hmac_previous_key", "minimise_personal_data"),
    "PostgreSQL": ("database_url",),
    "metrics endpoint": ("metrics_port", "metrics_host"),
    "logging": ("log_level", "log_format"),
}


class ConfigError(Exception):
    """Bad configuration: its message is one line naming the setting and what is wrong."""


SECRET_FIELDS = ("database_url", "payment_hmac_key", "payment_hmac_previous_key", "kafka_sasl_password",
                 "kafka_ssl_key_password")


def read_secret_file(path: str, given_as: str) -> str:
    """A secret file's content, one trailing newline (LF or CRLF) dropped; `given_as` names
    the variable or flag that gave the path, for the one-line error."""
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read()
    except OSError as exc:
        raise ConfigError(f"bad configuration: {given_as}: cannot read {path} ({exc.strerror})") from None
    value = value[:-1] if value.endswith("\n") else value
    return value[:-1] if value.endswith("\r") else value


def secrets_from_files(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Secrets given as files, as Kubernetes and Docker mount them: SLIPGUARD_<NAME>_FILE
    names a file whose content (one trailing newline dropped) is the value. Setting both
    the variable and its _FILE is a configuration error (which one was meant?)."""
    found = {}
    for name in SECRET_FIELDS:
        var = f"SLIPGUARD_{name.upper()}"
        path = environ.get(f"{var}_FILE")
        if not path:
            continue
        if environ.get(var):
            raise ConfigError(f"bad configuration: {var} and {var}_FILE are both set; set one")
        found[name] = read_secret_file(path, f"{var}_FILE")
    return found


def read_env_file(path: str) -> dict[str, str]:
    """SLIPGUARD_* variables from a file of NAME=value lines, as `slipguard demo` writes
    them (blank lines and # comments skipped; `export ` and quotes around a value allowed).
    A line that is not NAME=value, or a name that is no setting, is a one-line ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"bad configuration: --env-file: cannot read {path} ({exc.strerror})") from None
    known = {f"SLIPGUARD_{n.upper()}" for n in Settings.model_fields}
    known |= {f"SLIPGUARD_{n.upper()}_FILE" for n in SECRET_FIELDS}
    found = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, sep, value = text.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in known:
            what = f"{name} is not a setting" if sep else "expected NAME=value"
            raise ConfigError(f"bad configuration: --env-file {path}, line {number}: {what}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[name] = value
    return found


def load_settings(secret_files: Mapping[str, str] | None = None, env_file: str | None = None,
                  **overrides: Any) -> Settings:
    """Build Settings from the environment (secrets also from files, see
    secrets_from_files), over what `env_file` holds (read_env_file: the environment wins),
    with command-line overrides on top: `overrides` as values, `secret_files` as
    {secret setting: path of the file holding it} (its flag)."""
    from_file = read_env_file(env_file) if env_file else {}
    environ = from_file | dict(os.environ)
    in_file = {k.removeprefix("SLIPGUARD_").lower(): v for k, v in from_file.items()
               if k not in os.environ and not k.endswith("_FILE")}
    from_flags = {name: read_secret_file(path, f"--{name.replace('_', '-')}-file")
                  for name, path in (secret_files or {}).items() if path is not None}
    given = in_file | secrets_from_files(environ) | from_flags | {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigError(one_line(exc)) from None


def one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        name = f"SLIPGUARD_{field.upper()}" if err["loc"] else "settings"
        given = err.get("input")
        secret = any(word in field for word in ("password", "key", "url"))
        shown = "" if isinstance(given, dict) or given is None or secret else f" (got {given!r})"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{name}: {msg}{shown}")
    return "bad configuration: " + "; ".join(parts)
