"""Several runner slots on one host (AVP_GPUS=cpu:2), against a real portal: two demo jobs at once, one on each
slot; per-slot admission (cpu0's memory setting holds a small job, not a large one, which cpu1 takes, and a job
no slot could hold is refused); a slot's runner killed mid-job; the portal killed with both slots busy; bad
AVP_GPUS values stopping the start.

The shared portal's slots: cpu0 with 1.3 GiB, cpu1 with 4 GiB. The demo's quick jobs are predicted to peak at
1.14 GiB on a CPU (both slots hold them), LONG_JOB at 1.43 GiB (cpu1 alone), 2048x2048 at 5.1 GiB (neither).
"""

from __future__ import annotations

import os
import signal
from datetime import datetime
from pathlib import Path

from tests.integration.test_lifecycle import wait_until_gone
from tests.portal import LONG_JOB, Portal, runner_processes, wait_for

SHARED_PORTAL_ENV = {"AVP_GPUS": "cpu:2", "AVP_SLOT_MEMORY_GB": "1.3,4"}
QUICK = {"steps": 2}  # a demo job of a few seconds, 1.14 GiB: either slot holds it
SMALL_BUT_LONG = {"steps": 100}  # the demo's default size, 1.14 GiB, for minutes on a CPU: either slot
HUGE = {"width": 2048, "height": 2048, "num_frames": 241, "steps": 1}  # 5.1 GiB: no slot


def health(portal: Portal) -> dict:
    with portal.client() as c:
        return c.get("/healthz").raise_for_status().json()


def cancel(portal: Portal, job_id: str) -> None:
    with portal.client() as c:
        c.post(f"/api/jobs/{job_id}/cancel", json={}).raise_for_status()


