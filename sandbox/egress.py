"""Where a sandbox may connect: the egress policy and the proxy that enforces it.

No sandbox shares this host's network namespace. A sandbox that may reach the network (a
build, or a run whose manifest asks and whose server allows it) still has only a loopback
interface; its one way out is an HTTP proxy (`CONNECT host:port`, or a plain request in
absolute form) that lives in the worker process and listens on a Unix socket bind-mounted
into the sandbox (`sandbox/netbridge.py` relays the sandbox's `127.0.0.1:PROXY_PORT` to it).
The proxy decides each connection before it makes one:

- a build may reach only the package index hosts, by name (`EgressPolicy.for_build`);
- a run may reach any host whose every address is public (`EgressPolicy.for_run`);
- never: loopback, unspecified, this host's own addresses, private (RFC 1918, ULA),
  link-local (169.254.0.0/16 with cloud metadata, fe80::/10), CGNAT (100.64.0.0/10),
  multicast, reserved and documentation ranges, nor any IPv6 form that carries such an IPv4
  address (IPv4-mapped and -compatible, 6to4 2002::/16, NAT64 64:ff9b::/96 and
  64:ff9b:1::/48, Teredo 2001::/32).

A name is resolved here, every address it resolves to must pass, and the connection goes to
a checked address (no second lookup a rebinding DNS server could answer differently).
Abstract Unix sockets belong to a network namespace, so the sandbox's own namespace hides the
host's.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import select
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

logger = logging.getLogger("aimos.sandbox.egress")

PROXY_PORT = 3128  # where the sandbox's bridge listens, on its own loopback
SOCKET_NAME = "egress.sock"
HEAD_LIMIT = 16 * 1024
CONNECT_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 300.0
MAX_CONNECTIONS = 64

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_TEREDO = ipaddress.ip_network("2001::/32")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$")


def proxy_environment() -> dict[str, str]:
    """The variables that send a sandbox's HTTP clients (pip, urllib, requests, httpx)
    through its bridge to the proxy."""
    url = f"http://127.0.0.1:{PROXY_PORT}"
    variables = {}
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        variables[name] = variables[name.upper()] = url
    variables["no_proxy"] = variables["NO_PROXY"] = ""
    return variables


def host_addresses() -> set[Address]:
    """Every address assigned to an interface of this host."""
    import psutil

    found: set[Address] = set()
    for addresses in psutil.net_if_addrs().values():
        for entry in addresses:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    found.add(ipaddress.ip_address(entry.address.split("%", 1)[0]))
                except ValueError:
                    continue
    return found


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, compatible, 6to4, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in network for network in _NAT64) or (
        address in _V4_COMPATIBLE and int(address) > 1
    ):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: Address, own: Iterable[Address] = ()) -> str | None:
    """Why no sandbox may connect to `address`, or None when it is a public address.
    `own` is this host's addresses (refused whatever they are)."""
    why = _non_public(address)
    if why is None:
        forms = {address}
        if isinstance(address, ipaddress.IPv6Address) and embedded_ipv4(address) is not None:
            forms.add(embedded_ipv4(address))
        if forms & set(own):
            why = f"{address} is an address of this host"
    return why


def _non_public(address: Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address):
        if address in _TEREDO:
            return f"{address} is a Teredo address"
        inner = embedded_ipv4(address)
        if inner is not None:
            why = _non_public(inner)
            return f"{address} carries {inner}: {why}" if why else None
    if address.is_loopback:
        return f"{address} is a loopback address"
    if address.is_unspecified:
        return f"{address} is the unspecified address"
    if address.is_link_local:
        return f"{address} is link-local (cloud metadata lives there)"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return f"{address} is a shared (CGNAT) address"
    if address.is_multicast:
        return f"{address} is a multicast address"
    if address.is_private:
        return f"{address} is a private address"
    if address.is_reserved or not address.is_global:
        return f"{address} is not a public address"
    return None


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


