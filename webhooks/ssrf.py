"""The SSRF guard: a webhook may only reach public addresses.

Checked when a webhook is saved (the URL, and every address its host resolves
to) and again at each delivery, after resolving the name once more: the delivery
then connects to the very address that was checked (``webhooks.sender``), so a
name that resolves differently the second time (DNS rebinding) cannot switch it
to an internal one. ``FLOWSITE_WEBHOOK_ALLOW_PRIVATE`` turns the address checks
off (development and tests); the URL's shape is always checked.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

ALLOWED_SCHEMES = ("http", "https")
# Shared address space of carrier-grade NAT (RFC 6598): not in ``is_private``.
CGNAT = ipaddress.ip_network("100.64.0.0/10")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeTarget(ValueError):
    """A webhook URL Flowsite refuses to call; the message says why."""


@dataclass(frozen=True)
class Target:
    """A checked URL: connect to ``address``, and name ``host`` in the Host header and TLS."""

    scheme: str
    host: str
    port: int
    path: str
    address: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def check_url(url: str) -> tuple[str, str, int, str]:
    """Check a URL's shape; return ``(scheme, host, port, path with query)``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeTarget(f"Not a valid URL: {exc}.") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise UnsafeTarget(f"Only http and https URLs are allowed, not {scheme or 'a URL without a scheme'}.")
    if parts.username is not None or parts.password is not None:
        raise UnsafeTarget("Credentials in the URL are not allowed: authenticate with the signature.")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeTarget("The URL has no host.")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, host, port or (443 if scheme == "https" else 80), path


def address_problem(address: Address) -> str | None:
    """Why this address is not a public one (e.g. "a loopback address"), or None if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address carried inside an IPv6 one reaches that IPv4 address.
        for inner, form in ((address.ipv4_mapped, "IPv4-mapped"), (address.sixtofour, "6to4")):
            if inner is not None and (problem := address_problem(inner)):
                return f"{problem} ({form} {inner})"
        if address.teredo is not None:
            for inner in address.teredo:
                if problem := address_problem(inner):
                    return f"{problem} (Teredo {inner})"
    checks = (
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (isinstance(address, ipaddress.IPv4Address) and address in CGNAT, "a carrier-grade NAT address"),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (not address.is_global, "not a public address"),
    )
    for failed, reason in checks:
        if failed:
            return reason
    return None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to (itself if it is an address)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:  # ValueError: a NUL in the name
        raise UnsafeTarget(f"The host {host} does not resolve ({exc}).") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))


def check_target(url: str) -> Target:
    """Check ``url`` and resolve it; return the target to connect to.

    Every address of the host must be public (unless ``FLOWSITE_WEBHOOK_ALLOW_PRIVATE``):
    one internal address among public ones is refused too. Raises ``UnsafeTarget``.
    """
    scheme, host, port, path = check_url(url)
    addresses = resolve(host, port)
    if not addresses:
        raise UnsafeTarget(f"The host {host} does not resolve.")
    if not settings.FLOWSITE_WEBHOOK_ALLOW_PRIVATE:
        for address in addresses:
            problem = address_problem(address)
            if problem:
                where = f"{address} is" if _is_address(host) else f"{host} resolves to {address},"
                raise UnsafeTarget(f"Refused: {where} {problem}.")
    return Target(scheme=scheme, host=host, port=port, path=path, address=str(addresses[0]))
