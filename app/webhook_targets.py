"""Where webhooks may go: a job's `webhook` and `webhook_events`, and the operator's allowlist (AVP_WEBHOOK_ALLOW).

A destination is checked twice: at submit (an http or https URL whose host the allowlist lists, every address
it resolves to allowed) and again before each delivery, after a fresh DNS lookup, because a name may resolve
elsewhere by then. The delivery then connects to an address that was checked, never to the name. A host given
as an IP address must be in a listed address or network; a host name must be listed by name, and each address
it resolves to must be public or listed: never this machine's loopback, the LAN or any other non-public
address that the operator did not list, so a job cannot make the portal call its own loopback or the LAN.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import SplitResult, urlsplit

import anyio
import msgspec

from app.schemas import FieldError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Replicate's event names, plus `progress` (at most one every PROGRESS_EVERY_S).
EVENTS = ("start", "output", "logs", "completed", "progress")
DEFAULT_EVENTS = ("completed",)  # as Replicate does, when a webhook is given without events
FIELDS = ("webhook", "webhook_events")
MAX_URL_CHARS = 2000
ALLOW_EXAMPLE = "127.0.0.1,hooks.lan,10.0.0.0/8"


class Webhook(msgspec.Struct, frozen=True):
    """A job's webhook: where its deliveries go and which events it wants."""

    url: str
    events: tuple[str, ...] = DEFAULT_EVENTS


class Refused(ValueError):
    """A destination the allowlist does not allow; the message says why and what to do."""


