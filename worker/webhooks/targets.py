"""Which webhook URLs we may call: public addresses only, unless private ones are allowed.

An address is refused unless it is globally routable: private, loopback, link-local
(cloud metadata at 169.254.169.254), shared (100.64.0.0/10, e.g. 100.100.100.200), reserved,
multicast and unspecified ranges all are. IPv4 addresses embedded in IPv6 (``::ffff:a.b.c.d``,
6to4, NAT64 ``64:ff9b::/96``) are judged as the IPv4 address they lead to.

A name is resolved once per attempt (:func:`resolve_target`) and the connection goes to the
address that was checked, so a name that answers differently the second time (DNS rebinding)
cannot lead us elsewhere. Messages never name a resolved address: callers see them.

    TargetRefused          malformed URL, or a forbidden address (permanent)
    └── TargetUnresolved   the name does not resolve now (DNS may recover: retry a delivery)
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[IPAddress]]
"""``(host, port) -> addresses``; raises ``OSError`` (``socket.gaierror``) when it cannot."""
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
NOT_ALLOWED = "target not allowed: resolves to a private, loopback or link-local address"


class TargetRefused(ValueError):
    """The URL is malformed or resolves to an address we must not call."""


class TargetUnresolved(TargetRefused):
    """The URL's host name does not resolve (now)."""


class Target(NamedTuple):
    """Where one attempt connects: the URL's host and port, and the one address checked."""

    host: str
    port: int
    address: IPAddress


def system_resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses ``getaddrinfo`` gives for ``host`` (TCP), in its order."""
    infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def forbidden(ip: IPAddress) -> bool:
    """Whether ``ip`` is not a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return forbidden(embedded)
    return not ip.is_global or ip.is_multicast or ip.is_unspecified or ip.is_reserved


def check_url_shape(url: str) -> tuple[str, int]:
    """Host and port of an http(s) URL, or ``TargetRefused``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"url is malformed: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused("url must be an absolute http:// or https:// URL")
    if port == 0:
        raise TargetRefused("url port must be between 1 and 65535")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def resolve_target(url: str, *, allow_private: bool, resolve: Resolver = system_resolve) -> Target:
    """Resolve ``url``'s host once and pick the address to connect to, or refuse.

    Every address the name resolves to is checked (a name with one public and one private
    record is refused too); the first one is the one to connect to.
    """
    host, port = check_url_shape(url)
    try:
        addresses = list(resolve(host, port))
    except (OSError, UnicodeError, ValueError) as exc:
        raise TargetUnresolved("target not allowed: host does not resolve") from exc
    if not addresses:
        raise TargetUnresolved("target not allowed: host does not resolve")
    if not allow_private and any(forbidden(ip) for ip in addresses):
        raise TargetRefused(NOT_ALLOWED)
    return Target(host, port, addresses[0])


def check_target(url: str, allow_private: bool, *, resolve: Resolver = system_resolve) -> None:
    """Refuse ``url`` at registration like :func:`resolve_target` would at delivery.

    With private targets allowed only the URL's shape is checked (a name may resolve later).
    """
    if allow_private:
        check_url_shape(url)
        return
    resolve_target(url, allow_private=False, resolve=resolve)


def redact_url(url: str) -> str:
    """``url`` without userinfo, query or fragment: safe to log."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<malformed url>"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))
