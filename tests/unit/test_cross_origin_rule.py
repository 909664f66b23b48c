"""The CSRF rule on its own (app/security.py cross_origin_refusal): which requests a browser may be let make."""

from __future__ import annotations

import pytest
from litestar.datastructures import Headers

from app.config import Settings
from app.security import cross_origin_refusal

SETTINGS = Settings.from_env({"AVP_DATA_DIR": "/nonexistent", "AVP_ALLOWED_HOSTS": "portal.lan,192.168.1.20"})


def refusal(method: str = "POST", **headers: str) -> str | None:
    return cross_origin_refusal(method, Headers({k.replace("_", "-"): v for k, v in headers.items()}), SETTINGS)


@pytest.mark.parametrize("site", ["cross-site", "same-site", "Cross-Site", "something-new"])
def test_a_post_from_another_sites_page_is_refused_whatever_its_origin_says(site: str) -> None:
    why = refusal(sec_fetch_site=site, origin="http://portal.lan")
    assert why is not None and f"Sec-Fetch-Site: {site}" in why and "its own address" in why


@pytest.mark.parametrize("site", ["same-origin", "none"])
def test_the_portals_own_pages_and_typed_urls_are_let_through_whatever_their_origin(site: str) -> None:
    # Sec-Fetch-Site decides where a browser sends it: Origin is only the fallback for browsers that do not
    assert refusal(sec_fetch_site=site, origin="http://evil.example") is None


@pytest.mark.parametrize(
    "origin",
    [
        "http://portal.lan",
        "https://portal.lan:8443",
        "http://192.168.1.20:8000",
        "http://127.0.0.1:8000",
        "http://localhost:8000",
        "http://[::1]:8000",
        "HTTP://Portal.LAN",
    ],
)
def test_without_sec_fetch_site_an_origin_the_portal_serves_is_let_through(origin: str) -> None:
    assert refusal(origin=origin) is None


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "http://portal.lan.evil.example", "null", "file://portal.lan", "portal.lan"]
)
def test_without_sec_fetch_site_any_other_origin_is_refused_naming_the_setting(origin: str) -> None:
    why = refusal(origin=origin)
    assert why is not None and "AVP_ALLOWED_HOSTS" in why and repr(origin) in why


def test_a_request_with_neither_header_is_no_browsers_and_faces_authentication_only() -> None:
    assert refusal() is None
    assert refusal(content_type="application/x-www-form-urlencoded") is None


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
def test_safe_methods_are_never_refused(method: str) -> None:
    assert refusal(method, sec_fetch_site="cross-site", origin="http://evil.example") is None


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_every_other_method_is_checked(method: str) -> None:
    assert refusal(method, sec_fetch_site="cross-site") is not None
    assert refusal(method, origin="http://evil.example") is not None
