"""Which webhook URLs and addresses may be called: the SSRF rules, checked when an endpoint is added and per delivery.

A webhook URL is chosen by a customer, so a request to it is a way into our
network unless every hop is checked (OWASP's SSRF prevention cheat sheet; the
`advocate` package's pattern):

1. the URL: `https` only (plain `http` too where the service runs with
   WEBHOOK_ALLOW_PRIVATE_TARGETS=true, as `make run` and the tests do), a host,
   no credentials, no fragment, no internal-only names;
2. the host is resolved and *every* address must be public: no loopback,
   private, link-local (169.254.169.254 is the metadata server), shared
   (100.64.0.0/10), multicast, reserved or unspecified address, nor the IPv4
   address inside an IPv4-mapped, IPv4-compatible, 6to4 or NAT64 IPv6 one;
3. the connection goes to an address that was checked, with the URL's host
   for TLS (SNI and certificate) and `Host`: there is no second lookup for a
   rebinding DNS server to answer differently;
4. the lookup is bounded (RESOLVE_TIMEOUT_SECONDS) and fair between hosts
   (`Lookups`); redirects are never followed and the whole delivery ends by
   its deadline (10 s), however the receiver dribbles (lib/webhooks/outbound.py sends it).

The same rules run when an endpoint is added (lib/admin/hooks.py) and at every
delivery (lib/webhooks/sending.py).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import SplitResult, urlsplit

import dns.exception
import dns.resolver
import idna

from lib.platform.clients import TtlLru, shared

MAX_URL_LENGTH = 2048
# One lookup's whole time: both address families, every server and retry (dnspython's lifetime).
RESOLVE_TIMEOUT_SECONDS = 3.0
# How long a host that failed to resolve is refused without asking again.
FAILURE_MEMORY_SECONDS = 5.0

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# Names that only ever mean something inside a network (GCE's metadata server
# is metadata.google.internal); refused before any lookup.
_INTERNAL_SUFFIXES = (".internal", ".local", ".localhost", ".localdomain", ".home.arpa", ".intranet", ".lan")
_INTERNAL_NAMES = ("localhost", "metadata", "metadata.google.internal")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]


class TargetRefused(Exception):
    """The URL may not be called; the message says why (shown to ops, logged)."""


class Target(NamedTuple):
    """A URL that passed the rules, with the addresses its host resolved to (all checked)."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent on the request line
    addresses: tuple[str, ...]


def address_refusal(address: Address) -> str | None:
    """Why `address` may not be called, or None if it is a public unicast address."""
    if address.version == 6:
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = address_refusal(embedded)
            return f"{reason} (IPv4 {embedded} inside {address})" if reason else None
    return next((reason for breaks, reason in _ADDRESS_RULES if breaks(address)), None)


# In order, the first that matches names the refusal.
_ADDRESS_RULES: tuple[tuple[Callable[[Address], bool], str], ...] = (
    (lambda a: a.is_unspecified, "unspecified address"),
    (lambda a: a.is_loopback, "loopback address"),
    (lambda a: a.is_link_local, "link-local address (169.254.169.254 is the metadata server)"),
    (lambda a: a.is_multicast, "multicast address"),
    (lambda a: a.version == 4 and a in _SHARED, "shared address space (100.64.0.0/10)"),
    (lambda a: a.version == 6 and a.is_site_local, "site-local address"),
    (lambda a: a.is_reserved or a == ipaddress.IPv4Address("255.255.255.255"), "reserved address"),
    (lambda a: a.is_private, "private address"),
    (lambda a: not a.is_global, "address that is not globally routable"),
)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@functools.lru_cache(maxsize=4096)
def check_url(url: str, allow_private: bool) -> tuple[str, str, int, str]:
    """The URL's (scheme, host, port, path) if its form is acceptable (no lookup yet).

    A pure function of its arguments, so remembered: every delivery checks its URL again.

    Raises:
        TargetRefused: the form breaks a rule.
    """
    parts, port = _split(url)
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if allow_private else ("https",)
    if scheme not in allowed:
        raise TargetRefused(f"scheme {scheme or '(none)'!r} is not allowed: webhook URLs must use https")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("the URL carries credentials (user:password@); put secrets in the path or query")
    if parts.fragment:
        raise TargetRefused("the URL has a fragment (#...), which is never sent")
    host = _ascii_host((parts.hostname or "").rstrip("."))
    if not host:
        raise TargetRefused("the URL has no host")
    if not allow_private:
        _refuse_internal_name(host)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, host, port or (443 if scheme == "https" else 80), path


