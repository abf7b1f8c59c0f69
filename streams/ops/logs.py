"""Logging: plain text or one JSON object per line, with Kafka coordinates as fields.

Both formatters redact known secrets from everything they print: the message, the
exception text and the stack (a psycopg error quotes the whole database URL, password
included, and a traceback shows source lines).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

from streams.settings import Settings

_CONTEXT_FIELDS = ("topic", "partition", "offset", "group", "order_id", "payment_id")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; every text in it redacted (before encoding, so that a
    secret is found whatever JSON would escape in it)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _CONTEXT_FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        clean = {k: redact(v) if isinstance(v, str) else v for k, v in out.items()}
        return json.dumps(clean, ensure_ascii=False, default=lambda v: redact(str(v)))


class TextFormatter(logging.Formatter):
    """A line with the coordinates appended, then the traceback and stack if any; all redacted."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)  # message, then exception text and stack
        extra = " ".join(f"{n}={getattr(record, n)}" for n in _CONTEXT_FIELDS if hasattr(record, n))
        return redact(f"{line} [{extra}]" if extra else line)


_SECRETS: list[str] = []


def secret_values(settings: Settings) -> list[str]:
    """Every secret a message could carry: the database URL and its password, the SASL and
    TLS key passwords, the HMAC key. Longest first, so a URL is hidden before its parts."""
    from urllib.parse import unquote, urlsplit

    found = []
    url = settings.database_url.get_secret_value()
    found.append(url)
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        found += [password, unquote(password)]
    for name in ("kafka_sasl_password", "kafka_ssl_key_password", "payment_hmac_key", "payment_hmac_previous_key"):
        value = getattr(settings, name)
        if value is not None and value.get_secret_value():
            found.append(value.get_secret_value())
    found += [m.group(1) for m in re.finditer(r"password=([^\s&]+)", url)]
    return sorted({v for v in found if len(v) >= 3}, key=len, reverse=True)


# A secret shorter than this is hidden only where it stands as a credential (":<it>@" in a
# URL, "password=<it>"), not as any substring: the local stack's password is "slipguard",
# and masking every occurrence made every logger, topic and group name `***`.
BARE_MIN = 12


def redact(text: str) -> str:
    """Text with every known secret replaced by ***."""
    for secret in _SECRETS:
        if secret not in text:
            continue
        if len(secret) >= BARE_MIN:
            text = text.replace(secret, "***")
        else:
            quoted = re.escape(secret)
            text = re.sub(rf"(:){quoted}(@)|(password\W{{0,3}}){quoted}(?=\W|$)",
                          lambda m: f"{m.group(1) or m.group(3)}***{m.group(2) or ''}", text, flags=re.IGNORECASE)
    return text


class RedactingFilter(logging.Filter):
    """Redacts the message on the record itself (the formatters also redact what they print)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def setup_logging(settings: Settings) -> None:
    _SECRETS[:] = secret_values(settings)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)


def safe_error(exc: Exception) -> str:
    """An error for a log line: which fields failed and why, never the values (no payment data)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in exc.errors())[:500]
    return f"{type(exc).__name__}: {str(exc)[:300]}"
