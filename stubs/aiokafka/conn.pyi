import asyncio
import ssl
from typing import Any, overload

from aiokafka.protocol.admin import ApiVersionRequest, ApiVersionResponse

class AIOKafkaConnection:
    @overload
    def send(self, request: ApiVersionRequest, expect_response: bool = True) -> asyncio.Future[ApiVersionResponse]: ...
    @overload
    def send(self, request: Any, expect_response: bool = True) -> asyncio.Future[Any]: ...
    def close(self, reason: object = None, exc: BaseException | None = None) -> asyncio.Future[None]: ...

async def create_conn(
    host: str,
    port: int,
    *,
    client_id: str = ...,
    request_timeout_ms: int = ...,
    ssl_context: ssl.SSLContext | None = ...,
    security_protocol: str = ...,
    max_idle_ms: int | None = ...,
    on_close: Any = ...,
    sasl_mechanism: str | None = ...,
    sasl_plain_username: str | None = ...,
    sasl_plain_password: str | None = ...,
    sasl_kerberos_service_name: str = ...,
    sasl_kerberos_domain_name: str | None = ...,
    sasl_oauth_token_provider: Any = ...,
) -> AIOKafkaConnection: ...

def __getattr__(name: str) -> Any: ...
