"""The HTML side over plain HTTP: the form answers with inline errors, pages render, settings can be reused."""

from __future__ import annotations

import re

import pytest

from tests import upload_corpus as corpus
from tests.portal import Portal

HX = {"HX-Request": "true"}


@pytest.fixture
def portal(shared_portal: Portal) -> Portal:
    """One portal for this module (see conftest.py): no test here needs an empty one, or a setting of its own."""
    return shared_portal


def form(**fields: str) -> dict[str, str]:
    """The create form as a browser posts it, in quality mode (its steps keep the jobs short)."""
    return {
        "model": "demo",
        "mode": "quality",
        "prompt": "a blue square moving left",
        "resolution": "256x160",
        "fps": "24",
        "num_frames": "25",
        "steps": "2",
        "guidance_scale": "3",
        "seed": "",
        **fields,
    }


def test_the_create_page_offers_only_valid_choices_and_says_the_demo_is_noise(portal: Portal) -> None:
    with portal.client() as c:
        page = c.get("/").text
    assert "synthetic world" in page and "AVP_MODEL_DIR" in page
    assert 'class="field-error"' not in page and "Macro" not in page, "a fresh form shows no error"
    frames = [int(n) for n in re.findall(r'<option value="(\d+)"[^>]*>[\d.]+ s \(', page)]
    assert frames[0] == 9 and frames[-1] == 481 and all((n - 1) % 8 == 0 for n in frames)
    assert 'src="/static/vendor/htmx-2.0.11.min.js"' in page and 'sse-connect="/events/jobs"' in page
    with portal.client() as c:
        assert c.get("/static/vendor/htmx-ext-sse-2.2.4.min.js").status_code == 200


def test_a_form_with_errors_comes_back_with_each_message_beside_its_field(portal: Portal) -> None:
    with portal.form_client() as c:
        response = c.post("/jobs", data=form(prompt="", resolution="500x160", steps="0", seed="-4"), headers=HX)
        assert response.status_code == 200
        html = response.text
        assert 'id="create-form"' in html
        for field in ("prompt", "width", "steps", "seed"):
            assert f'id="error-{field}"' in html, field
        assert "nearest valid: 480 or 512" in html
        assert c.get("/api/jobs").json()["jobs"] == []


def test_a_valid_form_redirects_to_the_job_page_which_shows_the_result(portal: Portal) -> None:
    with portal.form_client() as c:
        response = c.post("/jobs", data=form(seed="99"), headers=HX)
        assert response.status_code == 200 and response.headers["HX-Redirect"].startswith("/jobs/")
        job_id = response.headers["HX-Redirect"].rsplit("/", 1)[1]
        plain = c.post("/jobs", data=form())
        assert plain.status_code == 303
        portal.cancel(plain.headers["location"].rsplit("/", 1)[1])
        portal.wait(job_id)
        page = c.get(f"/jobs/{job_id}").text
        assert f'sse-connect="/events/jobs/{job_id}"' in page and 'sse-close="end"' in page
        assert f'src="/api/jobs/{job_id}/video"' in page and "Download MP4" in page
        again = c.get(f"/?from_job={job_id}").text
        assert 'name="seed" value="99"' in again and "a blue square moving left" in again


def test_the_job_list_fragment_shows_every_recent_job(portal: Portal) -> None:
    ids = [portal.submit(steps=1, prompt=f"clip {i}")["id"] for i in range(3)]
    with portal.client() as c:
        rows = c.get("/fragments/jobs").text
    assert all(f'id="job-{i}"' in rows for i in ids)
    assert rows.index(ids[2]) < rows.index(ids[0]), "newest first"
    portal.cancel(*ids)


