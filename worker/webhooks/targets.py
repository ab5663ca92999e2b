"""Which webhook URLs we may call: public addresses only, unless private ones are allowed.

An address is refused unless it is globally routable: private, loopback, link-local
(cloud metadata at 169.254.169.254), shared (100.64.0.0/10, e.g. 100.100.100.200), reserved,
multicast and unspecified ranges all are. IPv4 addresses embedded in IPv6 (``::ffff:a.b.c.d``,
6to4, NAT64 ``64:ff9b::/96``) are judged as the IPv4 address they lead to.

    TargetRefused          malformed URL, or a forbidden address (permanent)
    └── TargetUnresolved   the name does not resolve now (DNS may recover: retry a delivery)
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class TargetRefused(ValueError):
    """The URL is malformed or resolves to an address we must not call."""


class TargetUnresolved(TargetRefused):
    """The URL's host name does not resolve (now)."""


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
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise TargetRefused(f"url is malformed: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused("url must be an absolute http:// or https:// URL")
    return parts.hostname, port


def check_target(url: str, allow_private: bool) -> None:
    """Refuse ``url`` if any address it resolves to is forbidden (see the module docstring).

    Every resolved address is checked, so a name with one public and one private record is
    refused too.
    """
    host, port = check_url_shape(url)
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise TargetUnresolved(f"cannot resolve {host}: {reason}") from exc
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if forbidden(ip):
            raise TargetRefused(
                f"{host} resolves to {ip}, a private/loopback/link-local address "
                "(set ORDERS_WEBHOOK_ALLOW_PRIVATE=true to allow)"
            )
