"""The webhook SSRF guard: which addresses and URLs are refused."""

from __future__ import annotations

import ipaddress

import pytest

from worker.webhooks.targets import TargetRefused, check_target, check_url_shape, forbidden


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.0.1",
        "169.254.169.254",
        "100.100.100.200",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",
        "64:ff9b::a00:1",
        "::",
    ],
)
def test_internal_addresses_are_forbidden(address: str) -> None:
    """Private, loopback, link-local, shared, reserved and embedded-IPv4 addresses are refused."""
    assert forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "64:ff9b::808:808"])
def test_public_addresses_are_allowed(address: str) -> None:
    """Globally routable unicast addresses pass."""
    assert not forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "http:///x",
        "http://[::1",
        "//x/y",
        "http://example.com:99999/",
        "example.com/hook",
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    """URLs that are not absolute http(s) URLs are refused before any lookup."""
    with pytest.raises(TargetRefused):
        check_url_shape(url)


def test_private_targets_pass_only_when_allowed() -> None:
    """A loopback URL is refused unless private targets are allowed."""
    with pytest.raises(TargetRefused):
        check_target("http://127.0.0.1:8080/hook", allow_private=False)
    check_target("http://127.0.0.1:8080/hook", allow_private=True)
