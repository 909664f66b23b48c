"""Browser-facing protections: served host names only, CSRF on state-changing requests, security headers."""

from __future__ import annotations

import hashlib
import hmac

from litestar.config.csrf import CSRFConfig
from litestar.datastructures import Headers, MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.exceptions import PermissionDeniedException
from litestar.middleware import ASGIMiddleware
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings

CSRF_HEADER = "x-csrftoken"
CSRF_COOKIE = "avp_csrf"

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


def _preflighted_or_bearer(scope: Scope) -> bool:
    """Requests a forged cross-site page cannot make, so they need no CSRF token.

    A bearer token is never sent by a browser on its own (the auth guard checks it). A JSON body
    or a DELETE makes the browser ask a CORS preflight first, which the portal never grants.
    """
    headers = Headers.from_scope(scope)
    if headers.get("authorization", "").lower().startswith("bearer "):
        return True
    if scope.get("method") in ("DELETE", "PUT", "PATCH"):
        return True
    return headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


class _CSRFUnlessPreflighted(CSRFMiddleware):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and _preflighted_or_bearer(scope):
            await self.app(scope, receive, send)
            return
        try:
            await super().__call__(scope, receive, send)
        except PermissionDeniedException:
            raise PermissionDeniedException(CSRF_REFUSED) from None


CSRF_REFUSED = (
    "Refused without a CSRF token: reload the page and try again. API clients send "
    "`Authorization: Bearer <AVP_API_TOKEN>` or a JSON body (Content-Type: application/json)."
)


def csrf_middleware(settings: Settings, secret: bytes) -> DefineMiddleware:
    """Litestar's double-submit CSRF check; htmx sends the token in a header (hx-headers on <body>)."""
    config = CSRFConfig(
        secret=hmac.new(secret, b"csrf", hashlib.sha256).hexdigest(),
        cookie_name=CSRF_COOKIE,
        header_name=CSRF_HEADER,
        cookie_path=settings.url("/"),
        cookie_samesite="strict",
    )
    return DefineMiddleware(_CSRFUnlessPreflighted, config=config)


async def add_security_headers(message: Message, scope: Scope) -> None:
    """A `before_send` hook: every HTTP response gets SECURITY_HEADERS, 404s and static files included.

    Async on purpose: Litestar runs a sync hook in a worker thread, for every body chunk of every stream.
    """
    if message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        for name, value in SECURITY_HEADERS.items():
            headers[name] = value
