"""AIMOS client: the `aimos` command and this library.

    from aimos_client import Client

    client = Client("http://127.0.0.1:8000", api_key="aimos_…")
    client.deploy("my-agent/")
    run = client.execute("my-agent", {"topic": "a heron"})
    for event in client.executions.stream(run["id"]):
        ...

See `Client`, `AsyncClient`, `aimos_client.webhooks.verify` and the README.
"""

__version__ = "0.1.0"

from aimos_client._resources import Deployment  # noqa: E402
from aimos_client._transport import Settings  # noqa: E402
from aimos_client.client import AsyncClient, Client  # noqa: E402
from aimos_client.errors import (  # noqa: E402
    AimosError,
    ApiError,
    AuthenticationError,
    BadRequestError,
    BuildFailedError,
    ConflictError,
    FieldError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    StreamError,
    TransportError,
    WaitTimeoutError,
)
from aimos_client.manifest import ManifestError, load_manifest  # noqa: E402
from aimos_client.models import TERMINAL_EVENTS, Event  # noqa: E402
from aimos_client.packing import PackError, pack  # noqa: E402

__all__ = [
    "AimosError",
    "ApiError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BuildFailedError",
    "Client",
    "ConflictError",
    "Deployment",
    "Event",
    "FieldError",
    "ManifestError",
    "NotFoundError",
    "PackError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitedError",
    "ServerError",
    "Settings",
    "StreamError",
    "TERMINAL_EVENTS",
    "TransportError",
    "WaitTimeoutError",
    "__version__",
    "load_manifest",
    "pack",
]
