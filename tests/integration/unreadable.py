"""Records with a header name that is not UTF-8, on the real broker.

Kafka's protocol allows any bytes in a header name, and clients other than the Python
ones write such names; confluent-kafka's and aiokafka's producers refuse them. aiokafka's
pure-Python record builder encodes a name with `name.encode("utf-8")`, so a str subclass
whose encode() returns other bytes gets them onto the wire. It runs in a process of its
own (AIOKAFKA_NO_EXTENSIONS must be set before aiokafka is imported), never in the test's.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from dataclasses import dataclass

from tests.integration.workers import ROOT

NAME = b"\xff\xfe-not-utf8"  # the name every unreadable header gets
UNREADABLE = None  # as a header's name in Foreign.headers: NAME

_SCRIPT = """
import asyncio, base64, json, os, sys
os.environ["AIOKAFKA_NO_EXTENSIONS"] = "1"
from aiokafka import AIOKafkaProducer
NAME = base64.b64decode(sys.argv[1])
class Name(str):
    def encode(self, *a, **k): return NAME
def b(x): return None if x is None else base64.b64decode(x)
async def main(spec):
    # linger: with one_batch, consecutive records of a partition go in one record batch
    p = AIOKafkaProducer(bootstrap_servers=spec["servers"], linger_ms=500 if spec["one_batch"] else 0,
                         compression_type=spec["compression"])
    await p.start()
    sent = []
    for r in spec["records"]:
        headers = [(Name("x") if k is None else k, b(v)) for k, v in r["headers"]]
        fut = await p.send(r["topic"], b(r["value"]), key=b(r["key"]), partition=r["partition"],
                           timestamp_ms=r["ts"], headers=headers)
        sent.append(fut if spec["one_batch"] else await fut)
    out = [await m if spec["one_batch"] else m for m in sent]
    await p.stop()
    print(json.dumps([[m.topic, m.partition, m.offset, m.timestamp] for m in out]))
asyncio.run(main(json.loads(sys.stdin.read())))
"""


@dataclass(frozen=True)
class Foreign:
    """A record as a foreign client writes it; a header named UNREADABLE gets NAME."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str | None, bytes | None], ...] = ((UNREADABLE, b"1"),)
    ts: int | None = None
    partition: int | None = None


def produce(servers: str, records: list[Foreign], *, one_batch: bool = False,
            compression: str | None = None) -> list[tuple[str, int, int, int]]:
    """Write `records` in order (aiokafka refuses one with neither key nor value);
    (topic, partition, offset, timestamp) of each as the broker stored it. `one_batch`:
    sent together, so a partition's consecutive records share a record batch.

    `compression`: the topic's compression.type, if it has one. A broker that recompresses
    a batch (the producer's compression is not the topic's) rewrites each header name as
    Java's String decodes it: a name that is not UTF-8 arrives with U+FFFD in place of its
    bad bytes (seen on orders.recovery, gzip). Sent in the topic's own compression, the
    batch is stored as it came, its bytes kept."""
    def b64(x: bytes | None) -> str | None:
        return None if x is None else base64.b64encode(x).decode()

    spec = {"servers": servers, "one_batch": one_batch, "compression": compression, "records": [
        {"topic": r.topic, "key": b64(r.key), "value": b64(r.value), "ts": r.ts, "partition": r.partition,
         "headers": [[k, b64(v)] for k, v in r.headers]} for r in records]}
    run = subprocess.run([sys.executable, "-c", _SCRIPT, base64.b64encode(NAME).decode()], input=json.dumps(spec),
                         capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    return [tuple(x) for x in json.loads(run.stdout.strip().splitlines()[-1])]  # type: ignore[misc]
