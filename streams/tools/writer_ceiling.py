"""The recovery writer's ceiling, for `slipguard bench-writer`: the same faust app, the
same batches, decoding and acks, with the database write left out. Run as
`python -m streams.tools.writer_ceiling N` with the bench's settings in the environment;
prints the records/s at which N records were read, decoded and acknowledged."""

from __future__ import annotations

import os
import sys
import time

from streams.recover.store import Item
from streams.recover.writer import Ack, Record, SendDeadLetter, Writer
from streams.settings import ConfigError, Settings, load_settings


class _Ceiling(Writer):
    """The writer without its database write: once `total` records are acknowledged, it
    prints the records/s and ends the process."""

    def __init__(self, s: Settings, send_dead_letter: SendDeadLetter, total: int) -> None:
        super().__init__(s, send_dead_letter)
        self.total, self.acknowledged, self.started = total, 0, 0.0

    async def _write(self, items: list[tuple[Item, Record]]) -> None:
        return None

    async def _commit(self, records: list[Record], ack: Ack) -> None:
        if not self.started:
            self.started = time.perf_counter()
        await super()._commit(records, ack)
        self.acknowledged += len(records)
        if self.acknowledged >= self.total:
            print(f"{self.acknowledged / (time.perf_counter() - self.started):.0f}", flush=True)
            os._exit(0)


def main(total: int) -> int:
    from streams.ops.logs import setup_logging
    from streams.recover.worker import CannotStart, run

    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"writer_ceiling: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings)
    try:
        return run(settings, lambda s, send: _Ceiling(s, send, total))
    except CannotStart as exc:
        print(f"writer_ceiling: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
