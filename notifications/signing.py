"""Signing webhooks the Standard Webhooks way, and the receiver's check.

Signature: `webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, keyed
by the webhook's secret (`whsec_<base64>`), sent with `webhook-id` and `webhook-timestamp`
and made anew for every attempt. `verify()` is the receiver's side.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

SECRET_PREFIX = "whsec_"
TOLERANCE_SECONDS = 300


class InvalidSignature(ValueError):
    """A webhook whose signature or timestamp does not check out."""


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