def test_a_deleted_or_unknown_jobs_page_is_an_html_404_page_while_the_api_keeps_json(portal: Portal) -> None:
    job = portal.submit(steps=1)
    with portal.client() as c:
        c.post(f"/api/jobs/{job['id']}/cancel", json={})  # finished sooner than waiting its turn in the queue
        portal.wait(job["id"])
        assert c.delete(f"/api/jobs/{job['id']}").status_code == 204
        for path in (f"/jobs/{job['id']}", "/jobs/" + "0" * 32, "/no-such-page"):
            page = c.get(path)
            assert page.status_code == 404 and page.headers["content-type"].startswith("text/html"), path
            assert 'class="brand"' in page.text and 'id="not-found-detail"' in page.text, "the layout, and why"
            assert 'class="button" href="/"' in page.text, "a way back"
        api = c.get(f"/api/jobs/{job['id']}")
        assert api.status_code == 404 and api.json()["detail"] == f"No job with id {job['id']!r}."


def test_prompts_are_escaped_in_pages(portal: Portal) -> None:
    job = portal.submit(prompt="<script>alert(1)</script>", steps=1)
    with portal.client() as c:
        page = c.get(f"/jobs/{job['id']}").text
        rows = c.get("/fragments/jobs").text
    assert "<script>alert(1)</script>" not in page + rows
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    portal.cancel(job["id"])


def test_the_form_uploads_an_image_shows_a_preview_and_carries_its_id_into_the_job(portal: Portal) -> None:
    with portal.form_client() as c:
        field = c.post("/fragments/upload", files={"file": ('<b>"me".png', corpus.encode(corpus.photo(), "PNG"))}).text
        upload_id = re.search(r'name="image_upload_id" value="([0-9a-f]{32})"', field).group(1)
        assert f'src="/api/uploads/{upload_id}/thumbnail"' in field and "96 x 64" in field
        assert "&lt;b&gt;&#34;me&#34;.png" in field, "the client's filename is escaped"
        refused = c.post("/fragments/upload", files={"file": ("x.png", corpus.SVG)}, headers=HX)
        assert refused.status_code == 200 and 'id="error-file"' in refused.text
        assert "not a JPEG, PNG or WebP" in refused.text

        again = c.post("/jobs", data=form(prompt="", image_upload_id=upload_id, image_strength="0.7"), headers=HX).text
        assert f'name="image_upload_id" value="{upload_id}"' in again and 'value="0.7"' in again
        response = c.post("/jobs", data=form(image_upload_id=upload_id, image_strength="0.7"), headers=HX)
        job_id = response.headers["HX-Redirect"].rsplit("/", 1)[1]
        request = c.get(f"/api/jobs/{job_id}").json()["request"]
    assert (request["image_upload_id"], request["image_strength"]) == (upload_id, 0.7)
    assert (portal.job_dir(job_id) / "image.png").is_file()
    portal.cancel(job_id)


def test_the_create_form_starts_in_fast_mode_without_steps_or_guidance_and_redraws_for_quality(portal: Portal) -> None:
    with portal.client() as c:
        page = c.get("/").text
        quality = c.get("/fragments/form", params={"model": "demo", "mode": "quality"}).text
    assert re.search(r'<option value="fast"\s+selected', page) and 'id="fast-note"' in page
    assert 'name="steps"' not in page and 'name="guidance_scale"' not in page
    assert re.search(r'<option value="quality"\s+selected', quality) and 'name="steps"' in quality
    assert 'id="fast-note"' not in quality


def test_a_fast_form_makes_a_two_stage_job_whose_page_says_which_stage(portal: Portal) -> None:
    # as a browser without script sends it after choosing fast: the quality form's steps and guidance still in it
    fast = form(mode="fast", resolution="320x192", num_frames="9", steps="30", guidance_scale="5")
    with portal.form_client() as c:
        response = c.post("/jobs", data=fast, headers=HX)
        job_id = response.headers["HX-Redirect"].rsplit("/", 1)[1]
        job = portal.wait(job_id)
        page = c.get(f"/jobs/{job_id}").text
    assert job["status"] == "succeeded", job
    assert (job["request"]["mode"], job["request"]["steps"], job["request"]["guidance_scale"]) == ("fast", None, None)
    assert "stage 2 of 2, step 3/3" in page
    timeline = re.findall(r'<li class="done">([a-z ]+)</li>', page)
    assert timeline[timeline.index("denoise") :][:3] == ["denoise", "upsample", "refine"]
