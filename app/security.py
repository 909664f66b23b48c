"""Browser-facing protections: served host names only, cross-site requests refused (CSRF), security headers."""

from __future__ import annotations

from litestar.datastructures import Headers, MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.exceptions import PermissionDeniedException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings

# No inline script or style anywhere (htmx's own indicator style is switched off in base.html).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",  # frame-ancestors for browsers that predate it
}


class ServedHostsOnly(ASGIMiddleware):
    """Answers 400 to a request whose Host header is not one of the portal's names (Settings.serves_host).

    DNS rebinding: a page on the attacker's domain re-points that domain at this machine, and the
    browser then lets it read the portal's answers as its own origin's. Its requests still carry the
    attacker's name in Host, so refusing unknown names keeps every prompt and job out of its reach.
    """

    scopes = (ScopeType.HTTP,)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        host = Headers.from_scope(scope).get("host", "")
        if self.settings.serves_host(host):
            await next_app(scope, receive, send)
            return
        body = (
            f"This portal does not answer to the host name {host[:100]!r}. If that is a name you use to reach "
            "it, add it to AVP_ALLOWED_HOSTS (comma-separated names) on the server and restart the portal.\n"
        ).encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": body})


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # never change anything here, so never refused
_OWN_PAGES = frozenset({"same-origin", "none"})  # a page of this origin; the person typed the URL or used a bookmark


def cross_origin_refusal(method: str, headers: Headers, settings: Settings) -> str | None:
    """Why a browser must not be let make this request (CSRF), or None: Go's `http.CrossOriginProtection` rule.

    A browser says which site made a request in Sec-Fetch-Site (every browser since 2023): only the portal's
    own pages may change anything; `same-site` is refused too (a sibling subdomain or another port is another
    application). A browser that sends no Sec-Fetch-Site (plain HTTP to a LAN name is not a secure context, so
    it is left out there) still sends Origin on every POST: its host name must be one the portal serves
    (loopback's or AVP_ALLOWED_HOSTS, as ServedHostsOnly checks Host; the port is not compared, since a proxy
    in front listens on its own). A request with neither header is no browser's (curl, scripts): it faces
    authentication only.
    """
    if method in SAFE_METHODS:
        return None
    site = headers.get("sec-fetch-site")
    if site is not None:
        if site.strip().lower() in _OWN_PAGES:
            return None
        return (
            f"Refused: this {method} came from a page of another site (Sec-Fetch-Site: {site[:40]}), and the portal "
            "takes changes only from its own pages. Open the portal at its own address and do it there. " + _SCRIPTS
        )
    origin = headers.get("origin")
    if origin is None:
        return None
    scheme, _, authority = origin.partition("://")
    if scheme.lower() in ("http", "https") and settings.serves_host(authority):
        return None
    return (
        f"Refused: this {method} came from a page at {origin[:100]!r}, not from the portal's own pages. If that is "
        "the address you reach the portal by (through a proxy, say), add its host name to AVP_ALLOWED_HOSTS on "
        "the server and restart the portal; otherwise open the portal at its own address and do it there. " + _SCRIPTS
    )


_SCRIPTS = (
    "Scripts send neither Origin nor Sec-Fetch-Site (curl does not) and, where the portal asks for credentials, "
    "`Authorization: Bearer <AVP_API_TOKEN>`."
)


class CrossOriginProtection(ASGIMiddleware):
    """Answers 403 to a state-changing request that another site's page made a browser send (cross_origin_refusal)."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        refusal = cross_origin_refusal(scope["method"], Headers.from_scope(scope), self.settings)
        if refusal is not None:
            raise PermissionDeniedException(refusal)
        await next_app(scope, receive, send)


async def add_security_headers(message: Message, scope: Scope) -> None:
    """A `before_send` hook: every HTTP response gets SECURITY_HEADERS, 404s and static files included.

    Async on purpose: Litestar runs a sync hook in a worker thread, for every body chunk of every stream.
    """
    if message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        for name, value in SECURITY_HEADERS.items():
            headers[name] = value
