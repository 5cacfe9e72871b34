"""Signing the Standard Webhooks way, and the receiver's check."""

import json
import time

import pytest

from notifications import signing


def test_signature_verifies_and_a_changed_body_does_not():
    secret = signing.new_secret()
    body = b'{"type":"execution.completed"}'
    headers = signing.signed_headers(secret, "msg_1", body)
    assert signing.verify(secret, headers, body) == {"type": "execution.completed"}
    with pytest.raises(signing.InvalidSignature):
        signing.verify(secret, headers, body + b" ")
    with pytest.raises(signing.InvalidSignature):
        signing.verify(signing.new_secret(), headers, body)


def test_verify_rejects_timestamps_more_than_five_minutes_off():
    secret = signing.new_secret()
    body = b"{}"
    old = signing.signed_headers(secret, "msg_1", body, timestamp=int(time.time()) - 301)
    future = signing.signed_headers(secret, "msg_1", body, timestamp=int(time.time()) + 301)
    for headers in (old, future):
        with pytest.raises(signing.InvalidSignature, match="timestamp"):
            signing.verify(secret, headers, body)
    recent = signing.signed_headers(secret, "msg_1", body, timestamp=int(time.time()) - 299)
    assert signing.verify(secret, recent, body) == {}


def test_the_signature_follows_the_standard_webhooks_scheme():
    import base64
    import hashlib
    import hmac

    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    expected = base64.b64encode(
        hmac.new(b"k" * 24, b"msg_2.1700000000.{}", hashlib.sha256).digest()
    ).decode()
    assert signing.sign(secret, "msg_2", 1700000000, b"{}") == f"v1,{expected}"


def test_the_receiver_side_helper_reads_the_json_payload():
    secret = signing.new_secret()
    body = json.dumps({"type": "x", "data": {"a": 1}}).encode()
    assert signing.verify(secret, signing.signed_headers(secret, "m", body), body)["data"] == {
        "a": 1
    }
