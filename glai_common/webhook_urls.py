"""Which webhook URLs the service will call: http(s) only, and never into its own network by default.

A job's ``notify.webhook_url`` is checked twice: when the job is submitted (a 422 naming the field) and
again right before every delivery attempt, against the addresses the host resolves to *then*; the attempt
connects to the address that was checked (``Target.connect_url``), so a name that resolves to a public
address at submission and to 127.0.0.1 later (DNS rebinding) is still refused. Loopback, private,
link-local, shared (CGNAT), multicast, reserved and unspecified addresses are refused unless the operator
sets ``GLAI_WEBHOOK_ALLOW_PRIVATE``.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

MAX_URL_LENGTH = 2048
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookUrlError(ValueError):
    """The URL cannot be used; the message says why, for a person."""


def parse(url: str) -> SplitResult:
    """The URL's parts, or ``WebhookUrlError``: absolute http(s), a host, no credentials, no fragment."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookUrlError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise WebhookUrlError("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlError(f"not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise WebhookUrlError(f"only http and https URLs are allowed (got {parts.scheme or 'no'} scheme)")
    if not parts.hostname:
        raise WebhookUrlError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlError("credentials in the URL are not allowed; the body is signed instead "
                              "(verify the signature header)")
    if parts.fragment:
        raise WebhookUrlError("the URL must not have a #fragment")
    if port == 0:
        raise WebhookUrlError("port 0 is not a valid port")
    return parts


def is_blocked(address: IpAddress) -> bool:
    """Anything but a public unicast address: the service's own machine and networks stay unreachable."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def _literal(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def resolve(host: str, port: int) -> list[IpAddress]:
    """Every address ``host`` resolves to (a literal address resolves to itself)."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookUrlError(f"the host {host!r:.100} does not resolve ({exc})") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    return list(dict.fromkeys(addresses))


@dataclass(frozen=True)
class Target:
    """A checked URL and the address to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    address: IpAddress

    @property
    def connect_url(self) -> str:
        """The URL with its host replaced by the checked address (the Host header and, for https, the
        TLS server name keep the original host)."""
        parts = urlsplit(self.url)
        ip = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return parts._replace(netloc=f"{ip}:{self.port}").geturl()

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def check(url: str, *, allow_private: bool, resolve_host: bool = True) -> Target | None:
    """Refuse (``WebhookUrlError``) a URL the service must not call. Resolves the host unless it is a
    literal address or ``resolve_host`` is false (private targets allowed: any address will do, so the
    API need not look the name up); returns the target to connect to when it resolved."""
    parts = parse(url)
    host = parts.hostname or ""
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    literal = _literal(host)
    if literal is None and not resolve_host and allow_private:
        return None
    addresses = resolve(host, port)
    if not addresses:
        raise WebhookUrlError(f"the host {host!r:.100} resolves to no address")
    allowed = addresses if allow_private else [a for a in addresses if not is_blocked(a)]
    if len(allowed) < len(addresses) or not allowed:
        blocked = next(a for a in addresses if a not in allowed)
        raise WebhookUrlError(f"the host {host!r:.100} is (or resolves to) {blocked}, a loopback, private or "
                              "otherwise non-public address; the operator may allow such targets with "
                              "GLAI_WEBHOOK_ALLOW_PRIVATE")
    return Target(url=url, scheme=scheme, host=host, port=port, address=allowed[0])
