"""Webhooks: signing the Standard Webhooks way, the SSRF guard, and delivery.

Signature: `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, keyed
by the webhook's secret (`whsec_<base64>`), sent with `webhook-id` and `webhook-timestamp`
and made anew for every attempt. `verify()` is the receiver's side.

The guard refuses URLs whose host resolves to loopback, private, link-local, unique-local,
unspecified, multicast or reserved addresses (IPv4 and IPv6, decimal-encoded IPs and names
that resolve to them), at registration and again at each delivery, and the request goes to
the address that was checked (never re-resolved) and follows no redirect.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import secrets
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 300


class UnsafeURL(ValueError):
    """The URL may not receive webhooks (bad form, or an address that is not public)."""


class InvalidSignature(ValueError):
    """A webhook whose signature or timestamp does not check out."""


# --- Signing -------------------------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, message_id: str, body: bytes, timestamp: int | None = None) -> dict:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
        "content-type": "application/json",
        "user-agent": "AIMOS-Webhooks/1",
    }


def verify(secret: str, headers, body: bytes, *, tolerance: int = TOLERANCE_SECONDS) -> dict:
    """The receiver's check: the payload as a dict when the signature matches and the
    timestamp is within `tolerance` seconds of now, else InvalidSignature."""
    lowered = {key.lower(): value for key, value in dict(headers).items()}
    try:
        message_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        signatures = lowered["webhook-signature"].split()
    except (KeyError, ValueError):
        raise InvalidSignature("missing or malformed webhook headers") from None
    if abs(time.time() - timestamp) > tolerance:
        raise InvalidSignature("timestamp too far from now")
    expected = sign(secret, message_id, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise InvalidSignature("signature does not match")
    return json.loads(body)


# --- The guard ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to `address`, speak to `host`."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
        or not address.is_global
    )


def check_url(url: str, *, allow_private: bool | None = None) -> Target:
    """Where a delivery to `url` may go, or UnsafeURL saying why not."""
    if allow_private is None:
        allow_private = settings.AIMOS_WEBHOOK_ALLOW_PRIVATE
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeURL("The URL must be http:// or https:// with a host")
    if parts.username or parts.password:
        raise UnsafeURL("The URL must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeURL("The URL's port is not valid") from None
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UnsafeURL(f"The host {parts.hostname!r} does not resolve") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not allow_private:
        for address in addresses:
            if not _is_public(address):
                raise UnsafeURL(f"The host resolves to a non-public address ({address})")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, parts.hostname, port, path, str(addresses[0]))


# --- Delivery -------------------------------------------------------------------------------------


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


# --- Use cases -----------------------------------------------------------------------------------

EVENTS = (
    "agent.created",
    "build.started",
    "build.completed",
    "build.failed",
    "execution.started",
    "execution.completed",
    "execution.failed",
    "execution.cancelled",
    "execution.timed_out",
    "batch.completed",
)


def _errors(field: str, message: str):
    from core.errors import ServiceError

    return ServiceError(
        "Invalid webhook", code="validation_error", errors=[{"field": field, "message": message}]
    )


def check_events(events) -> list[str]:
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise _errors("events", 'A non-empty list of event names, or ["*"].')
    unknown = sorted(set(events) - set(EVENTS) - {"*"})
    if unknown:
        raise _errors(
            "events", f"Unknown events: {', '.join(unknown)}. Known: {', '.join(EVENTS)}."
        )
    return sorted(set(events))


def check_target(url: str) -> None:
    try:
        check_url(url)
    except UnsafeURL as exc:
        raise _errors("url", str(exc)) from None


def access_webhook(user, webhook_id):
    from django.core.exceptions import ValidationError

    from core.errors import NotFound
    from executions.models import Webhook

    try:
        return Webhook.objects.for_user(user).get(pk=webhook_id)
    except (Webhook.DoesNotExist, ValidationError, ValueError):
        raise NotFound("Webhook not found") from None


def access_delivery(webhook, delivery_id):
    from core.errors import NotFound

    delivery = webhook.deliveries.filter(pk=str(delivery_id)).first()
    if delivery is None:
        raise NotFound("Delivery not found")
    return delivery


def create_webhook(user, *, url: str, events, description: str = "", is_active: bool = True):
    """A new webhook; returns it with its secret (shown once)."""
    from executions.models import Webhook

    check_target(url)
    webhook = Webhook.objects.create(
        user=user,
        url=url,
        events=check_events(events),
        description=description,
        is_active=is_active,
        secret=new_secret(),
    )
    return webhook


def update_webhook(webhook, **changes):
    if "url" in changes:
        check_target(changes["url"])
    if "events" in changes:
        changes["events"] = check_events(changes["events"])
    for field, value in changes.items():
        setattr(webhook, field, value)
    webhook.save()
    return webhook


def delete_webhook(webhook) -> None:
    """Forget the webhook and its deliveries; queued attempts find nothing and stop."""
    webhook.delete()


def dispatch(user_id, event: str, data: dict) -> None:
    """After the current transaction commits, send `event` to every webhook of the user that
    wants it: one delivery row each, delivered by a job with retries."""
    from django.db import transaction

    transaction.on_commit(lambda: _dispatch_now(user_id, event, data))


def _dispatch_now(user_id, event: str, data: dict) -> None:
    try:
        _create_deliveries(user_id, event, data)
    except Exception:  # the happening is recorded either way; never fail its transaction's caller
        logger.exception("could not queue webhook deliveries of %s", event)


def _create_deliveries(user_id, event: str, data: dict) -> None:
    import uuid

    from django.utils import timezone

    from executions.models import Webhook, WebhookDelivery

    hooks = [
        hook
        for hook in Webhook.objects.filter(user_id=user_id, is_active=True)
        if hook.wants(event)
    ]
    for hook in hooks:
        message_id = f"msg_{uuid.uuid4().hex}"
        payload = {
            "type": event,
            "event": event,
            "timestamp": timezone.now().isoformat(),
            "data": data,
        }
        WebhookDelivery.objects.create(id=message_id, webhook=hook, event=event, payload=payload)
        enqueue_delivery(message_id)


def enqueue_delivery(delivery_id: str) -> None:
    import django_rq
    from rq import Retry

    from executions import jobs

    delays = settings.AIMOS_WEBHOOK_RETRY_DELAYS
    django_rq.get_queue("default").enqueue(
        jobs.deliver_webhook,
        str(delivery_id),
        retry=Retry(max=len(delays), interval=delays) if delays else None,
        job_timeout=int(settings.AIMOS_WEBHOOK_TIMEOUT_SECONDS) + 30,
    )


class DeliveryFailed(Exception):
    """Raised by the delivery job so that RQ retries it later."""


def deliver(delivery_id: str, *, final: bool = True) -> bool:
    """One attempt: re-check the URL, sign anew, POST; True on a 2xx. Raises DeliveryFailed
    when it failed and another attempt will follow."""
    from executions.models import DeliveryStatus, WebhookDelivery

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


def redeliver(delivery) -> None:
    """Send an event again (a new series of attempts, same id and payload)."""
    delivery.reset()
    enqueue_delivery(delivery.pk)


def event_for(kind: str, data: dict) -> str | None:
    """The webhook event of a user-feed message (`aimos.feed`), or None when there is none."""
    status = data.get("status")
    if kind == "agent_created":
        return "agent.created"
    if kind == "build_started":
        return "build.started"
    if kind == "build_completed":
        return "build.completed" if status == "ready" else "build.failed"
    if kind == "execution_started" and "agent_ids" not in data:
        return "execution.started"
    if kind == "execution_completed" and "total_agents" in data:
        return "batch.completed"
    if kind in ("execution_completed", "agent_completed") and status:
        return "execution.completed" if status == "completed" else f"execution.{status}"
    return None
