"""The SSRF guard: which destinations a webhook delivery may reach.

URLs whose host resolves to loopback, private, link-local, unique-local, unspecified,
multicast or reserved addresses (IPv4 and IPv6, IPv4-mapped and -compatible, 6to4, NAT64,
Teredo, decimal-encoded IPs and names that resolve to them) are refused, at registration and
again at each delivery; the request then goes to the address that was checked (never
re-resolved, see `delivery.post`). `AIMOS_WEBHOOK_ALLOW_PRIVATE=1` lifts the rule for local
development, except for link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10,
fd00:ec2::254, 100.100.100.200) and tunnelled forms (6to4, NAT64, Teredo) of non-public IPv4
addresses, which stay refused always.

Which addresses are public is `sandbox.egress.refusal`'s rule, the one the sandboxes follow.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from sandbox.egress import embedded_ipv4
from sandbox.egress import refusal as non_public


class UnsafeURL(ValueError):
    """The URL may not receive webhooks (bad form, or an address that is not public)."""


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to `address`, speak to `host`."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Never reachable, even with AIMOS_WEBHOOK_ALLOW_PRIVATE: instance metadata services.
_METADATA = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
    ipaddress.ip_network("100.100.100.200/32"),
)


def refusal(address: Address, *, allow_private: bool) -> str | None:
    """Why a webhook may not go to `address`, or None when it may. What is public is decided
    by `sandbox.egress.refusal`, the rule the sandboxes' egress proxy follows."""
    if non_public(address) is None:
        return None
    if not allow_private:
        return f"The host resolves to a non-public address ({address})"
    inner = embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
    if any(c is not None and c in net for c in (address, inner) for net in _METADATA):
        return f"{address} is a link-local or cloud metadata address"
    if (
        isinstance(address, ipaddress.IPv6Address)
        and address.ipv4_mapped is None
        and (inner is not None or address.teredo is not None)
    ):
        return f"{address} carries the non-public address {inner or address.teredo[1]}"
    return None


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
    for address in addresses:
        why = refusal(address, allow_private=allow_private)
        if why:
            raise UnsafeURL(why)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, parts.hostname, port, path, str(addresses[0]))
