"""The SSRF guard: which destinations a webhook delivery may reach.

URLs whose host resolves to loopback, private, link-local, unique-local, unspecified,
multicast or reserved addresses (IPv4 and IPv6, IPv4-mapped, decimal-encoded IPs and names
that resolve to them) are refused, at registration and again at each delivery; the request
then goes to the address that was checked (never re-resolved, see `delivery.post`).
`AIMOS_WEBHOOK_ALLOW_PRIVATE=1` lifts the rule for local development.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings


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
