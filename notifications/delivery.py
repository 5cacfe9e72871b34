"""Delivering one webhook event: the HTTP client and one attempt of the delivery job.

Each attempt re-checks the URL with the guard, signs the body anew and POSTs it to the
checked address, following no redirect; the attempt is logged on the delivery row.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from dataclasses import dataclass

from django.conf import settings

from notifications.guard import Target, UnsafeURL, check_url
from notifications.models import DeliveryStatus, WebhookDelivery
from notifications.signing import signed_headers


@dataclass(frozen=True)
class Response:
    status: int | None
    duration_ms: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def post(target: Target, body: bytes, headers: dict, *, timeout: float) -> Response:
    """POST to the checked address (SNI and Host name the host); redirects are not followed."""
    started = time.monotonic()
    try:
        if target.scheme == "https":
            context = ssl.create_default_context()
            connection = http.client.HTTPSConnection(
                target.address, target.port, timeout=timeout, context=context
            )
            sock = socket.create_connection((target.address, target.port), timeout=timeout)
            connection.sock = context.wrap_socket(sock, server_hostname=target.host)
        else:
            connection = http.client.HTTPConnection(target.address, target.port, timeout=timeout)
        host = target.host if target.port in (80, 443) else f"{target.host}:{target.port}"
        connection.request("POST", target.path, body=body, headers={**headers, "Host": host})
        status = connection.getresponse().status
        connection.close()
        return Response(status, int((time.monotonic() - started) * 1000))
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        elapsed = int((time.monotonic() - started) * 1000)
        return Response(None, elapsed, f"{exc.__class__.__name__}: {exc}")


class DeliveryFailed(Exception):
    """Raised by the delivery job so that RQ retries it later."""


def deliver(delivery_id: str, *, final: bool = True) -> bool:
    """One attempt: re-check the URL, sign anew, POST; True on a 2xx. Raises DeliveryFailed
    when it failed and another attempt will follow."""
    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != DeliveryStatus.PENDING:
        return False
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    try:
        target = check_url(delivery.webhook.url)
    except UnsafeURL as exc:
        delivery.record_attempt(
            status_code=None, duration_ms=0, error=f"refused: {exc}", final=True
        )
        return False
    headers = signed_headers(delivery.webhook.secret, delivery.id, body)
    response = post(target, body, headers, timeout=settings.AIMOS_WEBHOOK_TIMEOUT_SECONDS)
    error = response.error or ("" if response.ok else f"HTTP {response.status}")
    delivery.record_attempt(
        status_code=response.status, duration_ms=response.duration_ms, error=error, final=final
    )
    if not response.ok and not final:
        raise DeliveryFailed(error)
    return response.ok
