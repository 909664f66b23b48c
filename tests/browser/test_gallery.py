"""The home page's grid of cards and the job page's player in a real browser (Debian's chromium via Playwright):
columns on a desktop, one on a phone with no sideways scroll, a finished clip playing muted on hover or tap, a tap
elsewhere opening the job, Load more appending the next page, posters that fail to load leaving the placeholder."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from app.job_list import PAGE_SIZE
from tests.job_history import seed_jobs
from tests.portal import Portal, prepare_data_dir

pytestmark = pytest.mark.browser

SEEDED = 30  # finished jobs written into the database: no files, so their posters are missing


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[tuple[Portal, str]]:
    """A portal with SEEDED finished jobs in its history and, newest, one real clip (its video plays)."""
    data_dir = prepare_data_dir(tmp_path_factory.mktemp("gallery") / "data", demo_model_dir)
    seed_jobs(data_dir / "portal.sqlite3", [{"prompt": f"an old clip {i}"} for i in range(SEEDED)])
    portal = Portal(data_dir=data_dir, env={"AVP_SPARE_RUNNER": "off"}).start()
    real = portal.wait(portal.submit(prompt="a green ball moving right", steps=1)["id"])
    assert real["status"] == "succeeded", real
    yield portal, real["id"]
    portal.stop()


def poll(page: Page, expression: str, what: str, timeout: float = 20) -> None:
    """Wait until `expression` is true in the page (polled: the page's CSP forbids wait_for_function's eval)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def playing(job_id: str) -> str:
    """A test that the card's clip plays, muted, and has moved on from its first frame."""
    video = f"document.querySelector('#job-{job_id} .card-media video')"
    return f"(v => !!v && v.muted && !v.paused && v.currentTime > 0)({video})"


COLUMNS = "getComputedStyle(document.querySelector('#job-cards')).gridTemplateColumns.split(' ').length"


def csp_watch(page: Page) -> list[str]:
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    return blocked


def test_on_a_desktop_the_grid_has_columns_a_hovered_clip_plays_muted_and_load_more_appends(
    gallery, browser: Browser
) -> None:
    portal, real = gallery
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    blocked = csp_watch(page)
    page.goto(portal.base_url + "/")
    cards = page.locator("#job-cards .card")
    expect(cards).to_have_count(PAGE_SIZE)
    assert cards.first.get_attribute("id") == f"job-{real}"
    columns = page.evaluate(COLUMNS)
    assert columns >= 3, columns
    # The seeded jobs have no files: their posters fail and are hidden, leaving the placeholder box.
    poll(page, f"document.querySelectorAll('img.poster.missing').length >= {PAGE_SIZE - 1}", "missing posters hidden")

    page.hover(f"#job-{real} .card-media")
    poll(page, playing(real), "the hovered clip did not play muted")
    page.mouse.move(5, 5)
    poll(page, f"!document.querySelector('#job-{real} .card-media video')", "the clip went on after the mouse left")

    page.wait_for_timeout(500)  # time for the page's stream to connect (its first message replaces the page)
    page.click("#load-more-link")
    expect(cards).to_have_count(SEEDED + 1)
    ids = cards.evaluate_all("cards => cards.map(c => c.id)")
    assert len(set(ids)) == len(ids), "no card twice"
    assert page.url == portal.base_url + "/", "appended in place"
    assert page.locator("#load-more-link").count() == 0, "nothing more to load"

    page.click(f"#job-{real} .meta")  # a click on the card, away from its links, opens the job
    page.wait_for_url(f"**/jobs/{real}")
    assert not blocked, blocked
    page.close()


def test_on_a_phone_one_column_fits_the_screen_a_tap_plays_and_a_tap_elsewhere_opens_the_job(
    gallery, browser: Browser
) -> None:
    portal, real = gallery
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto(portal.base_url + "/")
    expect(page.locator("#job-cards .card")).to_have_count(PAGE_SIZE)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "no sideways scroll"
    columns = page.evaluate(COLUMNS)
    assert columns == 1

    page.tap(f"#job-{real} .card-media")
    poll(page, playing(real), "a tap did not play the clip")
    assert page.url == portal.base_url + "/", "the tap played the clip instead of leaving the page"
    page.tap(f"#job-{real} .card-media")
    poll(page, f"!document.querySelector('#job-{real} .card-media video')", "a second tap did not stop it")

    page.tap(f"#job-{real} .meta")
    page.wait_for_url(f"**/jobs/{real}")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, "the job page fits too"
    context.close()


def test_the_job_pages_player_fills_the_width_within_the_window_with_its_poster(gallery, browser: Browser) -> None:
    portal, real = gallery
    page = browser.new_page(viewport={"width": 1400, "height": 700})
    page.goto(f"{portal.base_url}/jobs/{real}")
    video = page.locator("#job-video")
    assert video.get_attribute("poster") == f"/api/jobs/{real}/poster"
    box = video.bounding_box()
    panel = page.locator("#job-panel").bounding_box()
    assert box["width"] >= panel["width"] - 1, "as wide as the page"
    assert box["height"] <= 0.8 * 700 + 1, "never taller than 80 % of the window"
    # Where the window is tall enough, the box has the clip's own aspect (its width and height attributes).
    page.set_viewport_size({"width": 800, "height": 1200})
    box = video.bounding_box()
    job = portal.job(real)["request"]
    assert abs(box["width"] / box["height"] - job["width"] / job["height"]) < 0.02
    for control in ("Download MP4", "Use these settings again", "Delete"):
        expect(page.get_by_text(control, exact=True)).to_be_visible()
    page.close()
