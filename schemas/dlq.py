"""The `slipguard.dlq` topic: a record that could not be decoded or validated."""

from __future__ import annotations

import base64

from pydantic import Field

from schemas.base import Message
from schemas.fields import Timestamp


class DeadLetter(Message):
    source_topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    key_b64: str | None = None
    value_b64: str | None = None
    error: str = Field(max_length=4000)
    failed_at: Timestamp

    @staticmethod
    def b64(data: bytes | None) -> str | None:
        return None if data is None else base64.b64encode(data).decode("ascii")
