"""The recovery writer's ceiling, for `slipguard bench-writer`: the same faust app, the
same batches, decoding and acks, with the database write left out. Run as
`python -m streams.tools.writer_ceiling N` with the bench's settings in the environment;
prints the records/s at which N records were read, decoded and acknowledged."""

from __future__ import annotations

import os
import sys
import time

from streams.recover.writer import Record, Writer


def main(total: int) -> None:
    write, commit = Writer._write, Writer._commit
    seen = {"n": 0, "started": 0.0}

    async def nothing(self: Writer, items: list) -> None:
        return None

    async def counted(self: Writer, records: list[Record], ack) -> None:  # type: ignore[no-untyped-def]
        if not seen["started"]:
            seen["started"] = time.perf_counter()
        await commit(self, records, ack)
        seen["n"] += len(records)
        if seen["n"] >= total:
            print(f"{seen['n'] / (time.perf_counter() - seen['started']):.0f}", flush=True)
            os._exit(0)

    Writer._write, Writer._commit = nothing, counted  # type: ignore[method-assign]
    assert write is not nothing
    from streams.cli import main as cli

    sys.exit(cli(["recover"]))


if __name__ == "__main__":
    main(int(sys.argv[1]))
