"""What a LoRA URL must pass before any connection is made (issue 15, api.md `loras`): https only, a host on the
configured allowlist (empty unless configured: no URL is fetched by default), and every address it resolves to
public. The fetcher connects to an address checked here, never to a name resolved again, and checks each redirect
the same way, so neither a DNS answer nor a redirect can point it at loopback, the private networks, link-local
(cloud metadata at 169.254.169.254) or any other non-global range.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

Resolver = Callable[..., list[tuple]]
AddressCheck = Callable[[str, str], object]  # (address, field) -> anything; raises UnsafeUrl when refused


class UnsafeUrl(ValueError):
    """A URL the stack will not fetch (api.md: 422 `invalid_request`, naming `field`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str  # with its query


def check_address(address: str, field: str = "url") -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """`address` if it is a public unicast address; else UnsafeUrl. An IPv4-mapped IPv6 address is judged as IPv4."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not ip.is_global or ip.is_multicast:
        raise UnsafeUrl(field, f"{field}: {address} is not a public address (loopback, private, link-local, ...)")
    return ip


def check_url(
    url: str, allowed_hosts: Iterable[str], field: str = "url", check: AddressCheck = check_address
) -> Target:
    """The https URL's host, port and path, if its host is allowed; an IP literal must be public too."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "https":
        raise UnsafeUrl(field, f"{field}: only https URLs are fetched")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl(field, f"{field}: a URL with credentials is refused")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise UnsafeUrl(field, f"{field}: the URL has no host")
    allowed = {h.lower().rstrip(".") for h in allowed_hosts}
    if host not in allowed:
        hint = "no LoRA hosts are configured" if not allowed else f"allowed: {', '.join(sorted(allowed))}"
        raise UnsafeUrl(field, f"{field}: host {host} is not on the LoRA host allowlist ({hint})")
    try:
        check(host, field)
    except ValueError as exc:
        if isinstance(exc, UnsafeUrl):
            raise
        # a name, not an address literal: resolve_public checks what it resolves to
    try:
        port = parts.port or 443
    except ValueError:
        raise UnsafeUrl(field, f"{field}: the URL's port is not a number in range") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(host, port, path)


def resolve_public(
    target: Target, field: str = "url", resolver: Resolver = socket.getaddrinfo, check: AddressCheck = check_address
) -> list[str]:
    """Every address `target.host` resolves to, all of them public (one private answer refuses the URL: a name
    that resolves both ways could be answered privately at connect time)."""
    try:
        infos = resolver(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UnsafeUrl(field, f"{field}: {target.host} does not resolve") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise UnsafeUrl(field, f"{field}: {target.host} does not resolve")
    for address in addresses:
        check(address, field)
    return addresses
