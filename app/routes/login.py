"""The login page, logging in (a signed session cookie) and logging out. See app/auth.py for the checks."""

from __future__ import annotations

import math
import re
from typing import Annotated
from urllib.parse import urlencode

import anyio
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import QueryParameter, URLEncodedBody
from litestar.response import Redirect, Template

from app.auth import PUBLIC, SESSION_COOKIE, Authenticator, LoginThrottle
from app.config import Settings
from app.routes.api import client_address

FAILED_LOGIN_DELAY_S = 0.5  # every wrong password costs the guesser this much, on top of LoginThrottle
_LOCAL_PATH = re.compile(r"/(?![/\\])[^\s\\]*")  # a path inside the portal, never //host or a scheme


def login_path(request: Request) -> str:
    """The login page, remembering where the person wanted to go (inside the app, without the root path)."""
    wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login?" + urlencode({"next": wanted})


def _local(next_path: str | None) -> str:
    return next_path if next_path and _LOCAL_PATH.fullmatch(next_path) else "/"


def _login_form(next_path: str, error: str | None = None, status_code: int = 200, **headers: str) -> Template:
    return Template(
        template_name="login.html",
        context={"next_path": next_path, "error": error},
        status_code=status_code,
        headers=headers or None,
    )


@get("/login", name="login_page", opt={PUBLIC: True})
async def login_page(
    auth: NamedDependency[Authenticator],
    settings: NamedDependency[Settings],
    next_path: Annotated[str | None, QueryParameter(name="next")] = None,
) -> Template | Redirect:
    if not auth.enabled:
        return Redirect(settings.url("/"), status_code=303)
    return _login_form(_local(next_path))


@post("/login", name="log_in", status_code=303, opt={PUBLIC: True})
async def log_in(
    request: Request,
    data: URLEncodedBody[dict[str, str]],
    auth: NamedDependency[Authenticator],
    login_throttle: NamedDependency[LoginThrottle],
    settings: NamedDependency[Settings],
) -> Template | Redirect:
    next_path = _local(data.get("next"))
    client = client_address(request)
    wait_s = login_throttle.wait_s(client)
    if wait_s > 0:
        retry = math.ceil(wait_s)
        message = f"Too many wrong passwords from this address; try again in {retry} s."
        return _login_form(next_path, message, 429, **{"Retry-After": str(retry)})
    if not await auth.check_password(data.get("password", "")):
        login_throttle.failed(client)
        await anyio.sleep(FAILED_LOGIN_DELAY_S)
        return _login_form(next_path, "Wrong password.", 401)
    login_throttle.succeeded(client)
    session, max_age = auth.new_session()
    response = Redirect(settings.url(next_path), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session,
        max_age=max_age,
        path=settings.url("/"),
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",  # uvicorn takes the scheme from a trusted proxy's X-Forwarded-Proto
    )
    return response


@post("/logout", name="log_out", status_code=303, opt={PUBLIC: True})
async def log_out(settings: NamedDependency[Settings]) -> Redirect:
    response = Redirect(settings.url("/login"), status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=settings.url("/"))
    return response


handlers = [login_page, log_in, log_out]
