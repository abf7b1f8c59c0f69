from typing import Any

class ApiVersionRequest:
    def __init__(self) -> None: ...

class ApiVersionResponse:
    error_code: int
    api_versions: list[tuple[int, int, int]]  # (api_key, min_version, max_version)

def __getattr__(name: str) -> Any: ...
