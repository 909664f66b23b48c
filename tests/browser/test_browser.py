"""A person in a real browser (Debian's chromium driven by Playwright) makes a clip and watches it arrive."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Browser, Page, expect

from app.passwords import hash_password
from tests import upload_corpus as corpus
from tests.portal import Portal, runner_processes

pytestmark = pytest.mark.browser

PASSWORD = "a long browser password"
TOKEN = "browser-test-token-0123456789"


def choose_quality_mode(page) -> None:
    """Switch the create form to quality mode (these tests size their clips by steps); the form redraws with them."""
    page.select_option("select[name=mode]", "quality")
    page.locator("input[name=steps]").wait_for()


def test_submitting_the_form_shows_live_progress_then_a_playable_video(portal: Portal, browser: Browser) -> None:
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(portal.base_url + "/")
    choose_quality_mode(page)
    page.fill("textarea[name=prompt]", "a green ball moving right with a high beep")
    page.select_option("select[name=resolution]", "512x320")
    page.select_option("select[name=num_frames]", "97")
    page.fill("input[name=steps]", "8")  # ~2 s a step at this size on a CPU: the 0.1 s polls see several
    page.click("button[type=submit]")
    page.wait_for_url("**/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]

    percents, statuses = watch_progress_until_the_video(page)
    assert page.locator("#job-video").count() == 1, f"no video; statuses seen {statuses}"
    in_between = {p for p in percents if 0 < p < 100}
    assert len(in_between) >= 2, f"progress did not move live: {sorted(set(percents))}"
    assert "running" in statuses
    assert abs(video_duration(page) - 97 / 24) < 0.1
    assert page.locator("#job-status").inner_text() == "succeeded"
    # Everything the job page asked for after its own document (the stream may open before
    # wait_for_url returns, so count from the document rather than from a moment in time).
    after_page = requests[len(requests) - requests[::-1].index(page.url) :]
    files = ("/preview", "/video", "/poster", "/static/")
    fetched = [url for url in after_page if not any(part in url for part in files)]
    assert fetched == [f"{portal.base_url}/events/jobs/{job_id}"], "the stream pushes the panel: nothing re-GETs it"

    page.goto(portal.base_url + "/")
    assert page.locator("#job-cards .job").count() == 1
    page.close()


def video_duration(page: Page, timeout: float = 20) -> float:
    """The <video>'s duration once its metadata loaded (polled: the page's CSP forbids wait_for_function's eval)."""
    deadline = time.monotonic() + timeout
    while page.evaluate("document.querySelector('#job-video').readyState") < 1:
        assert time.monotonic() < deadline, "the video never loaded its metadata"
        time.sleep(0.1)
    return page.evaluate("document.querySelector('#job-video').duration")


def watch_progress_until_the_video(page: Page, timeout: float = 120) -> tuple[set[float], set[str]]:
    """Poll the job page as a person watching it would: the percentages and statuses shown before the video."""
    percents: set[float] = set()
    statuses: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and page.locator("#job-video").count() == 0:
        if page.locator("#job-progress").count():
            percents.add(float(page.locator("#job-progress").get_attribute("value") or 0))
            statuses.add(page.locator("#job-status").inner_text())
        time.sleep(0.1)
    return percents, statuses


