"""Who may use the portal: a password or API token, a signed session cookie, a guard on every route.

Auth is on as soon as a credential is configured (AVP_PASSWORD_HASH, AVP_API_TOKEN). Browsers log
in once and carry a signed, expiring session cookie; API clients send `Authorization: Bearer`.
With no credential the portal only listens on loopback (Settings.check_exposure), so `make run`
stays zero-config.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

import anyio.to_thread
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers import BaseRouteHandler

from app.config import Settings
from app.passwords import verify_password

SESSION_COOKIE = "avp_session"
PUBLIC = "public"  # route handler opt key: reachable without logging in
SECRET_FILE = "secret.key"


def load_or_create_secret(data_dir: Path) -> bytes:
    """The key that signs sessions; kept in the data dir so a restart logs nobody out."""
    path = data_dir / SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        with open(path, "x", opener=lambda p, flags: os.open(p, flags, 0o600)) as f:  # readable by us only
            f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


class LoginRequired(NotAuthorizedException):
    """No valid session or token; pages answer with the login page, the API and streams with 401."""


class Authenticator:
    def __init__(self, settings: Settings, secret: bytes) -> None:
        self.enabled = settings.auth_enabled
        self._password_hash = settings.password_hash
        self._api_token = settings.api_token
        self._session_s = settings.session_hours * 3600
        # The credentials are part of the signing key: changing the password ends every session.
        material = f"{settings.password_hash or ''}\0{settings.api_token or ''}".encode()
        self._session_key = hmac.new(secret, b"session\0" + material, hashlib.sha256).digest()

    async def check_password(self, password: str) -> bool:
        """The login form takes the password, or the API token where only a token is configured."""
        if self._api_token is not None and hmac.compare_digest(password.encode(), self._api_token.encode()):
            return True
        if self._password_hash is None:
            return False
        return await anyio.to_thread.run_sync(verify_password, password, self._password_hash)

    def new_session(self) -> tuple[str, int]:
        """A session cookie value and its lifetime in seconds."""
        expires = int(time.time() + self._session_s)
        payload = f"{expires}.{secrets.token_urlsafe(12)}"
        return f"{payload}.{self._sign(payload)}", int(self._session_s)

    def _sign(self, payload: str) -> str:
        return hmac.new(self._session_key, payload.encode(), hashlib.sha256).hexdigest()

    def _session_valid(self, value: str | None) -> bool:
        if not value or value.count(".") != 2:
            return False
        payload, signature = value.rsplit(".", 1)
        if not hmac.compare_digest(signature, self._sign(payload)):
            return False
        expires = payload.split(".", 1)[0]
        return expires.isdigit() and int(expires) > time.time()

    def _token_valid(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        return (
            self._api_token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(token.strip().encode(), self._api_token.encode())
        )

    def allows(self, connection: ASGIConnection) -> bool:
        if not self.enabled:
            return True
        return self._token_valid(connection.headers.get("authorization")) or self._session_valid(
            connection.cookies.get(SESSION_COOKIE)
        )


def require_login(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """App-wide guard; handlers marked `opt={PUBLIC: True}` (login, static files, health) skip it."""
    if handler.opt.get(PUBLIC):
        return
    if not connection.app.state.parts.auth.allows(connection):
        raise LoginRequired("Log in first: send `Authorization: Bearer <AVP_API_TOKEN>` or use the login page.")


class LoginThrottle:
    """Slows down password guessing per client: a few free failures, then a doubling wait (capped).

    While a client waits, its attempts are refused without checking the password.
    """

    FREE_FAILURES = 3
    MAX_WAIT_S = 300.0
    _FORGET_AFTER_S = 3600.0

    def __init__(self) -> None:
        self._failures: dict[str, tuple[int, float]] = {}  # client -> (failures, blocked until)

    def wait_s(self, client: str) -> float:
        _, until = self._failures.get(client, (0, 0.0))
        return max(0.0, until - time.monotonic())

    def failed(self, client: str) -> None:
        now = time.monotonic()
        count = self._failures.get(client, (0, 0.0))[0] + 1
        wait = 0.0 if count <= self.FREE_FAILURES else min(2.0 ** (count - self.FREE_FAILURES), self.MAX_WAIT_S)
        self._failures[client] = (count, now + wait)
        if len(self._failures) > 4096:  # many clients guessing: forget the ones long quiet
            self._failures = {c: f for c, f in self._failures.items() if f[1] > now - self._FORGET_AFTER_S}

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
