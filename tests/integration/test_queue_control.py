"""Scripts' submits and the queue, against a real portal (uvicorn, SQLite, runner processes): Idempotency-Key,
Prefer: wait, pause and resume, a move to the front, cancel what waits, queue places and times, a restart."""

from __future__ import annotations

from typing import Any

import httpx

from app import sse_names
from tests.portal import LONG_JOB, TINY_JOB, Portal

QUICK = {**TINY_JOB, "mode": "quality"}


def post(portal: Portal, path: str, **kwargs: Any) -> httpx.Response:
    # A JSON body: what the CSRF rule lets an API client post without a token.
    with portal.client() as c:
        return c.post(path, json={}, **kwargs)


def queue(portal: Portal) -> dict[str, Any]:
    with portal.client() as c:
        return c.get("/api/queue").raise_for_status().json()


def places(portal: Portal) -> list[tuple[str, int]]:
    return [(job["id"], job["queue_position"]) for job in queue(portal)["queued"]]


def field_errors(response: httpx.Response) -> list[str]:
    return [error["field"] for error in response.json()["errors"]]


def test_an_idempotency_key_sent_again_returns_the_first_job_and_another_body_is_refused(portal: Portal) -> None:
    assert post(portal, "/api/queue/pause").json()["paused"]  # the jobs here need not run
    body = {"prompt": "a red ball bouncing with clicks", **QUICK}
    with portal.client() as c:
        first = c.post("/api/jobs", json=body, headers={"Idempotency-Key": "retry-1"})
        assert first.status_code == 201, first.text
        # the same body, its keys in another order: the same request
        again = c.post("/api/jobs", json=dict(reversed(body.items())), headers={"Idempotency-Key": "retry-1"})
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        assert again.headers["location"] == first.headers["location"]
        jobs = c.get("/api/jobs").json()["jobs"]
        assert [job["id"] for job in jobs] == [first.json()["id"]], "one job, however often it was sent"

        other = c.post("/api/jobs", json={**body, "seed": 7}, headers={"Idempotency-Key": "retry-1"})
        assert other.status_code == 422 and field_errors(other) == ["Idempotency-Key"], other.text
        too_long = c.post("/api/jobs", json=body, headers={"Idempotency-Key": "k" * 201})
        assert too_long.status_code == 400 and field_errors(too_long) == ["Idempotency-Key"], too_long.text
        fresh = c.post("/api/jobs", json=body, headers={"Idempotency-Key": "retry-2"})
        assert fresh.status_code == 201 and fresh.json()["id"] != first.json()["id"]
        assert len(c.get("/api/jobs").json()["jobs"]) == 2, "a refused key made no job"

    cancelled = post(portal, "/api/queue/cancel-queued").json()["cancelled"]
    assert cancelled == [first.json()["id"], fresh.json()["id"]]
    assert queue(portal)["queued"] == []


def test_prefer_wait_answers_with_the_finished_job_or_the_job_as_it_is_when_the_wait_is_over(portal: Portal) -> None:
    with portal.client(timeout=90) as c:
        quick = c.post(
            "/api/jobs", json={"prompt": "a red ball bouncing with clicks", **QUICK}, headers={"Prefer": "wait=60"}
        )
        assert quick.status_code == 201, quick.text
        assert quick.json()["status"] == "succeeded" and quick.json()["links"]["video"]
        assert quick.headers["preference-applied"] == "wait=60"

        long = c.post("/api/jobs", json={"prompt": "a long clip", **LONG_JOB, "mode": "quality"})
        portal.wait(long.json()["id"], {"running"})
        waited = c.get(f"/api/jobs/{long.json()['id']}", headers={"Prefer": "respond-async, wait=1"})
        assert waited.json()["status"] == "running" and waited.headers["preference-applied"] == "wait=1"
        assert waited.json()["eta_finish_s"] is not None and waited.json()["queue_position"] is None

        for bad in ("wait=61", "wait=100000", "wait=soon", "wait=-1"):
            refused = c.post("/api/jobs", json={"prompt": "never made"}, headers={"Prefer": bad})
            assert refused.status_code == 400 and field_errors(refused) == ["Prefer"], refused.text
        assert len(c.get("/api/jobs").json()["jobs"]) == 2, "a bad Prefer header made no job"
        c.post(f"/api/jobs/{long.json()['id']}/cancel", json={})


def test_a_paused_queue_lets_the_running_job_finish_and_starts_the_next_only_when_resumed(portal: Portal) -> None:
    running = portal.submit(**QUICK)["id"]
    portal.wait(running, {"running", "succeeded"})
    paused = post(portal, "/api/queue/pause").json()
    assert paused["paused"] is True
    waiting = portal.submit(**QUICK)["id"]
    assert portal.wait(running)["status"] == "succeeded", "the running job finishes"
    job = portal.job(waiting)
    assert job["status"] == "queued" and job["queue_position"] == 1
    assert job["eta_start_s"] is None, "no start time while paused"

    assert post(portal, "/api/queue/resume").json()["paused"] is False
    assert portal.wait(waiting)["status"] == "succeeded"


