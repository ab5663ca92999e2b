"""Which webhook URLs we may call: no private, loopback or link-local targets unless allowed."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class TargetRefused(ValueError):
    """The URL is malformed or resolves to an address we must not call."""


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def check_url_shape(url: str) -> tuple[str, int]:
    """Host and port of an http(s) URL, or ``TargetRefused``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused("url must be an absolute http:// or https:// URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise TargetRefused("url has an invalid port") from exc
    return parts.hostname, port


def check_target(url: str, allow_private: bool) -> None:
    """Refuse ``url`` if any address it resolves to is private/loopback/link-local.

    Every resolved address is checked, so a name with one public and one private record is
    refused too.
    """
    host, port = check_url_shape(url)
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise TargetRefused(f"cannot resolve {host}: {exc.strerror}") from exc
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if _forbidden(ip):
            raise TargetRefused(
                f"{host} resolves to {ip}, a private/loopback/link-local address "
                "(set ORDERS_WEBHOOK_ALLOW_PRIVATE=true to allow)"
            )