@pytest.mark.parametrize("proxy_kind", ["nginx", "caddy"])
def test_through_a_proxy_under_a_sub_path_a_person_logs_in_makes_a_clip_and_cancels_another(
    make_portal, make_proxy, browser: Browser, proxy_kind: str
) -> None:
    portal = make_portal(AVP_PASSWORD_HASH=hash_password(PASSWORD), AVP_API_TOKEN=TOKEN, AVP_ROOT_PATH="/portal")
    proxy = make_proxy(proxy_kind, portal)
    context = browser.new_context()
    page = context.new_page()
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if r.resource_type == "eventsource" else None)
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)

    page.goto(proxy.base_url + "/")
    page.wait_for_url("**/portal/login?next=*")
    page.fill("input[name=password]", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(proxy.base_url + "/")

    # A clip, watched while it is made.
    choose_quality_mode(page)
    page.fill("textarea[name=prompt]", "a green ball moving right with a high beep")
    page.select_option("select[name=num_frames]", "49")
    page.fill("input[name=steps]", "40")
    page.click("#create-form button[type=submit]")
    page.wait_for_url("**/portal/jobs/*")
    percents, statuses = watch_progress_until_the_video(page)
    assert page.locator("#job-video").count() == 1, f"no video; statuses seen {statuses}"
    assert len({p for p in percents if 0 < p < 100}) >= 2, f"progress did not move live: {sorted(percents)}"
    assert "running" in statuses
    assert abs(video_duration(page) - 49 / 24) < 0.1

    # A second clip, cancelled while it runs.
    page.goto(proxy.base_url + "/")
    choose_quality_mode(page)
    page.fill("textarea[name=prompt]", "a clip nobody will see")
    page.fill("input[name=steps]", "100")
    page.click("#create-form button[type=submit]")
    page.wait_for_url("**/portal/jobs/*")
    cancelled_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-status")).to_have_text("running", timeout=60000)
    page.click("#cancel-button")
    expect(page.locator("#job-status")).to_have_text("cancelled", timeout=20000)
    assert not runner_processes(portal.job_dir(cancelled_id))

    # More than six jobs listed: the list still lives on one stream (browsers allow six connections a host).
    with portal.client() as api:
        queued = [
            api.post("/api/jobs", json={"prompt": f"queued clip {i}", "mode": "quality", "steps": 1}).json()
            for i in range(6)
        ]
        streams.clear()
        page.goto(proxy.base_url + "/")
        assert page.locator("#job-cards .job").count() == 8
        page.wait_for_timeout(500)  # time for the page's stream to connect
        api.post(f"/api/jobs/{queued[-1]['id']}/cancel")
        expect(page.locator(f"#job-{queued[-1]['id']} .badge")).to_have_text("cancelled", timeout=10000)
        assert streams == [proxy.base_url + "/events/jobs"], "one stream for the whole page"
        for job in queued[:-1]:
            api.post(f"/api/jobs/{job['id']}/cancel")
    page.click(f"#job-{queued[0]['id']} a.prompt")
    page.wait_for_url(f"**/portal/jobs/{queued[0]['id']}")
    assert page.locator("#job-status").inner_text() in ("running", "cancelled", "succeeded")
    assert not blocked, f"the CSP blocked something: {blocked}"
    context.close()


def test_choosing_an_image_uploads_it_with_a_preview_and_the_job_starts_from_it(portal: Portal, browser: Browser):
    page = browser.new_page()
    page.goto(portal.base_url + "/")
    page.fill("textarea[name=prompt]", "the photo comes alive")
    photo = corpus.encode(corpus.photo(), "JPEG")
    page.set_input_files("input[name=file]", files=[{"name": "photo.jpg", "mimeType": "image/jpeg", "buffer": photo}])
    deadline = time.monotonic() + 20  # polled: the page's CSP forbids wait_for_function's eval
    while not page.evaluate("document.querySelector('#image-field img')?.naturalWidth > 0"):
        assert time.monotonic() < deadline, "the uploaded image's preview never appeared"
        time.sleep(0.1)
    upload_id = page.locator("input[name=image_upload_id]").get_attribute("value")
    page.click("#create-form button[type=submit]")
    page.wait_for_url("**/jobs/*")

    job = portal.job(page.url.rsplit("/", 1)[1])
    assert job["request"]["image_upload_id"] == upload_id
    page.close()


def test_the_job_list_puts_a_new_job_on_top_and_follows_its_card_from_its_stream_alone(
    portal: Portal, browser: Browser
) -> None:
    older = portal.wait(portal.submit(steps=1, prompt="an older clip")["id"])
    page = browser.new_page()
    requests: list[str] = []
    # Pictures aside (a finished card's poster, a running card's latest preview), nothing is fetched.
    page.on("request", lambda r: requests.append(r.url) if r.resource_type != "image" else None)
    page.goto(portal.base_url + "/")
    expect(page.locator("#job-cards .job")).to_have_count(1)
    page.wait_for_timeout(500)  # time for the page's stream to connect
    requests.clear()

    job = portal.submit(steps=30, prompt="a clip that appears by itself")
    card = page.locator(f"#job-{job['id']}")
    expect(page.locator("#job-cards .job").first).to_have_id(f"job-{job['id']}", timeout=10000)
    expect(card.locator(".badge")).to_have_text("running", timeout=60000)
    percents: set[str] = set()
    while card.locator(".badge").inner_text() == "running":
        shown = re.search(r"\d+%", card.inner_text())  # read at once: the card may be replaced between two reads
        percents.add(shown[0] if shown else "")
        time.sleep(0.1)
    expect(card.locator(".badge")).to_have_text("succeeded")
    assert len(percents) >= 2, f"the card's progress did not move: {percents}"
    expect(page.locator("#job-cards .job")).to_have_count(2)
    expect(page.locator(f"#job-{older['id']} .badge")).to_have_text("succeeded")
    assert requests == [], "cards arrive on the stream; nothing re-fetches the list"
    page.close()


def test_the_api_page_renders_from_the_portals_own_files_under_its_csp_and_tries_a_call(
    make_portal, make_proxy, browser: Browser
) -> None:
    """/schema's Swagger UI behind a proxy under a sub-path, after logging in: nothing from elsewhere or blocked."""
    portal = make_portal(AVP_PASSWORD_HASH=hash_password(PASSWORD), AVP_ROOT_PATH="/portal", AVP_SPARE_RUNNER="off")
    proxy = make_proxy("nginx", portal)
    page = browser.new_context().new_page()
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url))
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    page.goto(proxy.base_url + "/schema")
    page.wait_for_url("**/portal/login?next=%2Fschema")  # the same rule as the API's: log in first
    page.fill("input[name=password]", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(proxy.base_url + "/schema")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible(timeout=20000)
    assert page.locator(".opblock-summary-path").all_inner_texts().count("/api/jobs/{job_id}/cancel") == 1
    assert operations.count() >= 10

    models = page.locator("#operations-jobs-ApiModelsListModels")  # Try it out: the API under the root path
    models.locator(".opblock-summary").click()
    models.locator(".try-out__btn").click()
    models.locator(".execute").click()
    expect(models.locator(".live-responses-table tbody .response-col_status")).to_have_text("200", timeout=20000)
    assert proxy.base_url + "/api/models" in fetched

    assert all(url.startswith(proxy.base_url + "/") for url in fetched), [u for u in fetched if proxy.base_url not in u]
    assert not blocked, f"the CSP blocked something: {blocked}"
    assert not errors, errors
    page.context.close()


def test_a_person_pauses_the_queue_moves_a_job_to_the_front_and_resumes_from_the_job_list(
    portal: Portal, browser: Browser
) -> None:
    page = browser.new_page()
    page.goto(portal.base_url + "/")
    page.wait_for_timeout(500)  # time for the page's stream to connect
    page.click("#queue-pause-button")
    expect(page.locator("#queue-resume-button")).to_be_visible(timeout=10000)  # pushed by the list's stream
    expect(page.locator("#queue-state")).to_contain_text("Queue paused")

    first, second = (portal.submit(steps=2, prompt=f"clip {n}")["id"] for n in (1, 2))
    expect(page.locator(f"#job-{second} .queue-position")).to_have_text("#2 in queue", timeout=10000)
    page.locator(f"#job-{second} .prioritize-button").click()
    expect(page.locator(f"#job-{second} .queue-position")).to_have_text("#1 in queue", timeout=10000)
    expect(page.locator(f"#job-{first} .queue-position")).to_have_text("#2 in queue")
    assert page.locator(f"#job-{second} .prioritize-button").count() == 0, "the first in line has nothing to jump"

    page.click("#queue-resume-button")
    expect(page.locator("#queue-pause-button")).to_be_visible(timeout=10000)
    for job_id in (first, second):
        expect(page.locator(f"#job-{job_id} .badge")).to_have_text("succeeded", timeout=90000)
    assert portal.job(second)["started_at"] < portal.job(first)["started_at"], "the job moved to the front ran first"
    page.close()
