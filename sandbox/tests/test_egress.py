"""The egress policy and proxy on their own: which destinations are refused, and why.

Nothing here connects outside this machine: refusals are decided before any connection, and
the one relay test talks to a server on loopback through a policy made for it.
"""

from __future__ import annotations

import ipaddress
import socket
import threading

import pytest

from sandbox.egress import Decision, EgressPolicy, EgressProxy, host_addresses, refusal

NEVER = [
    "127.0.0.1",
    "127.8.9.10",
    "0.0.0.0",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "100.127.255.254",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:c0a8:101::",  # 6to4 of 192.168.1.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::a00:1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:db8::1",
]
# Public addresses (documentation of well-known services): judged, never connected to.
PUBLIC = [
    "93.184.215.14",
    "151.101.0.223",
    "2a04:4e42::223",
    "2002:5db8:d70e::",
    "64:ff9b::5db8:d70e",
]


def no_resolver(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} should not have been resolved")


@pytest.mark.parametrize("address", NEVER)
def test_non_public_addresses_are_refused_in_every_form(address):
    why = refusal(ipaddress.ip_address(address))
    assert why is not None, address
    decision = EgressPolicy.for_run(resolver=no_resolver).decide(address, 443)
    assert not decision.allowed and decision.addresses == ()


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed_to_runs(address):
    assert refusal(ipaddress.ip_address(address)) is None
    decision = EgressPolicy.for_run(resolver=no_resolver).decide(f"[{address}]", 443)
    assert decision.allowed and decision.addresses == (ipaddress.ip_address(address),)


def test_the_hosts_own_addresses_are_refused_even_when_public():
    own = {ipaddress.ip_address("93.184.215.14")}
    assert "address of this host" in refusal(ipaddress.ip_address("93.184.215.14"), own)
    policy = EgressPolicy.for_run(resolver=no_resolver).with_host_addresses()
    for address in host_addresses():
        assert not policy.decide(str(address), 443).allowed


def test_a_name_is_refused_when_any_of_its_addresses_is_not_public():
    def rebinding(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "169.254.169.254"]

    decision = EgressPolicy.for_run(resolver=rebinding).decide("metadata.example", 80)
    assert decision == Decision(False, "metadata.example: 169.254.169.254 is link-local "
                                "(cloud metadata lives there)")  # fmt: skip


def test_names_of_this_host_resolve_to_refused_addresses():
    policy = EgressPolicy.for_run().with_host_addresses()
    assert policy.decide("localhost", 6379).reason.startswith("localhost: 127.0.0.1 ")
    assert not policy.decide(socket.gethostname(), 5432).allowed


def test_a_build_reaches_only_the_index_hosts_by_name():
    resolved = []

    def resolver(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["151.101.0.223"]

    policy = EgressPolicy.for_build(["pypi.org", "Files.PythonHosted.org"], resolver=resolver)
    assert policy.decide("pypi.org", 443).allowed
    assert policy.decide("files.pythonhosted.org.", 443).allowed
    assert "not a package index host" in policy.decide("evil.example", 443).reason
    assert "not a package index host" in policy.decide("151.101.0.223", 443).reason
    assert "not allowed" in policy.decide("pypi.org", 6379).reason
    assert resolved == ["pypi.org", "files.pythonhosted.org"]


def test_a_listed_index_host_that_resolves_to_a_private_address_is_refused():
    policy = EgressPolicy.for_build(["pypi.org"], resolver=lambda host, port: ["10.1.2.3"])
    assert "private" in policy.decide("pypi.org", 443).reason


def test_malformed_destinations_are_refused():
    policy = EgressPolicy.for_run(resolver=no_resolver)
    for host in ("", "a b", "x\r\nHost: y", "-lead.example", "a" * 300):
        assert not policy.decide(host, 443).allowed
    assert not policy.decide("93.184.215.14", 0).allowed
    assert not policy.decide("93.184.215.14", 70000).allowed


# --- the proxy -------------------------------------------------------------------------


def ask(path, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_proxy_answers_403_with_the_reason_and_reports_the_refusal(tmp_path):
    refused: list[str] = []
    policy = EgressPolicy.for_run(resolver=no_resolver).with_host_addresses()
    with EgressProxy(tmp_path / "egress.sock", policy, on_refusal=refused.append) as proxy:
        answer = ask(proxy.path, b"CONNECT 169.254.169.254:80 HTTP/1.1\r\nHost: x\r\n\r\n")
        plain = ask(proxy.path, b"GET http://127.0.0.1:6379/ HTTP/1.1\r\nHost: x\r\n\r\n")
        junk = ask(proxy.path, b"GET /relative HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 403 ") and b"link-local" in answer
    assert plain.startswith(b"HTTP/1.1 403 ") and b"loopback" in plain
    assert junk.startswith(b"HTTP/1.1 400 ")
    assert refused == [
        "CONNECT 169.254.169.254:80 refused: 169.254.169.254 is link-local "
        "(cloud metadata lives there)",
        "GET 127.0.0.1:6379 refused: 127.0.0.1 is a loopback address",
    ]
    assert not proxy.path.exists()


class LoopbackForTests(EgressPolicy):
    """Lets the relay be tested against a server of this test (real policies never allow
    loopback)."""

    def decide(self, host: str, port: int) -> Decision:
        return Decision(True, "allowed", (ipaddress.ip_address("127.0.0.1"),))


def test_the_proxy_relays_an_allowed_connection_both_ways(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data.upper())

    threading.Thread(target=echo, daemon=True).start()
    with EgressProxy(tmp_path / "egress.sock", LoopbackForTests()) as proxy:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(proxy.path))
            sock.sendall(f"CONNECT public.example:{port} HTTP/1.1\r\n\r\n".encode())
            assert sock.recv(1024) == b"HTTP/1.1 200 Connection established\r\n\r\n"
            sock.sendall(b"hello")
            assert sock.recv(1024) == b"HELLO"
    server.close()
