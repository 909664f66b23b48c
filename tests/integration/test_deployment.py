"""A LAN deployment: real nginx in front of a real portal under /portal/, with credentials.

What a stranger on the network gets (a login page, 401s, 403s for other sites' pages, security
headers), what a logged-in person and an API client get, and what the proxy must not break
(streaming, the sub-path, the body limit, the host name). What a web page rebinding its domain
to the portal gets. Refusals at start-up and the back-pressure 429s too.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from httpx_sse import connect_sse

from app.passwords import hash_password, verify_password
from app.security import SECURITY_HEADERS
from tests.portal import NO_JOBS, REPO_ROOT, Portal, free_port

PASSWORD = "correct horse battery"
TOKEN = "test-token-0123456789abcdef"
LONG_JOB = {"width": 512, "height": 288, "num_frames": 97, "steps": 40}
# Streamed to its end: the runner's start, 6 steps and a decode of the smallest default-mode clip, seconds in all
# (several heartbeats at 0.5 s); a bigger clip only lengthens the steps the stream waits for.
STREAMED_JOB = {"width": 256, "height": 160, "num_frames": 25, "steps": 6}


def secured_env(**extra: str) -> dict[str, str]:
    return {"AVP_PASSWORD_HASH": hash_password(PASSWORD), "AVP_API_TOKEN": TOKEN, "AVP_ROOT_PATH": "/portal", **extra}


@pytest.fixture
def behind_nginx(make_portal, make_proxy) -> Portal:
    portal = make_portal(**secured_env(AVP_HEARTBEAT_S="0.5"))
    make_proxy("nginx", portal)
    return portal


@contextlib.contextmanager
def logged_in(portal: Portal) -> Iterator[httpx.Client]:
    """A browser-like client (no token) that logged in through the login form. It sends Origin, as browsers do on
    every POST, and no Sec-Fetch-Site, as they do over plain HTTP to a LAN name: the proxy's port is in Origin and
    not in the Host nginx passes on, which must not matter."""
    with httpx.Client(
        base_url=portal.base_url, timeout=30, follow_redirects=True, headers={"Origin": portal.base_url}
    ) as client:
        response = client.post("/login", data={"password": PASSWORD, "next": "/"})
        assert response.status_code == 200 and str(response.url) == portal.base_url + "/", response.text
        yield client


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.url, name)
    assert "'unsafe-inline'" not in response.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("env", "hints"),
    [
        ({}, ("refusing to listen on 0.0.0.0", "AVP_PASSWORD_HASH", "avportal hash-password", "AVP_API_TOKEN")),
        ({"AVP_API_TOKEN": TOKEN}, ("refusing to listen on 0.0.0.0 without AVP_ALLOWED_HOSTS", "portal.lan")),
    ],
    ids=["no credentials", "no host names"],
)
def test_listening_on_the_network_without_credentials_or_names_is_refused_with_directions(tmp_path, env, hints) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "AVP_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode != 0
    for hint in hints:
        assert hint in completed.stderr, completed.stderr


def test_a_page_rebinding_its_domain_to_the_portal_gets_400_and_no_prompt(make_portal) -> None:
    """No login on loopback: the Host header is all that tells the portal's own pages from a rebinding one."""
    portal = make_portal(AVP_ALLOWED_HOSTS="portal.lan", AVP_RUNNER_PYTHON="false")
    secret = "a red ball bouncing past the secret garden"
    job = portal.submit(prompt=secret)
    reads = ["/", "/api/jobs", f"/api/jobs/{job['id']}", f"/jobs/{job['id']}", f"/api/jobs/{job['id']}/events"]
    with httpx.Client(base_url=portal.direct_url, timeout=30) as client:
        for host in ("evil.example", f"evil.example:{portal.port}", f"localhost.evil.example:{portal.port}"):
            for path in reads:
                refused = client.get(path, headers={"Host": host})
                assert refused.status_code == 400, (host, path, refused.status_code)
                assert "AVP_ALLOWED_HOSTS" in refused.text and secret not in refused.text
            submitted = client.post("/api/jobs", json={"prompt": "made by a stranger"}, headers={"Host": host})
            assert submitted.status_code == 400

        for host in ("portal.lan", f"portal.lan:{portal.port}", f"localhost:{portal.port}", f"[::1]:{portal.port}"):
            served = client.get("/api/jobs", headers={"Host": host})
            assert served.status_code == 200 and secret in served.text, host
        assert [j["request"]["prompt"] for j in client.get("/api/jobs").json()["jobs"]] == [secret]


