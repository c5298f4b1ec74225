"""Which URLs an admin may point bbsync at: Bitbucket's API (`--api-url`), the public URL that
Bitbucket's hooks and OAuth redirects come back to (`--public-url`), and any other address the
product calls or hands out because someone configured it.

The rule: `https`, or `http` to a loopback host (a proxy or simulator on the same machine); no
user name or password in the URL, no query or fragment; and never a private, link-local,
multicast or otherwise reserved address, written as one or resolved from a name. A name that
does not resolve now is let through (the call will fail later, loudly); one that resolves to a
forbidden address is not.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Callable, Iterable
from urllib.parse import urlsplit

MAX_URL_CHARS = 2048

Resolver = Callable[[str], Iterable[str]]


class UnsafeUrl(ValueError):
    """A URL bbsync will not call; the message says why, naming the URL's host at most."""


def _resolve(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return [info[4][0] for info in infos]


def _is_loopback_name(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")


def _forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address may not be called, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None
    for reason, flag in (("link-local", address.is_link_local), ("multicast", address.is_multicast),
                         ("unspecified", address.is_unspecified), ("private", address.is_private),
                         ("reserved", address.is_reserved or not address.is_global)):
        if flag:
            return reason
    return None


def check(url: object, what: str = "URL", resolve: Resolver = _resolve) -> str:
    """Return `url` without a trailing slash when bbsync may call it; raise UnsafeUrl saying
    why otherwise. `what` names the setting in the message (e.g. "--api-url")."""
    if not isinstance(url, str) or not url:
        raise UnsafeUrl(f"{what}: a URL is required")
    if len(url) > MAX_URL_CHARS:
        raise UnsafeUrl(f"{what}: longer than {MAX_URL_CHARS} characters")
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise UnsafeUrl(f"{what} {url!r}: only printable ASCII without spaces")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"{what} {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise UnsafeUrl(f"{what} {url!r}: must be an https:// URL (or http:// to a loopback host)")
    if "@" in parts.netloc:
        raise UnsafeUrl(f"{what}: a user name or password does not belong in the URL "
                        "(give credentials with their own option)")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise UnsafeUrl(f"{what} {url!r}: no query or fragment")
    del port  # parsed for its validation only
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    loopback = _is_loopback_name(host) or (literal is not None and literal.is_loopback)
    if parts.scheme == "http" and not loopback:
        raise UnsafeUrl(f"{what} {url!r}: plain http is allowed only to a loopback host; use https")
    addresses = [literal] if literal is not None else [] if loopback else [
        ipaddress.ip_address(a.split("%", 1)[0]) for a in resolve(host)]
    for address in addresses:
        reason = _forbidden(address)
        if reason:
            raise UnsafeUrl(f"{what}: host {host!r} is a {reason} address ({address}); "
                            "bbsync calls only public or loopback addresses")
    return url.rstrip("/")
