"""Before a job starts, the portal predicts its cost: a job predicted past AVP_MAX_JOB_MINUTES is refused with
the figures, and a queued job shows its predicted duration in the API and on its page and row."""

from __future__ import annotations

import re

from tests.portal import LONG_JOB, Portal

SHARED_PORTAL_ENV = {"AVP_MAX_JOB_MINUTES": ""}  # the product's default limit, which the harness turns off
HUGE = {"width": 2048, "height": 2048, "num_frames": 481, "fps": 24, "steps": 100}


def test_a_huge_cpu_job_is_refused_naming_the_predicted_minutes_the_limit_and_what_to_reduce(
    shared_portal: Portal,
) -> None:
    with shared_portal.client() as c:
        before = c.get("/api/jobs").json()["jobs"]
        response = c.post("/api/jobs", json={"prompt": "a red ball bouncing with clicks", "mode": "quality", **HUGE})
        assert response.status_code == 400, response.text
        [error] = response.json()["errors"]
        assert error["field"] == "request"
        minutes = int(re.search(r"\((\d+) minutes, from first principles\)", error["message"])[1])
        assert minutes > 60 and "on the CPU" in error["message"]
        assert "over the limit of 60 minutes (AVP_MAX_JOB_MINUTES)" in error["message"]
        assert "fewer frames or a smaller size" in error["message"]
        assert c.get("/api/jobs").json()["jobs"] == before, "no job was created"
    with shared_portal.form_client() as browser:  # the create form shows the same refusal above its fields
        form = {
            "prompt": "a red ball",
            "mode": "quality",
            "resolution": "2048x2048",
            "num_frames": "481",
            "fps": "24",
            "steps": "100",
        }
        page = browser.post("/jobs", data=form, headers={"hx-request": "true"})
        assert page.status_code == 200 and 'class="error" role="alert">This job is predicted to take' in page.text
        assert browser.get("/api/jobs").json()["jobs"] == before


def test_a_queued_job_shows_its_predicted_duration(shared_portal: Portal) -> None:
    running = shared_portal.submit(**LONG_JOB)
    queued = shared_portal.submit(steps=2)
    try:
        shared_portal.wait(running["id"], {"running"})
        estimate = shared_portal.job(queued["id"])["estimate"]
        assert shared_portal.job(queued["id"])["status"] == "queued"
        assert estimate["device"] == "cpu" and 0 < estimate["duration_s"] < running["estimate"]["duration_s"]
        assert 0 < estimate["denoise_s"] < estimate["duration_s"] and estimate["disk_bytes"] > 0
        with shared_portal.client() as c:
            page = c.get(f"/jobs/{queued['id']}").text
            card = re.search(rf'<article id="job-{queued["id"]}".*?</article>', c.get("/").text, re.S)[0]
        assert re.search(r"Predicted to take about \d+ (s|min) once it starts, on the\s+CPU", page)
        assert re.search(r"about \d+ (s|min) \(predicted\)", card)
    finally:
        with shared_portal.client() as c:
            for job in (queued, running):
                c.post(f"/api/jobs/{job['id']}/cancel", json={})
        shared_portal.wait(running["id"])