@pytest.mark.parametrize("kind", ["nginx", "caddy"])
def test_the_proxy_passes_the_host_on_and_the_portal_serves_only_its_names(make_portal, make_proxy, kind) -> None:
    portal = make_portal(**secured_env(AVP_ALLOWED_HOSTS="portal.lan", **NO_JOBS))
    make_proxy(kind, portal)
    with httpx.Client(base_url=portal.base_url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert client.get("/api/jobs", headers={"Host": "portal.lan"}).status_code == 200
        assert client.get("/login", headers={"Host": "portal.lan"}).status_code == 200
        refused = client.get("/api/jobs", headers={"Host": "evil.example"})
    assert refused.status_code == 400 and "AVP_ALLOWED_HOSTS" in refused.text


def test_hash_password_prints_a_salted_hash_that_verifies() -> None:
    def run() -> str:
        out = subprocess.run(
            [sys.executable, "-m", "app", "hash-password"],
            cwd=REPO_ROOT,
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.strip().removeprefix("AVP_PASSWORD_HASH=")

    first, second = run(), run()
    assert first != second, "salted"
    assert verify_password(PASSWORD, first) and not verify_password("wrong", first)


def test_strangers_get_the_login_page_401s_and_no_session(behind_nginx: Portal) -> None:
    job = behind_nginx.submit(steps=1)  # with the bearer token
    with httpx.Client(base_url=behind_nginx.base_url, timeout=30) as stranger:
        page = stranger.get("/jobs/" + job["id"])
        assert page.status_code == 303
        assert page.headers["location"] == f"/portal/login?next=%2Fjobs%2F{job['id']}"
        for path in ("/api/jobs", f"/api/jobs/{job['id']}", f"/api/jobs/{job['id']}/events", "/events/jobs"):
            response = stranger.get(path)
            assert response.status_code == 401, path
            assert "Bearer" in response.json()["detail"]
        assert stranger.post("/api/jobs", json={"prompt": "x"}).status_code == 401
        assert stranger.get("/api/jobs", headers={"Authorization": "Bearer wrong-token-123456"}).status_code == 401

        login = stranger.get("/login")
        assert '<link rel="icon" href="/portal/static/favicon.svg" type="image/svg+xml">' in login.text
        icon = stranger.get("/favicon.ico")  # what a browser asks for before it reads the page
        assert icon.status_code == 301 and icon.headers["location"] == "/portal/static/favicon.svg"
        svg = stranger.get("/static/favicon.svg")
        assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
        wrong = stranger.post("/login", data={"password": "guess", "next": "/"})
        assert wrong.status_code == 401 and "Wrong password" in wrong.text
        assert "avp_session" not in stranger.cookies
        assert stranger.get("/").status_code == 303, "still logged out"


def test_a_logged_in_person_posts_forms_only_from_the_portals_own_pages(behind_nginx: Portal) -> None:
    with logged_in(behind_nginx) as browser:
        session = next(c for c in browser.cookies.jar if c.name == "avp_session")
        assert session.path == "/portal/" and session.has_nonstandard_attr("HttpOnly")
        form = {
            "prompt": "a blue square",
            "mode": "quality",
            "resolution": "256x160",
            "fps": "24",
            "num_frames": "25",
            "steps": "1",
        }
        for other_site in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            forged = browser.post("/jobs", data=form, headers=other_site)
            assert forged.status_code == 403 and "the portal at its own address" in forged.text  # a page says why
        assert browser.get("/api/jobs").json()["jobs"] == [], "nothing was created"
        made = browser.post("/jobs", data=form, headers={"HX-Request": "true"})
        assert made.status_code == 200 and made.headers["HX-Redirect"].startswith("/portal/jobs/")
        job_id = made.headers["HX-Redirect"].rsplit("/", 1)[1]

        html_pages = ["/", "/login", f"/jobs/{job_id}", f"/jobs/{job_id}/panel", "/fragments/jobs", "/no-such-page"]
        for path in html_pages:
            assert_security_headers(browser.get(path, follow_redirects=False))
        index = browser.get("/").text
        links = re.findall(r'(?:href|src|action|hx-get|hx-post|sse-connect)="([^"]+)"', index)
        assert links and all(link.startswith("/portal/") for link in links), links
        assert "<script>" not in index and not re.search(r"<script(?![^>]*\bsrc=)", index), "no inline script"

        out = browser.post("/logout")
        assert out.status_code == 200 and out.url.path == "/portal/login"
        assert browser.get("/", follow_redirects=False).status_code == 303


def test_the_api_and_its_event_stream_work_through_nginx_with_a_token(behind_nginx: Portal) -> None:
    with behind_nginx.client() as client:
        submitted = client.post(
            "/api/jobs", json={"prompt": "a red ball bouncing with clicks", "mode": "quality", **STREAMED_JOB}
        )
    job = submitted.json()
    assert submitted.status_code == 201 and submitted.headers["location"] == f"/portal/api/jobs/{job['id']}"
    assert job["links"]["page"] == f"/portal/jobs/{job['id']}"
    assert job["links"]["events"] == f"/portal/api/jobs/{job['id']}/events"
    first_step_status = None
    types = []
    heartbeats = 0
    url = behind_nginx.base_url + job["links"]["events"].removeprefix("/portal")
    with (
        httpx.Client(timeout=60, headers=behind_nginx.auth_headers) as client,
        connect_sse(client, "GET", url) as source,
    ):
        assert source.response.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in source.response.headers, "event streams must not be gzipped"
        for sse in source.iter_sse():
            if sse.event == "message" and not sse.data:  # a heartbeat comment, as httpx-sse reports it
                heartbeats += 1
                continue
            types.append(sse.event)
            if sse.event == "step" and first_step_status is None:
                first_step_status = behind_nginx.job(job["id"])["status"]
    assert first_step_status == "running", "events arrive while the job runs, not all at the end"
    assert types[-2:] == ["succeeded", "end"] and types.count("step") == STREAMED_JOB["steps"]
    assert heartbeats >= 1, "heartbeats pass the proxy too"
    with behind_nginx.client() as client:
        video = client.get(f"/api/jobs/{job['id']}/video?download=true")
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.headers["content-disposition"] == f'attachment; filename="{job["id"]}.mp4"'


def test_nginx_refuses_bodies_above_the_upload_limit(behind_nginx: Portal) -> None:
    with behind_nginx.client() as client:
        body = b"x" * (21 * 1024 * 1024)
        response = client.post("/api/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_the_session_cookie_is_secure_when_a_trusted_proxy_says_https(make_portal) -> None:
    portal = make_portal(**secured_env(AVP_ROOT_PATH="", **NO_JOBS))
    with httpx.Client(base_url=portal.direct_url, headers={"X-Forwarded-Proto": "https"}) as client:
        response = client.post("/login", data={"password": PASSWORD, "next": "/"}, follow_redirects=False)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"].lower()
    assert "avp_session=" in cookie and "; secure" in cookie and "httponly" in cookie and "samesite=lax" in cookie


def test_a_full_queue_and_a_hasty_client_get_429_with_retry_after(make_portal) -> None:
    portal = make_portal(AVP_MAX_QUEUE="1", AVP_SUBMIT_PER_MINUTE="3")
    running = portal.submit(**LONG_JOB)
    portal.wait(running["id"], {"running"})
    portal.submit(steps=1)  # waits: the queue is now full
    with portal.client() as client:
        full = client.post("/api/jobs", json={"prompt": "one too many"})
        assert full.status_code == 429 and "queue is full" in full.json()["detail"]
        assert int(full.headers["retry-after"]) > 0
        hasty = client.post("/api/jobs", json={"prompt": "and another"})
        assert hasty.status_code == 429 and "Too many submits" in hasty.json()["detail"]
        assert 0 < int(hasty.headers["retry-after"]) <= 20
        assert len(client.get("/api/jobs").json()["jobs"]) == 2
        client.post(f"/api/jobs/{running['id']}/cancel", json={})


def test_wrong_passwords_are_slowed_down_then_refused_for_a_while(make_portal) -> None:
    portal = make_portal(**secured_env(AVP_ROOT_PATH="", **NO_JOBS))
    with httpx.Client(base_url=portal.base_url, timeout=30) as client:
        statuses = []
        began = time.monotonic()
        for _ in range(5):
            statuses.append(client.post("/login", data={"password": "guess", "next": "/"}).status_code)
        took = time.monotonic() - began
        assert statuses == [401, 401, 401, 401, 429]  # three free failures, then a doubling wait
        assert took >= 2.0, "each wrong password costs the guesser time"
        locked = client.post("/login", data={"password": PASSWORD, "next": "/"})
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
        assert "avp_session" not in client.cookies
