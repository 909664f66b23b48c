"""A person in a real browser (Debian's chromium driven by Playwright) makes a clip and watches it arrive."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests import upload_corpus as corpus
from tests.portal import Portal

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("AVP_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: install Debian's chromium (make test does)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield browser
        browser.close()


def test_submitting_the_form_shows_live_progress_then_a_playable_video(portal: Portal, browser: Browser) -> None:
    page = browser.new_page()
    page.goto(portal.base_url + "/")
    page.fill("textarea[name=prompt]", "a green ball moving right with a high beep")
    page.select_option("select[name=resolution]", "512x288")
    page.select_option("select[name=num_frames]", "97")
    page.fill("input[name=steps]", "60")
    page.click("button[type=submit]")
    page.wait_for_url("**/jobs/*")

    percents: list[float] = []
    statuses: set[str] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and page.locator("#job-video").count() == 0:
        if page.locator("#job-progress").count():
            percents.append(float(page.locator("#job-progress").get_attribute("value") or 0))
            statuses.add(page.locator("#job-status").inner_text())
        time.sleep(0.1)
    assert page.locator("#job-video").count() == 1, f"no video; statuses seen {statuses}"
    in_between = {p for p in percents if 0 < p < 100}
    assert len(in_between) >= 2, f"progress did not move live: {sorted(set(percents))}"
    assert "running" in statuses
    page.wait_for_function("document.querySelector('#job-video').readyState >= 1", timeout=20000)
    duration = page.evaluate("document.querySelector('#job-video').duration")
    assert abs(duration - 97 / 24) < 0.1
    assert page.locator("#job-status").inner_text() == "succeeded"

    page.goto(portal.base_url + "/")
    assert page.locator("#job-rows tr.job").count() == 1
    page.close()


def test_choosing_an_image_uploads_it_with_a_preview_and_the_job_starts_from_it(portal: Portal, browser: Browser):
    page = browser.new_page()
    page.goto(portal.base_url + "/")
    page.fill("textarea[name=prompt]", "the photo comes alive")
    photo = corpus.encode(corpus.photo(), "JPEG")
    page.set_input_files("input[name=file]", files=[{"name": "photo.jpg", "mimeType": "image/jpeg", "buffer": photo}])
    page.wait_for_function("document.querySelector('#image-field img')?.naturalWidth > 0", timeout=20000)
    upload_id = page.locator("input[name=image_upload_id]").get_attribute("value")
    page.click("button[type=submit]")
    page.wait_for_url("**/jobs/*")

    job = portal.job(page.url.rsplit("/", 1)[1])
    assert job["request"]["image_upload_id"] == upload_id
    page.close()