@dataclass(frozen=True)
class Decision:
    """The proxy's verdict on one destination; `addresses` are the checked ones to use."""

    allowed: bool
    reason: str
    addresses: tuple[Address, ...] = ()


@dataclass(frozen=True)
class EgressPolicy:
    """Which destinations a sandbox may connect to. `hosts` None: any public host (a run);
    otherwise only those names (a build's package index)."""

    hosts: frozenset[str] | None = None
    ports: frozenset[int] | None = None
    own_addresses: frozenset[Address] = field(default_factory=frozenset)
    resolver: Resolver = _system_resolver

    @classmethod
    def for_build(cls, index_hosts: Iterable[str], **kwargs) -> EgressPolicy:
        hosts = frozenset(h.strip().lower().rstrip(".") for h in index_hosts if h.strip())
        return cls(hosts=hosts, ports=frozenset({80, 443}), **kwargs)

    @classmethod
    def for_run(cls, **kwargs) -> EgressPolicy:
        return cls(**kwargs)

    def with_host_addresses(self) -> EgressPolicy:
        """This policy, also refusing every address this host has now."""
        return replace(self, own_addresses=frozenset(host_addresses()))

    def decide(self, host: str, port: int) -> Decision:
        """May a sandbox connect to `host`:`port`? Resolves names; connects to nothing."""
        host = host.strip().lower()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not 0 < port < 65536:
            return Decision(False, f"port {port} is not a port")
        if self.ports is not None and port not in self.ports:
            return Decision(False, f"port {port} is not allowed here")
        try:
            literal: Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
            if not _HOST.match(host):
                return Decision(False, f"{host[:80]!r} is not a host name")
            host = host.rstrip(".")
        if literal is not None and refusal(literal, self.own_addresses) is not None:
            return Decision(False, refusal(literal, self.own_addresses))
        if self.hosts is not None and host not in self.hosts:
            allowed = ", ".join(sorted(self.hosts)) or "none"
            return Decision(False, f"{host} is not a package index host (allowed: {allowed})")
        if literal is not None:
            candidates = [literal]
        else:
            try:
                found = self.resolver(host, port)
                candidates = [ipaddress.ip_address(a.split("%", 1)[0]) for a in found]
            except (OSError, UnicodeError, ValueError) as exc:
                return Decision(False, f"{host} does not resolve ({exc})")
            if not candidates:
                return Decision(False, f"{host} does not resolve")
        for address in candidates:
            why = refusal(address, self.own_addresses)
            if why is not None:
                return Decision(False, f"{host}: {why}" if literal is None else why)
        return Decision(True, "allowed", tuple(candidates))


# --- the proxy ---------------------------------------------------------------------------