def at(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def test_two_slots_run_two_jobs_at_once_each_runner_seeing_its_slot(shared_portal: Portal) -> None:
    slots = health(shared_portal)["worker"]["slot_states"]
    assert [(s["name"], s["device"], s["card"], s["total_gib"]) for s in slots] == [
        ("cpu0", "cpu", None, 1.3),
        ("cpu1", "cpu", None, 4.0),
    ]
    for slot in slots:  # each slot's spare: no card, its half of the cores as torch threads
        environ = dict(
            entry.split("=", 1)
            for entry in Path(f"/proc/{slot['spare_pid']}/environ").read_text().split("\0")
            if "=" in entry
        )
        assert environ["CUDA_VISIBLE_DEVICES"] == "" and environ["OMP_NUM_THREADS"] == str(max(1, os.cpu_count() // 2))

    first, second = shared_portal.submit(**QUICK, seed=1), shared_portal.submit(**QUICK, seed=2)
    done = [shared_portal.wait(job["id"], timeout=120) for job in (first, second)]
    assert [job["status"] for job in done] == ["succeeded", "succeeded"]
    assert sorted(job["slot"] for job in done) == ["cpu0", "cpu1"]
    # They overlapped: each started before the other finished (the portal's own records of when)
    a, b = done
    assert at(a["started_at"]) < at(b["finished_at"]) and at(b["started_at"]) < at(a["finished_at"])
    # Their streams are as with one slot: previews, the result, the end
    types = [sse.event for sse in shared_portal.events(b["id"])]
    assert types[:2] == ["queued", "running"] and "preview" in types and types[-3:] == ["result", "succeeded", "end"]


def test_a_job_one_slot_cannot_hold_goes_to_the_other_and_waits_for_it_while_smaller_jobs_pass(
    shared_portal: Portal,
) -> None:
    big = shared_portal.submit(**LONG_JOB)
    shared_portal.wait(big["id"], {"running"})
    assert shared_portal.job(big["id"])["slot"] == "cpu1", "cpu0 is free but cannot hold it"
    with shared_portal.client() as c:
        assert 'on <span class="slot">cpu1</span>' in c.get(f"/jobs/{big['id']}").text, "its page says where it runs"

    waiting = shared_portal.submit(**LONG_JOB, seed=5)  # cpu0 is free and too small, cpu1 busy: it waits
    wait_for(lambda: health(shared_portal)["worker"]["waiting_for_room"] == [waiting["id"]], 30, "a job waiting")
    small = shared_portal.submit(**QUICK)  # behind it, and cpu0 holds it: it passes
    assert shared_portal.wait(small["id"], timeout=120)["status"] == "succeeded"
    assert shared_portal.job(small["id"])["slot"] == "cpu0"
    assert shared_portal.job(waiting["id"])["status"] == "queued"

    with shared_portal.client() as c:
        queue = c.get("/api/queue").json()
    assert [(job["id"], job["slot"]) for job in queue["running"]] == [(big["id"], "cpu1")]
    assert [job["id"] for job in queue["queued"]] == [waiting["id"]]

    cancel(shared_portal, big["id"])  # cpu1 frees: the waiting job starts there
    assert shared_portal.wait(big["id"])["status"] == "cancelled"
    started = shared_portal.wait(waiting["id"], {"running"})
    assert started["slot"] == "cpu1"
    cancel(shared_portal, waiting["id"])
    assert shared_portal.wait(waiting["id"])["status"] == "cancelled"

    with shared_portal.client() as c:
        refused = c.post("/api/jobs", json={"prompt": "a red ball", "mode": "quality", **HUGE})
    assert refused.status_code == 400, refused.text
    message = refused.json()["errors"][0]["message"]
    assert "more than any runner slot has (cpu0 1.3 GiB, cpu1 4.0 GiB)" in message and "AVP_SLOT_MEMORY_GB" in message


def test_a_slots_runner_killed_mid_job_fails_that_job_alone_and_the_slot_takes_the_next(shared_portal: Portal) -> None:
    killed, other = shared_portal.submit(**SMALL_BUT_LONG, seed=3), shared_portal.submit(**SMALL_BUT_LONG, seed=4)
    for job in (killed, other):
        shared_portal.wait_for_event(job["id"], "step", timeout=120)
    slot = shared_portal.job(killed["id"])["slot"]
    job_dir = shared_portal.job_dir(killed["id"])
    for pid in runner_processes(job_dir):
        os.kill(pid, signal.SIGKILL)
    failed = shared_portal.wait(killed["id"])
    assert failed["status"] == "failed" and "killed by SIGKILL" in failed["error"]["message"], "as with one slot"
    assert shared_portal.job(other["id"])["status"] == "running", "the other slot's job goes on"

    following = shared_portal.submit(**QUICK)
    assert shared_portal.wait(following["id"], timeout=120)["status"] == "succeeded"
    assert shared_portal.job(following["id"])["slot"] == slot
    cancel(shared_portal, other["id"])
    assert shared_portal.wait(other["id"])["status"] == "cancelled"


def test_a_portal_killed_with_both_slots_busy_reruns_each_job_once(make_portal) -> None:
    first = make_portal(AVP_GPUS="cpu:2")
    # Killed at their first steps: 12 steps leave seconds of each first attempt; the reruns do all 12.
    jobs = [first.submit(steps=12, seed=seed) for seed in (1, 2)]
    for job in jobs:
        first.wait_for_event(job["id"], "step", timeout=120)
    assert {first.job(job["id"])["slot"] for job in jobs} == {"cpu0", "cpu1"}
    first.stop(signal.SIGKILL)
    for job in jobs:
        wait_until_gone(first.job_dir(job["id"]), timeout=60)  # SIGTERM lands between steps of one thread

    second = make_portal(data_dir=first.data_dir, AVP_GPUS="cpu:2")
    for job in jobs:  # a liveness bound, not a speed check
        rerun = second.wait(job["id"], timeout=300)
        assert rerun["status"] == "succeeded" and rerun["attempts"] == 2
        types = [e.event for e in second.events(job["id"])]
        assert types.count("running") == 2 and types.index("interrupted") < types.index("queued", 1)


def test_bad_slot_settings_stop_the_start_naming_the_setting(tmp_path: Path) -> None:
    for env, words in (
        ({"AVP_GPUS": "cpu:0"}, "cpu:N takes a whole number of CPU slots"),
        ({"AVP_GPUS": "first"}, "must be auto, a comma-separated list of card numbers"),
        ({"AVP_GPUS": "cpu:2", "AVP_SLOT_MEMORY_GB": "1,2,3"}, "one per slot (2 here)"),
    ):
        refused = Portal(data_dir=tmp_path / "data", env=env).refused()
        assert refused.returncode == 2 and words in refused.stderr, refused.stderr
    assert not (tmp_path / "data").exists(), "refused before touching the data directory"
