"""The receiver's side of AIMOS webhooks: checking that a delivery is the platform's.

AIMOS signs each delivery attempt the Standard Webhooks way:

    webhook-id: <the delivery's id; the same on every retry, so de-duplicate by it>
    webhook-timestamp: <unix seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<raw body>">

keyed by the webhook's secret (`whsec_<base64 key>`, shown once when the webhook is made).
Check the raw body exactly as received, before parsing it.

    from aimos_client.webhooks import verify, WebhookVerificationError

    try:
        event = verify(request.body, request.headers, secret)
    except WebhookVerificationError:
        return 400
    event["type"], event["data"]
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from aimos_client.errors import AimosError

SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 300


class WebhookVerificationError(AimosError, ValueError):
    """The delivery's headers, timestamp or signature do not check out."""


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the secret is not a whsec_<base64> key") from None


def sign(secret: str, message_id: str, timestamp: int, payload: bytes) -> str:
    """The `webhook-signature` value AIMOS sends for this delivery."""
    signed = f"{message_id}.{timestamp}.".encode() + payload
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> dict[str, Any]:
    """The delivered event as a dict, when `payload` (the raw body) is signed with `secret`
    and its timestamp is within `tolerance` seconds of now; else WebhookVerificationError.

    `headers` may be any mapping (names in any case), e.g. a framework's request headers."""
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    lowered = {str(name).lower(): str(value) for name, value in dict(headers).items()}
    try:
        message_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        signatures = lowered["webhook-signature"].split()
    except (KeyError, ValueError):
        raise WebhookVerificationError("missing or malformed webhook headers") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("the timestamp is too far from now")
    expected = sign(secret, message_id, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise WebhookVerificationError("the signature does not match")
    try:
        event = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return event