class EgressProxy:
    """An HTTP proxy on a Unix socket that lets one sandbox reach what its policy allows.

    `start()` listens at `path` (mode 0666: the sandbox's own uid connects), `close()` stops
    accepting and ends every connection. `on_refusal(text)` hears each refused destination
    (a build writes it to the build log).
    """

    def __init__(
        self,
        path: Path,
        policy: EgressPolicy,
        *,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.policy = policy
        self.on_refusal = on_refusal
        self._server: socket.socket | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()

    def start(self) -> EgressProxy:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.path.unlink(missing_ok=True)
            server.bind(str(self.path))
            os.chmod(self.path, 0o666)
            server.listen(MAX_CONNECTIONS)
        except BaseException:
            server.close()
            raise
        self._server = server
        threading.Thread(target=self._accept, name="egress-proxy", daemon=True).start()
        return self

    def close(self) -> None:
        self._closed.set()
        if self._server is not None:
            try:
                self._server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._server.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            close_socket(conn)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> EgressProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                if len(self._connections) >= MAX_CONNECTIONS:
                    client.close()
                    continue
                self._connections.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        try:
            client.settimeout(CONNECT_TIMEOUT_S)
            head, rest = _read_head(client)
            if head is None:
                _answer(client, 400, "the request is not HTTP")
                return
            parsed = _parse_request(head)
            if parsed is None:
                _answer(client, 400, "only CONNECT and absolute-form HTTP requests are proxied")
                return
            method, host, port, forward = parsed
            decision = self.policy.decide(host, port)
            if not decision.allowed:
                self._refused(f"{method} {host}:{port} refused: {decision.reason}")
                _answer(client, 403, decision.reason)
                return
            upstream = _connect(decision.addresses, port)
            if upstream is None:
                _answer(client, 502, f"{host}:{port} did not accept a connection")
                return
            with self._lock:
                self._connections.add(upstream)
            if method == "CONNECT":
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
            else:
                upstream.sendall(forward + rest)
            _relay(client, upstream, self._closed)
        except OSError:
            pass
        finally:
            with self._lock:
                self._connections.discard(client)
                if upstream is not None:
                    self._connections.discard(upstream)
            close_socket(client)
            if upstream is not None:
                close_socket(upstream)

    def _refused(self, text: str) -> None:
        logger.info("sandbox egress %s", text)
        if self.on_refusal is not None:
            try:
                self.on_refusal(text)
            except Exception:  # noqa: BLE001 — a log sink must not break the proxy
                logger.exception("egress refusal hook failed")


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > HEAD_LIMIT:
            return None, b""
        chunk = sock.recv(4096)
        if not chunk:
            return None, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _split_host_port(authority: str, default: int) -> tuple[str, int] | None:
    if authority.startswith("["):
        host, _, tail = authority[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = authority.rpartition(":") if ":" in authority else (authority, "", "")
    if not port_text:
        return host, default
    if not port_text.isdigit():
        return None
    return host, int(port_text)


def _parse_request(head: bytes) -> tuple[str, str, int, bytes] | None:
    """(method, host, port, request head to forward) of a proxy request, or None."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/1."):
        return None
    if method == "CONNECT":
        found = _split_host_port(target, 443)
        return None if found is None else (method, found[0], found[1], b"")
    if not target.lower().startswith("http://"):
        return None
    authority, _, path = target[7:].partition("/")
    found = _split_host_port(authority.rpartition("@")[2], 80)
    if found is None or not re.fullmatch(r"[A-Z]{3,10}", method):
        return None
    headers = [
        line
        for line in lines[1:]
        if line.split(":", 1)[0].strip().lower()
        not in ("proxy-connection", "proxy-authorization", "connection", "keep-alive")
    ]
    forward = "\r\n".join([f"{method} /{path} {version}", *headers, "Connection: close", "", ""])
    return method, found[0], found[1], forward.encode("latin-1")


def _answer(sock: socket.socket, status: int, reason: str) -> None:
    titles = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}
    body = (reason + "\n").encode("utf-8", "replace")
    head = (
        f"HTTP/1.1 {status} {titles[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nX-Aimos-Egress: refused\r\nConnection: close\r\n\r\n"
    )
    try:
        sock.sendall(head.encode() + body)
    except OSError:
        pass


def _connect(addresses: Iterable[Address], port: int) -> socket.socket | None:
    for address in addresses:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect((str(address), port))
        except OSError:
            sock.close()
            continue
        return sock
    return None


def _relay(a: socket.socket, b: socket.socket, closed: threading.Event) -> None:
    """Copy both ways until either side closes, nothing moves for IDLE_TIMEOUT_S, or the
    proxy closes."""
    a.settimeout(None)
    b.settimeout(None)
    peers = {a: b, b: a}
    open_ends = {a, b}
    while open_ends and not closed.is_set():
        ready, _, _ = select.select(list(open_ends), [], [], IDLE_TIMEOUT_S)
        if not ready:
            return
        for sock in ready:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                open_ends.discard(sock)
                try:
                    peers[sock].shutdown(socket.SHUT_WR)
                except OSError:
                    return
                continue
            try:
                peers[sock].sendall(data)
            except OSError:
                return


def close_socket(sock: socket.socket) -> None:
    """Shut both ways (waking a reader blocked on it), then close."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