def _split(url: str) -> tuple[SplitResult, int | None]:
    """The URL's parts and port, if it is a string of a URL's length and characters that parses."""
    if not isinstance(url, str) or not url:
        raise TargetRefused("the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise TargetRefused("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        return parts, parts.port
    except ValueError as exc:
        raise TargetRefused(f"the URL is malformed ({exc})") from None


def _refuse_internal_name(host: str) -> None:
    lowered = host.lower()
    if lowered in _INTERNAL_NAMES or lowered.endswith(_INTERNAL_SUFFIXES):
        raise TargetRefused(f"host {host!r} is an internal name")
    if "." not in lowered and ":" not in lowered and not lowered.isdigit():
        raise TargetRefused(f"host {host!r} is a single-label (internal) name")


def _ascii_host(host: str) -> str:
    """The host as DNS and TLS will see it: an internationalised name in its ASCII
    (xn--) form after UTS #46 mapping, so that look-alikes (`ⓜetadata`, a full-width
    dot) meet the name rules as the name they resolve as, and are connected to as such.

    Raises:
        TargetRefused: not a valid internationalised domain name.
    """
    if host.isascii() and "xn--" not in host.lower():
        return host.lower()
    try:
        return idna.encode(host, uts46=True).decode("ascii").rstrip(".")
    except idna.IDNAError:
        raise TargetRefused("the host is not a valid internationalised domain name") from None


@functools.lru_cache(maxsize=4096)
def _literal(host: str) -> str | None:
    """The address a host that is an IP literal names (pure: remembered), else None: the
    IPv4 forms a URL parser reads as an address too (`127.1`, `2130706433`, `0x7f.0.0.1`,
    as inet_aton does), so they are judged as the address they name, never looked up."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return str(ipaddress.IPv4Address(socket.inet_aton(host)))
        except OSError:
            return None
    return None


_NUMERIC_HOST = re.compile(r"[0-9a-fA-FxX.]+")


# A lookup: (host, port, seconds it may take) -> addresses. Resolver: what tests give instead
# of DNS, (host, port) -> addresses.
Lookup = Callable[[str, int, float], Sequence[str]]


def dns_lookup(host: str, port: int, lifetime: float, resolver: dns.resolver.Resolver | None = None) -> list[str]:
    """The host's IPv4 and IPv6 addresses from DNS (dnspython, the system's nameservers), the whole
    lookup bounded by `lifetime`: past it dnspython stops (LifetimeTimeout), nothing keeps running.
    `localhost` is loopback and never asked (RFC 6761 6.3)."""
    if host == "localhost":
        return ["127.0.0.1", "::1"]
    resolver = resolver or shared(("dns_resolver",), dns.resolver.Resolver)
    deadline = time.monotonic() + lifetime
    found: list[str] = []
    for rdtype in ("A", "AAAA"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise dns.resolver.LifetimeTimeout(timeout=lifetime, errors=[])
        try:
            found += [record.address for record in resolver.resolve(host, rdtype, lifetime=remaining, search=False)]
        except dns.resolver.NoAnswer:
            continue
    return found


@dataclass
class _Flight:
    """One lookup in progress; others asking for the same host wait for it."""

    done: threading.Event = field(default_factory=threading.Event)
    addresses: list[str] = field(default_factory=list)
    refusal: str | None = None


class Lookups:
    """An instance's DNS lookups, fair between hosts: each runs in its caller's own thread
    (there is no shared queue a tenant's slow names can fill), bounded by the caller's time,
    at most one in flight per host (the others wait for its answer), and a host that failed
    is refused for FAILURE_MEMORY_SECONDS without asking again."""

    def __init__(
        self,
        lookup: Lookup = dns_lookup,
        remember_failures: float = FAILURE_MEMORY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._lookup = lookup
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._failed: TtlLru[str] = TtlLru(remember_failures, 10_000, clock)

    def addresses(self, host: str, port: int, timeout: float) -> list[str]:
        """Raises TargetRefused: it did not resolve within `timeout`, or to nothing."""
        refusal = self._failed.get(host)
        if refusal is not None:
            raise TargetRefused(refusal)
        with self._lock:
            flight = self._flights.get(host)
            leader = flight is None
            if flight is None:
                flight = self._flights[host] = _Flight()
        if leader:
            self._fly(flight, host, port, timeout)
        elif not flight.done.wait(timeout):
            raise TargetRefused(f"host {host!r} did not resolve within {timeout:.1f} s")
        if flight.refusal is not None:
            raise TargetRefused(flight.refusal)
        if not flight.addresses:
            raise TargetRefused(f"host {host!r} resolves to no address")
        return flight.addresses

    def _fly(self, flight: _Flight, host: str, port: int, timeout: float) -> None:
        try:
            flight.addresses = list(self._lookup(host, port, timeout))
        except (dns.exception.Timeout, TimeoutError):
            flight.refusal = f"host {host!r} did not resolve within {timeout:.1f} s"
        except (dns.exception.DNSException, OSError, UnicodeError) as exc:
            flight.refusal = f"host {host!r} does not resolve ({type(exc).__name__})"
        finally:
            if flight.refusal is not None:
                self._failed.put(host, flight.refusal)
            with self._lock:
                self._flights.pop(host, None)
            flight.done.set()


def lookups() -> Lookups:
    """The instance's DNS lookups."""
    return shared(("webhook_lookups",), Lookups)


def resolve(
    url: str, allow_private: bool, resolver: Resolver | None = None, timeout: float = RESOLVE_TIMEOUT_SECONDS
) -> Target:
    """`url` checked: its form, then every address its host resolves to, the lookup
    bounded by `timeout` (the instance's Lookups; `resolver` stands in for DNS in tests).

    Raises:
        TargetRefused: a rule is broken (the message names it and the address).
    """
    scheme, host, port, path = check_url(url, allow_private)
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        found = Lookups(lambda host_, port_, _: resolver(host_, port_)) if resolver is not None else lookups()
        addresses = found.addresses(host, port, timeout)
    if not allow_private:
        for text in addresses:
            try:
                address = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                raise TargetRefused(f"host {host!r} resolved to {text!r}, which is not an IP address") from None
            reason = address_refusal(address)
            if reason is not None:
                raise TargetRefused(f"host {host!r} resolves to {address}: {reason}")
    return Target(scheme, host, port, path, tuple(addresses))
