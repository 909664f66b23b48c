"""Warm mode (AVP_KEEP_WARM_S): a slot's runner stays after a job with its model loaded, and the next job of that
model runs in it; another model's job, a cancel, the timeout and the shutdown each end it.

Real runner processes on the demo model, driven by the real Supervisor in this process (a recorder stands where
the worker does); tiny jobs.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import anyio
import pytest

from app.runner import Supervisor
from contract import jobdir, protocol
from gpu_runner.resident import WEIGHTS_RESIDENT
from tests.integration.test_spare_runner import Recorder, alive
from tests.portal import LONG_JOB, TINY_JOB, runner_processes, wait_for
from tests.runner_fixtures import write_job

GRACE_S = 5
EXIT_TIMEOUT_S = 30  # a runner let go exits at once; a busy 2-core machine may take a while to reap it


@pytest.fixture(scope="module")
def other_model_dir(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model directory: the demo's files under another directory, so another model to the portal."""
    target = tmp_path_factory.mktemp("models") / "demo-copy"
    shutil.copytree(demo_model_dir, target)
    return target


def notes(events: list[protocol.Event], stage: str) -> list[str | None]:
    return [event.note for event in events if isinstance(event, protocol.Stage) and event.name == stage]


def test_jobs_of_one_model_run_in_one_warm_runner_until_another_model_comes(
    demo_model_dir: Path, other_model_dir: Path, tmp_path: Path
) -> None:
    jobs_dir = tmp_path / "jobs"
    for name, model in (("first", demo_model_dir), ("second", demo_model_dir), ("other", other_model_dir)):
        write_job(jobs_dir / name, model, **TINY_JOB)
    recorder = Recorder()

    async def main() -> dict:
        seen = {}
        supervisor = Supervisor(sys.executable, GRACE_S, spare_jobs_dir=jobs_dir, keep_warm_s=120)
        await supervisor.ensure_spare()
        spare = supervisor.spare_pid
        for name in ("first", "second", "other"):
            outcome = await supervisor.run(name, jobs_dir / name, recorder.sink(name))
            warm = supervisor.warm
            assert warm is not None, f"no warm runner after job {name}"
            seen[name] = (outcome.status, warm.child.process.pid, warm.model_path)
        await supervisor.close()
        return {"spare": spare, **seen}

    seen = anyio.run(main)

    assert [seen[name][0] for name in ("first", "second", "other")] == ["succeeded"] * 3
    assert seen["first"][1] == seen["second"][1] == seen["spare"], "the spare took the first job, then the second"
    assert seen["first"][2] == str(demo_model_dir.resolve())
    assert seen["other"][1] != seen["first"][1] and seen["other"][2] == str(other_model_dir.resolve())
    assert not alive(seen["first"][1]), "another model's job ended the warm runner"
    assert not alive(seen["other"][1]), "the shutdown ended the warm runner"
    # The second job loaded nothing: its stages say the weights were resident; the first and the other model's
    # job loaded theirs.
    assert notes(recorder.events["second"], "load_transformer") == [WEIGHTS_RESIDENT]
    assert notes(recorder.events["second"], "load_text_encoder") == [WEIGHTS_RESIDENT]
    assert notes(recorder.events["first"], "load_transformer") == [None]
    assert notes(recorder.events["other"], "load_transformer") == [None]
    # `resident` ends a job's transcript: it is no event of the job's
    assert not any(isinstance(e, protocol.Resident) for events in recorder.events.values() for e in events)
    log = (jobs_dir / "second" / jobdir.LOG_FILE).read_text()
    assert f"warm runner {seen['first'][1]} took this job" in log


def test_a_cancel_of_the_job_a_warm_runner_runs_ends_it(demo_model_dir: Path, tmp_path: Path) -> None:
    jobs_dir = tmp_path / "jobs"
    write_job(jobs_dir / "first", demo_model_dir, **TINY_JOB)
    write_job(jobs_dir / "long", demo_model_dir, **LONG_JOB)
    recorder = Recorder()

    async def main() -> tuple[int, str, object]:
        supervisor = Supervisor(sys.executable, GRACE_S, keep_warm_s=120)
        await supervisor.run("first", jobs_dir / "first", recorder.sink("first"))
        assert supervisor.warm is not None
        pid = supervisor.warm.child.process.pid

        async def cancel_at_first_step() -> None:
            with anyio.fail_after(120):
                while not any(isinstance(e, protocol.Step) for e in recorder.events.get("long", [])):
                    await anyio.sleep(0.05)
            assert supervisor.cancel("long")

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_at_first_step)
            outcome = await supervisor.run("long", jobs_dir / "long", recorder.sink("long"))
        warm = supervisor.warm
        await supervisor.close()
        return pid, outcome.status, warm

    pid, status, warm = anyio.run(main)

    assert status == "cancelled"
    assert warm is None
    wait_for(lambda: not alive(pid), EXIT_TIMEOUT_S, f"the end of runner {pid}")
    assert notes(recorder.events["long"], "load_transformer") == [WEIGHTS_RESIDENT], "the warm runner ran it"


