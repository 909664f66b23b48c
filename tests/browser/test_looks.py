"""How the portal looks to a person, in a real browser (Debian's chromium via Playwright), on a desktop and on a
390 px phone: every page without sideways scroll, the form usable with a thumb, the player as wide as the phone,
a poster on every finished card, and a preview that changes as the clip forms.

Each step saves a screenshot under build/screenshots/ (not kept in git), so a person can look at what the
assertions checked: the home grid empty, running and finished, the job page running (with its preview) and
finished, and the phone's pages.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, BrowserContext, Page, expect

from app.passwords import hash_password
from tests.portal import REPO_ROOT, Portal

pytestmark = pytest.mark.browser

SHOTS = REPO_ROOT / "build" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}  # an iPhone 12-15's CSS viewport
THUMB_PX = 44  # the smallest touch target Apple's and Google's guidelines allow (44 pt, 48 dp)
PASSWORD = "a long password for looking"
# Long enough to be watched while it runs: ~30 steps of a few hundred ms on a 2-core CPU, a preview every 5.
RUNNING_JOB = {
    "prompt": "a red ball moving right with a low hum",
    "mode": "quality",
    "width": 512,
    "height": 288,
    "num_frames": 97,
    "steps": 30,
}

NO_SIDEWAYS_SCROLL = "document.documentElement.scrollWidth <= window.innerWidth"


SHARED_PORTAL_ENV = {"AVP_PASSWORD_HASH": hash_password(PASSWORD), "AVP_API_TOKEN": "looks-token-0123456789abcdef"}


@pytest.fixture(scope="module")
def portal(shared_portal: Portal) -> Portal:
    """One portal for the module (the first test sees it empty), behind a login as off-loopback ones are."""
    return shared_portal


@pytest.fixture(scope="module")
def person(portal: Portal, browser: Browser) -> Iterator[BrowserContext]:
    """A browser session that logged in on a phone, as the login page's screenshot shows."""
    context = browser.new_context()
    page = context.new_page()
    page.set_viewport_size(PHONE)
    page.goto(portal.base_url + "/")
    page.wait_for_url("**/login?next=*")
    fits(page, "login-phone")
    page.fill("input[name=password]", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(portal.base_url + "/")
    page.close()
    yield context
    context.close()


def fits(page: Page, name: str) -> None:
    """The page has no sideways scroll at its width; its screenshot (the whole page) is saved as `name`."""
    page.wait_for_load_state("load")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"{name}.png", full_page=True)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{name}: the page is {overflow} px wider than the window (it scrolls sideways)"


def poll(page: Page, expression: str, what: str, timeout: float = 60) -> object:
    """Wait until `expression` is truthy in the page (polled: the CSP forbids wait_for_function's eval)."""
    deadline = time.monotonic() + timeout
    while not (value := page.evaluate(expression)):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return value


BLOCKED: list[str] = []  # what the pages' CSP refused, for the module's tests to find empty


def open_page(context: BrowserContext, url: str, viewport: dict[str, int]) -> Page:
    page = context.new_page()
    page.on("console", lambda m: BLOCKED.append(m.text) if "Content Security Policy" in m.text else None)
    page.set_viewport_size(viewport)
    page.goto(url)
    return page


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)