class Allowlist(msgspec.Struct, frozen=True):
    """AVP_WEBHOOK_ALLOW: host names (lower case, no trailing dot) and IP networks (a bare address is one)."""

    names: frozenset[str] = frozenset()
    networks: tuple[Any, ...] = ()  # IPNetwork; msgspec has no type for them, and this struct is never encoded
    text: str = ""  # as the operator wrote it, for messages

    @classmethod
    def parse(cls, raw: str) -> Allowlist:
        """From the setting's comma-separated entries; ValueError naming a bad entry."""
        names: set[str] = set()
        networks: list[IPNetwork] = []
        entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = entry.lower().rstrip(".")
            if not _HOST_NAME_CHARS.issuperset(name) or not name or name.startswith(("-", ".")) or ".." in name:
                raise ValueError(
                    f"AVP_WEBHOOK_ALLOW entry {entry!r} is not a host name, IP address or CIDR network; list the "
                    f"destinations webhooks may call, without scheme or port, comma-separated: {ALLOW_EXAMPLE}"
                )
            names.add(name)
        return cls(names=frozenset(names), networks=tuple(networks), text=",".join(entries))

    def __bool__(self) -> bool:
        return bool(self.names or self.networks)

    def lists(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def check_host(self, host: str) -> None:
        """Refused unless the host is listed: a listed name, or an address a listed network holds."""
        if not self:
            raise Refused(
                "is refused: this portal allows webhooks to no destination. The operator allows them by setting "
                f"AVP_WEBHOOK_ALLOW to the host names, IP addresses or CIDR networks they may call ({ALLOW_EXAMPLE})"
            )
        address = literal_address(host)
        if address is None and host.lower().rstrip(".") not in self.names:
            raise Refused(f"names {host}, which AVP_WEBHOOK_ALLOW ({self.text}) does not list; {_ASK}")
        if address is not None and not self.lists(address):
            raise Refused(f"calls {address}, which AVP_WEBHOOK_ALLOW ({self.text}) does not allow; {_ASK}")

    def check_addresses(self, host: str, addresses: list[IPAddress]) -> None:
        """Refused unless the host is listed and every address it resolved to is allowed: listed, or public."""
        self.check_host(host)
        if not addresses:
            raise Refused(f"names {host}, which resolves to no address")
        for address in addresses:
            if not self.lists(address) and not is_public(address):
                raise Refused(
                    f"names {host}, which resolves to {address}, a non-public address (loopback, private, link-local "
                    f"or reserved) that AVP_WEBHOOK_ALLOW ({self.text}) does not list: a listed name may reach only "
                    "public addresses and those listed; " + _ASK
                )


_ASK = "use an allowed destination, or ask the operator to add it to AVP_WEBHOOK_ALLOW"
_HOST_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")


def literal_address(host: str) -> IPAddress | None:
    """The host as an IP address, if it is one (an IPv4-mapped IPv6 address counts as its IPv4 address)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return _unmapped(address)


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_public(address: IPAddress) -> bool:
    return address.is_global and not address.is_multicast


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, in the resolver's order, without repeats; OSError when it resolves to none.
    anyio runs the lookup in a worker thread, so the event loop never waits on DNS."""
    address = literal_address(host)
    if address is not None:
        return [address]
    found: list[IPAddress] = []
    for *_, sockaddr in await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        resolved = _unmapped(ipaddress.ip_address(str(sockaddr[0]).partition("%")[0]))
        if resolved not in found:
            found.append(resolved)
    return found


def split_url(url: str) -> SplitResult:
    """The parts of a webhook URL; Refused unless it is an http or https URL with a host and nothing odd."""
    if len(url) > MAX_URL_CHARS:
        raise Refused(f"is {len(url)} characters; the limit is {MAX_URL_CHARS}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port out of range or not a number)
    except ValueError as exc:
        raise Refused(f"is not a URL ({exc}); send e.g. https://hooks.lan/avportal") from None
    if parts.scheme not in ("http", "https"):
        scheme = f"{parts.scheme}:" if parts.scheme else "one without a scheme"
        raise Refused(f"must be an http or https URL, not {scheme}")
    if not parts.hostname:
        raise Refused("has no host; send e.g. https://hooks.lan/avportal")
    if parts.username is not None or parts.password is not None:
        raise Refused("must not carry a user name or password; authenticate the delivery by its signature")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise Refused("contains spaces or control characters; percent-encode them")
    return parts


def default_port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


async def check_destination(url: str, allow: Allowlist) -> None:
    """The submit-time check of a webhook URL: its form, its host, and every address its host resolves to."""
    parts = split_url(url)
    host = parts.hostname or ""
    allow.check_host(host)
    try:
        addresses = await resolve(host, default_port(parts))
    except OSError as exc:
        raise Refused(f"names {host}, which does not resolve ({exc.strerror or exc}); check the host name") from None
    allow.check_addresses(host, addresses)


async def read_webhook(raw: dict[str, Any], allow: Allowlist) -> tuple[Webhook | None, list[FieldError]]:
    """A submitted body's `webhook` and `webhook_events`, checked: the webhook (None when not asked for) and
    the problems, each naming its field."""
    url, events = raw.get("webhook"), raw.get("webhook_events")
    problems: list[FieldError] = []
    events_problem = _events_problem(events, url)
    if events_problem:
        problems.append(FieldError(field="webhook_events", message=events_problem))
    if url is None:
        return None, problems
    if not isinstance(url, str):
        problems.append(FieldError(field="webhook", message="must be a URL (text), e.g. https://hooks.lan/avportal"))
        return None, problems
    try:
        await check_destination(url, allow)
    except Refused as refused:
        problems.append(FieldError(field="webhook", message=str(refused)))
    if problems:
        return None, problems
    chosen = tuple(e for e in EVENTS if e in events) if events else DEFAULT_EVENTS
    return Webhook(url=url, events=chosen), []


def _events_problem(events: Any, url: Any) -> str | None:
    names = ", ".join(EVENTS)
    if events is None:
        return None
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        return f"must be a list of event names from {names}"
    if not events:
        return f"is empty; name one or more of {names}, or leave it out for completed alone"
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        shown = ", ".join(repr(e[:40]) for e in unknown[:5])
        return f"{shown} {'is not an event' if len(unknown) == 1 else 'are not events'}; choose from {names}"
    if url is None:
        return "needs a webhook: send the URL to call as `webhook`"
    return None