def test_queue_positions_follow_a_move_to_the_front_and_the_order_and_pause_survive_a_restart(make_portal) -> None:
    portal = make_portal()
    learned = portal.submit(**QUICK)["id"]  # a run to learn from: the queued jobs' times are then known
    portal.wait(learned)
    post(portal, "/api/queue/pause")
    a, b, c = (portal.submit(**QUICK, prompt=f"clip {name}")["id"] for name in "abc")
    assert places(portal) == [(a, 1), (b, 2), (c, 3)]
    assert [portal.job(job_id)["queue_position"] for job_id in (a, b, c)] == [1, 2, 3]

    rows = portal.stream("/events/jobs")
    assert next(rows).event == sse_names.JOB_LIST
    panels = portal.stream(f"/events/jobs/{a}")  # a's page
    assert "Number 1 in the queue" in next(panels).data
    moved = post(portal, f"/api/jobs/{c}/prioritize")
    assert moved.status_code == 200 and moved.json()["queue_position"] == 1
    assert places(portal) == [(c, 1), (a, 2), (b, 3)]
    pushed = ""
    while f'id="job-{b}"' not in pushed:  # the list's stream shows every queued job's new place
        pushed = next(rows).data
    assert "#3 in queue" in pushed
    rows.close()
    moved_panel = next(panels)  # a's page follows without a new event of a's: the push has no id
    assert "Number 2 in the queue" in moved_panel.data and moved_panel.event == sse_names.JOB_PANEL
    panels.close()
    with portal.client() as client:
        assert f"/jobs/{c}/prioritize" not in client.get("/").text.split(f'id="job-{a}"')[0], "#1 has no button"

    portal.stop()
    again = make_portal(data_dir=portal.data_dir)
    state = queue(again)
    assert state["paused"] is True and [job["id"] for job in state["queued"]] == [c, a, b]
    assert [job["queue_position"] for job in state["queued"]] == [1, 2, 3]

    resumed = post(again, "/api/queue/resume").json()
    times = [(job["eta_start_s"], job["eta_finish_s"]) for job in resumed["queued"] + resumed["running"]]
    assert all(start is None or finish is not None for start, finish in times)
    ended = {job_id: again.wait(job_id) for job_id in (a, b, c)}
    assert all(job["status"] == "succeeded" for job in ended.values())
    starts = sorted(ended, key=lambda job_id: ended[job_id]["started_at"])
    assert starts == [c, a, b], "they ran in the queue's order"
    refused = post(again, f"/api/jobs/{a}/prioritize")
    assert refused.status_code == 409 and "not queued" in refused.json()["detail"]


def test_queued_jobs_show_their_times_once_the_queue_has_learned_and_the_pages_offer_the_controls(
    portal: Portal,
) -> None:
    portal.wait(portal.submit(**QUICK)["id"])
    long = portal.submit(**LONG_JOB, prompt="holds the worker")["id"]
    portal.wait(long, {"running"})
    first, second = (portal.submit(**QUICK, prompt=f"then {n}")["id"] for n in (1, 2))
    assert (portal.job(first)["queue_position"], portal.job(second)["queue_position"]) == (1, 2)
    state = queue(portal)  # one read, one moment: each job starts as the one before it should finish
    one, two = state["queued"]
    assert 0 < one["eta_start_s"] < one["eta_finish_s"] <= two["eta_start_s"] + 0.1 < two["eta_finish_s"]
    (running,) = state["running"]
    assert running["id"] == long and running["queue_position"] is None and running["eta_start_s"] is None
    assert abs(running["eta_finish_s"] - state["queued"][0]["eta_start_s"]) <= 0.2

    with portal.form_client() as browser:
        page = browser.get(f"/jobs/{second}").text
        assert "Number 2 in the queue" in page and "should start in about" in page
        home = browser.get("/").text
        assert 'id="queue-pause-button"' in home and "#2 in queue" in home
        assert browser.post("/queue/pause", headers={"hx-request": "true"}).status_code == 204
        assert 'id="queue-resume-button"' in browser.get("/").text
        assert browser.post(f"/jobs/{second}/prioritize", headers={"hx-request": "true"}).status_code == 204
        assert places(portal) == [(second, 1), (first, 2)]
        assert "no start time yet" in browser.get(f"/jobs/{first}").text
    with portal.client() as client:  # a form posted from another site is refused (Fetch Metadata)
        assert client.post("/queue/resume", data={}, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert queue(portal)["paused"] is True
    assert post(portal, "/api/queue/cancel-queued").json()["cancelled"] == [second, first]
    post(portal, f"/api/jobs/{long}/cancel")
