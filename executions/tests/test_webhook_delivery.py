"""Webhook signing, the SSRF guard and delivery with retries to a real local receiver."""

import http.server
import json
import threading
import time

import pytest

from executions import webhooks
from executions.models import WebhookDelivery


class Receiver:
    """A local HTTP server that answers with the statuses it is given, then 200."""

    def __init__(self, statuses=()) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks?x=1"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


# --- signing --------------------------------------------------------------


def test_signature_verifies_and_a_changed_body_does_not():
    secret = webhooks.new_secret()
    body = b'{"type":"execution.completed"}'
    headers = webhooks.signed_headers(secret, "msg_1", body)
    assert webhooks.verify(secret, headers, body) == {"type": "execution.completed"}
    with pytest.raises(webhooks.InvalidSignature):
        webhooks.verify(secret, headers, body + b" ")
    with pytest.raises(webhooks.InvalidSignature):
        webhooks.verify(webhooks.new_secret(), headers, body)


def test_verify_rejects_timestamps_more_than_five_minutes_off():
    secret = webhooks.new_secret()
    body = b"{}"
    old = webhooks.signed_headers(secret, "msg_1", body, timestamp=int(time.time()) - 301)
    future = webhooks.signed_headers(secret, "msg_1", body, timestamp=int(time.time()) + 301)
    for headers in (old, future):
        with pytest.raises(webhooks.InvalidSignature, match="timestamp"):
            webhooks.verify(secret, headers, body)
    recent = webhooks.signed_headers(secret, "msg_1", body, timestamp=int(time.time()) - 299)
    assert webhooks.verify(secret, recent, body) == {}


def test_the_signature_follows_the_standard_webhooks_scheme():
    import base64
    import hashlib
    import hmac

    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    expected = base64.b64encode(
        hmac.new(b"k" * 24, b"msg_2.1700000000.{}", hashlib.sha256).digest()
    ).decode()
    assert webhooks.sign(secret, "msg_2", 1700000000, b"{}") == f"v1,{expected}"


# --- the guard --------------------------------------------------------------

REFUSED = [
    "http://127.0.0.1/",
    "http://localhost:8000/",
    "http://2130706433/",  # 127.0.0.1, decimal-encoded
    "http://0x7f000001/",
    "http://0.0.0.0/",
    "http://10.0.0.5/",
    "http://172.16.3.4/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/",
    "http://[fd00::1]/",
    "http://[fe80::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::]/",
    "ftp://example.com/",
    "http://user:pw@example.com/",
    "not a url",
]


@pytest.mark.parametrize("url", REFUSED)
def test_non_public_destinations_are_refused(url):
    with pytest.raises(webhooks.UnsafeURL):
        webhooks.check_url(url, allow_private=False)


def test_a_public_address_passes_and_is_the_address_used():
    target = webhooks.check_url("https://93.184.216.34:8443/in?a=b", allow_private=False)
    assert (target.address, target.port, target.path) == ("93.184.216.34", 8443, "/in?a=b")


# --- delivery --------------------------------------------------------------


@pytest.fixture
def hook_settings(settings):
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = True
    settings.AIMOS_WEBHOOK_RETRY_DELAYS = [0, 0, 0]
    return settings


@pytest.mark.django_db(transaction=True)
def test_an_event_is_delivered_signed_to_a_local_receiver(
    owner, receiver, hook_settings, drain_queues
):
    hook = webhooks.create_webhook(owner, url=receiver.url, events=["execution.completed"])
    webhooks.dispatch(
        owner.pk, "execution.completed", {"execution_id": "e1", "status": "completed"}
    )
    webhooks.dispatch(owner.pk, "agent.created", {"agent_id": "a1"})  # not wanted by the hook
    drain_queues()
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    payload = webhooks.verify(hook.secret, headers, body)
    assert payload["type"] == "execution.completed"
    assert payload["data"] == {"execution_id": "e1", "status": "completed"}
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "succeeded"
    assert headers["webhook-id"] == delivery.id
    assert delivery.log[0]["status_code"] == 200


@pytest.mark.django_db(transaction=True)
def test_a_failed_delivery_is_retried_and_signed_anew(owner, hook_settings, drain_queues):
    receiver = Receiver(statuses=[500, 503])
    try:
        hook = webhooks.create_webhook(owner, url=receiver.url, events=["*"])
        webhooks.dispatch(owner.pk, "build.completed", {"version": "v1"})
        drain_queues()
    finally:
        receiver.close()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "succeeded"
    assert [entry["status_code"] for entry in delivery.log] == [500, 503, 200]
    assert len(receiver.requests) == 3
    for headers, body in receiver.requests:
        assert webhooks.verify(hook.secret, headers, body)["type"] == "build.completed"
        assert headers["webhook-id"] == delivery.id


@pytest.mark.django_db(transaction=True)
def test_a_delivery_failing_every_time_ends_failed_with_its_log(owner, hook_settings, drain_queues):
    receiver = Receiver(statuses=[500] * 10)
    try:
        webhooks.create_webhook(owner, url=receiver.url, events=["*"])
        webhooks.dispatch(owner.pk, "agent.created", {})
        drain_queues()
    finally:
        receiver.close()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed"
    assert delivery.attempts == 4  # the first try and three retries
    assert delivery.error == "HTTP 500"


@pytest.mark.django_db(transaction=True)
def test_delivery_to_a_private_address_is_refused_when_not_allowed(
    owner, settings, receiver, drain_queues
):
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = True
    webhooks.create_webhook(owner, url=receiver.url, events=["*"])
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = False  # e.g. the name now resolves elsewhere
    webhooks.dispatch(owner.pk, "agent.created", {})
    drain_queues()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed"
    assert delivery.error.startswith("refused")
    assert receiver.requests == []


@pytest.mark.django_db
def test_registering_a_private_url_is_refused(owner, settings):
    settings.AIMOS_WEBHOOK_ALLOW_PRIVATE = False
    from core.errors import ServiceError

    with pytest.raises(ServiceError) as error:
        webhooks.create_webhook(owner, url="http://127.0.0.1:9/x", events=["*"])
    assert error.value.errors[0]["field"] == "url"


def test_the_receiver_side_helper_reads_the_json_payload():
    secret = webhooks.new_secret()
    body = json.dumps({"type": "x", "data": {"a": 1}}).encode()
    assert webhooks.verify(secret, webhooks.signed_headers(secret, "m", body), body)["data"] == {
        "a": 1
    }


@pytest.mark.django_db(transaction=True)
def test_a_finished_run_is_told_to_the_webhook(owner, receiver, hook_settings, drain_queues):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from agents import services as agents
    from agents.tests.packages import example_files, pack_files
    from executions import services

    hook = webhooks.create_webhook(owner, url=receiver.url, events=["execution.completed"])
    agent = agents.create_agent(owner, name="echo")
    agents.create_version(agent, SimpleUploadedFile("e.tar.gz", pack_files(example_files("echo"))))
    drain_queues()
    agent.refresh_from_db()
    execution = services.start_execution(owner, agent, input={"ping": 1})
    drain_queues()
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    payload = webhooks.verify(hook.secret, headers, body)
    assert payload["type"] == "execution.completed"
    assert payload["data"]["execution_id"] == str(execution.pk)
    assert payload["data"]["status"] == "completed"
