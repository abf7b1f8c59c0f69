# aiokafka 0.14 ships no types: this declares the little of it slipguard uses
# (streams/kafka/versions.py, streams/recover/faust_compat.py). Anything else is Any.
from typing import Any

class AIOKafkaConsumer:
    # private: read by start() to build the fetcher; faust_compat sets it (and missing() checks it is there)
    _isolation_level: str
    def __getattr__(self, name: str) -> Any: ...

def __getattr__(name: str) -> Any: ...