def test_the_home_grid_and_the_job_page_look_right_empty_running_and_finished(
    portal: Portal, person: BrowserContext
) -> None:
    home = open_page(person, portal.base_url + "/", DESKTOP)
    expect(home.locator("#job-cards")).to_contain_text("No jobs yet")
    fits(home, "home-empty")

    with portal.client() as api:
        job = api.post("/api/jobs", json=RUNNING_JOB).raise_for_status().json()
    card = home.locator(f"#job-{job['id']}")
    expect(card.locator(".badge")).to_have_text("running", timeout=60000)
    expect(card.locator("progress")).to_be_visible()

    # The job page while it runs: its preview changes as the clip forms.
    page = open_page(person, portal.base_url + f"/jobs/{job['id']}", DESKTOP)
    preview = page.locator("#job-preview")
    first_src = poll(page, "document.querySelector('#job-preview')?.getAttribute('src')", "no preview came")
    poll(page, "(i => i.complete && i.naturalWidth > 0)(document.querySelector('#job-preview'))", "preview drawn")
    first = pixels(preview.screenshot())
    fits(page, "job-running")
    later_src = poll(
        page,
        f"(s => s && s !== {first_src!r} && s)(document.querySelector('#job-preview')?.getAttribute('src'))",
        f"the preview never moved on from {first_src}",
    )
    poll(page, "(i => i.complete && i.naturalWidth > 0)(document.querySelector('#job-preview'))", "preview drawn")
    later = pixels(preview.screenshot())
    assert first.shape == later.shape, "the preview keeps its size between steps"
    change = float(np.abs(first - later).mean())
    assert change > 1.0, f"the preview at {later_src} looks the same as at {first_src} (mean change {change:.2f})"
    # Its card on the home page shows the clip as it forms too (the start of the latest preview).
    forming = card.locator("img.poster.forming")
    expect(forming).to_be_visible()
    poll(
        home,
        f"(i => i && i.complete && i.naturalWidth > 0)(document.querySelector('#job-{job['id']} .forming'))",
        "the running card's preview drawn",
    )
    fits(home, "home-running")
    phone = open_page(person, portal.base_url + f"/jobs/{job['id']}", PHONE)
    expect(phone.locator("#job-preview")).to_be_visible()
    fits(phone, "job-running-phone")
    phone.close()

    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=180000)
    video = page.locator("#job-video")
    expect(video).to_be_visible()
    fits(page, "job-finished")
    page.close()

    # The home grid once it finished: a poster on every finished card, shown, not the empty box.
    expect(card.locator(".badge")).to_have_text("succeeded", timeout=30000)
    home.reload()
    finished = home.locator("#job-cards .card.status-succeeded")
    expect(finished).to_have_count(1)
    poll(home, "[...document.querySelectorAll('#job-cards img.poster')].every(i => i.complete)", "posters loaded")
    for poster in finished.locator("img.poster").all():
        assert poster.is_visible(), "a finished card shows its poster"
        drawn = poster.evaluate("i => i.naturalWidth > 0 && !i.classList.contains('missing')")
        assert drawn, "the poster is a picture, not the empty box"
        box = poster.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 50, box
    fits(home, "home-finished")
    home.close()
    assert not BLOCKED, f"the CSP (no inline script or style) refused something: {BLOCKED}"


def test_on_a_phone_every_page_fits_the_form_takes_a_thumb_and_the_player_fills_the_width(
    portal: Portal, person: BrowserContext
) -> None:
    job = portal.wait(portal.submit(prompt="a blue ball moving left", steps=2)["id"])
    assert job["status"] == "succeeded", job

    home = open_page(person, portal.base_url + "/", PHONE)
    controls = home.locator("#create-form").locator("input:visible, select:visible, textarea:visible, button:visible")
    assert controls.count() >= 5
    small = [
        (control.get_attribute("name") or control.inner_text(), round(control.bounding_box()["height"]))
        for control in controls.all()
        if control.bounding_box()["height"] < THUMB_PX
    ]
    assert not small, f"controls smaller than a thumb ({THUMB_PX} px): {small}"
    fits(home, "home-phone")
    cards = home.locator("#job-cards .card")
    widths = {round(box["width"]) for box in (c.bounding_box() for c in cards.all()) if box}
    assert min(widths) > PHONE["width"] * 0.8, f"one card a row on a phone, not {widths}"
    home.close()

    page = open_page(person, portal.base_url + f"/jobs/{job['id']}", PHONE)
    player = page.locator("#job-video")
    expect(player).to_be_visible()
    width = player.bounding_box()["width"]
    assert width >= PHONE["width"] * 0.9, f"the player is {width:.0f} px wide on a {PHONE['width']} px phone"
    fits(page, "job-finished-phone")
    page.close()

    missing = open_page(person, portal.base_url + "/jobs/no-such-job", PHONE)
    fits(missing, "not-found-phone")
    missing.close()
    bad_filter = open_page(person, portal.base_url + "/?status=lost", PHONE)
    expect(bad_filter.locator("#filter-error")).to_be_visible()
    fits(bad_filter, "bad-filter-phone")
    bad_filter.close()
    assert not BLOCKED, f"the CSP (no inline script or style) refused something: {BLOCKED}"
