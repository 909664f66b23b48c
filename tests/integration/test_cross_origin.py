"""CSRF by Fetch Metadata on a real portal: another site's page cannot make a browser change anything, the portal's
own pages and scripts (curl: no Origin, no Sec-Fetch-Site) can, subject to authentication as always."""

from __future__ import annotations

import subprocess

import httpx

from tests.portal import LONG_JOB, Portal

TOKEN = "test-token-0123456789abcdef"
# The create form as a browser posts it: a job long enough to be cancelled before it ends.
FORM = {"model": "demo", "mode": "quality", "prompt": "a blue square", "resolution": "512x288", "fps": "24",
        "num_frames": str(LONG_JOB["num_frames"]), "steps": str(LONG_JOB["steps"])}  # fmt: skip
FORGED = [{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "http://evil.example"}]


def curl_post(url: str, *headers: str) -> tuple[int, str]:
    """A bare `curl -X POST` (no body, no content type), as a person types it: the status and the body."""
    args = ["curl", "-sS", "-X", "POST", "-w", "\n%{http_code}", url]
    for header in headers:
        args += ["-H", header]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout
    body, _, status = out.rpartition("\n")
    return int(status), body


def test_on_loopback_other_sites_pages_are_refused_and_the_portals_own_pages_and_curl_are_not(
    portal: Portal,
) -> None:
    with httpx.Client(base_url=portal.direct_url, timeout=30) as browser:
        for headers in FORGED:
            refused = browser.post("/jobs", data=FORM, headers=headers)  # a page: the person reads why, as a page
            assert refused.status_code == 403 and refused.headers["content-type"].startswith("text/html"), headers
            assert 'id="refused-detail">Refused: this POST came from a page' in refused.text
            assert "the portal at its own address" in refused.text, "says what to do instead"
        assert browser.get("/api/jobs").json()["jobs"] == [], "nothing was created"

        own_page = {"Sec-Fetch-Site": "same-origin", "Origin": portal.direct_url, "HX-Request": "true"}
        made = browser.post("/jobs", data=FORM, headers=own_page)
        assert made.status_code == 200 and made.headers["HX-Redirect"].startswith("/jobs/")
        job_id = made.headers["HX-Redirect"].rsplit("/", 1)[1]
        for headers in FORGED:
            cancel = browser.post(f"/api/jobs/{job_id}/cancel", headers=headers)
            assert cancel.status_code == 403 and "Refused" in cancel.json()["detail"], "the API answers JSON"
            assert browser.delete(f"/api/jobs/{job_id}", headers=headers).status_code == 403
    assert portal.job(job_id)["status"] in ("queued", "running")

    status, body = curl_post(f"{portal.direct_url}/api/jobs/{job_id}/cancel")
    assert status == 202, body
    assert portal.wait(job_id)["status"] == "cancelled"


def test_with_a_token_curl_cancels_and_a_proxied_name_logs_in_and_posts(make_portal) -> None:
    """Behind a proxy the browser's Origin names the proxy's address (portal.lan, its port): AVP_ALLOWED_HOSTS makes
    it the portal's own. Browsers reaching a LAN name over plain HTTP send no Sec-Fetch-Site, only Origin."""
    portal = make_portal(AVP_API_TOKEN=TOKEN, AVP_ALLOWED_HOSTS="portal.lan")
    first, second = portal.submit(**LONG_JOB), portal.submit(**LONG_JOB)
    cancel = f"{portal.direct_url}/api/jobs/{first['id']}/cancel"
    status, body = curl_post(cancel)
    assert status == 401 and "Bearer" in body, "no CSRF refusal, but authentication still"
    status, body = curl_post(cancel, f"Authorization: Bearer {TOKEN}")
    assert status == 202, body
    assert portal.wait(first["id"])["status"] == "cancelled"

    proxied = {"Host": "portal.lan", "Origin": "https://portal.lan:8443"}  # nginx passes $host: no port
    with httpx.Client(base_url=portal.direct_url, timeout=30, headers=proxied) as browser:
        login = {"password": TOKEN, "next": "/"}
        forged = browser.post("/login", data=login, headers={"Origin": "https://evil.example"})
        assert forged.status_code == 403 and "add its host name to AVP_ALLOWED_HOSTS" in forged.text
        assert "avp_session" not in browser.cookies, "no login from another site's page"
        assert browser.post("/login", data=login).status_code == 303
        assert "avp_session" in browser.cookies
        cancelled = browser.post(f"/jobs/{second['id']}/cancel", headers={"HX-Request": "true"})
        assert cancelled.status_code == 200
    assert portal.wait(second["id"])["status"] == "cancelled"