def test_a_warm_runner_ends_when_no_job_came_in_its_time(demo_model_dir: Path, tmp_path: Path) -> None:
    jobs_dir = tmp_path / "jobs"
    write_job(jobs_dir / "only", demo_model_dir, **TINY_JOB)

    async def main() -> int:
        supervisor = Supervisor(sys.executable, GRACE_S, keep_warm_s=3)
        outcome = await supervisor.run("only", jobs_dir / "only", Recorder().sink("only"))
        assert outcome.status == "succeeded"
        assert supervisor._warm is not None
        pid = supervisor._warm.child.process.pid
        with anyio.fail_after(EXIT_TIMEOUT_S):
            await supervisor._warm.child.process.wait()  # the runner's own clock: nobody signals it
        assert supervisor.warm is None, "a runner gone is no warm runner"
        await supervisor.close()
        return pid

    pid = anyio.run(main)

    assert not alive(pid)
    assert "no job came in 3 s; exiting" in (jobs_dir / "only" / jobdir.LOG_FILE).read_text()


def test_without_warm_mode_the_runner_exits_after_its_job(demo_model_dir: Path, tmp_path: Path) -> None:
    jobs_dir = tmp_path / "jobs"
    write_job(jobs_dir / "only", demo_model_dir, **TINY_JOB)

    async def main() -> tuple[str, object]:
        supervisor = Supervisor(sys.executable, GRACE_S)
        outcome = await supervisor.run("only", jobs_dir / "only", Recorder().sink("only"))
        return outcome.status, supervisor.warm

    status, warm = anyio.run(main)

    assert status == "succeeded" and warm is None
    assert runner_processes(jobs_dir / "only") == []
    assert "warm" not in (jobs_dir / "only" / jobdir.LOG_FILE).read_text()


def test_a_portal_in_warm_mode_shows_the_resident_model_and_marks_the_job_that_loaded_nothing(make_portal) -> None:
    portal = make_portal(AVP_KEEP_WARM_S="120", AVP_SPARE_RUNNER="off")
    first = portal.wait(portal.submit(prompt="a red ball bouncing", **TINY_JOB)["id"])
    with portal.client() as client:
        (slot,) = client.get("/healthz").json()["worker"]["slot_states"]
    second = portal.wait(portal.submit(prompt="a blue square moving left", **TINY_JOB)["id"])

    assert first["status"] == second["status"] == "succeeded"
    assert slot["resident_model"] == "demo" and alive(slot["resident_pid"])
    assert slot["resident_until"] > time.time()
    assert not first["progress"]["weights_resident"] and second["progress"]["weights_resident"]
    with portal.client() as client:
        assert 'id="weights-resident"' in client.get(f"/jobs/{second['id']}").text
        assert 'id="weights-resident"' not in client.get(f"/jobs/{first['id']}").text
        (after,) = client.get("/healthz").json()["worker"]["slot_states"]
    assert after["resident_pid"] == slot["resident_pid"], "the second job ran in the first job's runner"


def test_a_shutdown_landing_after_resident_but_before_the_runner_is_kept_warm_stops_it(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    jobs_dir = tmp_path / "jobs"
    write_job(jobs_dir / "only", demo_model_dir, **TINY_JOB)

    async def main() -> tuple[list[int], object]:
        supervisor = Supervisor(sys.executable, GRACE_S, keep_warm_s=120)
        follow, pids = supervisor._follow, []
        with anyio.CancelScope() as shutdown:

            async def follow_then_shut_down(job_id, child, transcript, on_event) -> None:
                await follow(job_id, child, transcript, on_event)
                pids.append(child.process.pid)
                shutdown.cancel()  # the worker's cancel lands now: after `resident`, before the runner is kept warm

            supervisor._follow = follow_then_shut_down
            await supervisor.run("only", jobs_dir / "only", Recorder().sink("only"))
        warm = supervisor.warm
        await supervisor.close()
        return pids, warm

    (pid,), warm = anyio.run(main)

    assert warm is None
    assert not alive(pid), "the runner outlived the supervisor's close"
