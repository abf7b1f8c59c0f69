"""Base class for every message: one-call decode from bytes and encode to bytes."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict


class Message(BaseModel):
    """A message on one of slipguard's topics, as JSON in UTF-8."""

    # Inputs come from other services: unknown fields are ignored so that a producer adding
    # a field does not send every record to the DLQ; every known field is strictly checked.
    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=False)

    @classmethod
    def decode(cls, data: bytes | str) -> Self:
        """Parse and validate a record value in one step (raises pydantic.ValidationError)."""
        return cls.model_validate_json(data)

    def encode(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self, by_alias=True, exclude_none=True)
