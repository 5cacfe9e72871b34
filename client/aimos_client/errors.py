"""What the client raises.

Every refusal of the API arrives as `{"detail", "code", "errors": [{"field", "message"}]}`
(the platform's one error shape); `ApiError` carries those three, the HTTP status and the
response's headers, and its subclass says which kind of refusal it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


class AimosError(Exception):
    """Base of every error of the client."""


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of a request (`field` is None for the request as a whole)."""

    field: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ApiError(AimosError):
    """The API answered with an error status."""

    def __init__(
        self,
        status: int,
        detail: str,
        code: str = "error",
        errors: list[FieldError] | None = None,
        *,
        headers: httpx.Headers | None = None,
        body: Any = None,
    ) -> None:
        self.status = status
        self.detail = detail
        self.code = code
        self.errors = list(errors or [])
        self.headers = headers if headers is not None else httpx.Headers()
        self.body = body
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"{self.detail} ({self.status} {self.code})"
        shown = [str(error) for error in self.errors if str(error) != self.detail]
        if shown:
            text += ": " + "; ".join(shown)
        return text

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked to wait (Retry-After), if it said."""
        return retry_after(self.headers)


class BadRequestError(ApiError):
    """400: the request's data was refused (see `errors` for the fields)."""


class AuthenticationError(ApiError):
    """401: no credentials, or wrong ones."""


class PermissionDeniedError(ApiError):
    """403: the credentials may not do this."""


class NotFoundError(ApiError):
    """404: no such object (another user's objects are not found either)."""


class ConflictError(ApiError):
    """409: the object is not in a state that allows this (e.g. pausing a finished run)."""


class PayloadTooLargeError(ApiError):
    """413: the upload is larger than the server takes."""


class RateLimitedError(ApiError):
    """429: too many requests, still after the client's own bounded retries."""


class ServerError(ApiError):
    """5xx: the server failed or is briefly unavailable."""


class TransportError(AimosError):
    """The server could not be reached, or the connection broke or timed out."""


class StreamError(TransportError):
    """An event stream could not be resumed after its connection dropped, too many times."""


class BuildFailedError(AimosError):
    """A version's build ended `failed`; `version` holds it, with its `build_log`."""

    def __init__(self, version: dict) -> None:
        self.version = version
        super().__init__(f"the build of {version.get('version', 'the version')} failed")


class WaitTimeoutError(AimosError):
    """Something did not reach the awaited state within the time given."""


_BY_STATUS = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    429: RateLimitedError,
}


def retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: not sent by AIMOS; treated as "not said"


def error_from_response(response: httpx.Response) -> ApiError:
    """The ApiError of an error response (its body read already)."""
    body: Any = None
    detail = response.reason_phrase or f"HTTP {response.status_code}"
    code = "error"
    errors: list[FieldError] = []
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        if text:
            detail = text[:500]
    if isinstance(body, dict):
        detail = str(body.get("detail") or detail)
        code = str(body.get("code") or code)
        for item in body.get("errors") or []:
            if isinstance(item, dict):
                errors.append(FieldError(item.get("field"), str(item.get("message", ""))))
    status = response.status_code
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    return cls(status, detail, code, errors, headers=response.headers, body=body)
