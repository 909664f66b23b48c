"""Small pieces of the web process, each on its own: outcome classification, ranges, broker, store."""

from __future__ import annotations

import functools
import html
from pathlib import Path

import anyio
import pytest

from app.broker import SUBSCRIBER_BUFFER, Broker
from app.config import Settings, SettingsError
from app.progress import JobProgress
from app.ratelimit import RateLimited, SubmitRateLimit
from app.routes.files import parse_range
from app.runner import _classify, _Transcript
from app.store import JobUpdate, Store
from contract import protocol
from tests.runner_fixtures import A_RESULT


def test_a_stage_note_and_an_unknown_eta_reach_the_json_api_and_the_job_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from litestar.testing import TestClient

    from app.queue import Worker
    from app.web import create_app

    async def no_worker(self, directory):  # the job stays queued: this test speaks for its runner
        raise RuntimeError("no runner here")

    monkeypatch.setattr(Worker, "_ensure_demo_model", no_worker)
    note = "The first step compiles GPU kernels for this clip size: about half a minute <the first time>."
    app = create_app(Settings.from_env({"AVP_DATA_DIR": str(tmp_path)}))
    with TestClient(app) as client:
        job_id = client.post("/api/jobs", json={"prompt": "a red ball bouncing"}).json()["id"]
        journal = app.state.parts.jobs.journal
        client.blocking_portal.call(functools.partial(journal.set_status, job_id, "running", start_attempt=True))
        progress = JobProgress()

        def runner_says(event: protocol.Event) -> tuple[dict, str]:
            nonlocal progress
            progress = client.blocking_portal.call(journal.runner_event, job_id, event, progress)
            return client.get(f"/api/jobs/{job_id}").json()["progress"], client.get(f"/jobs/{job_id}/panel").text

        api, page = runner_says(protocol.Stage(name="denoise", t=20.0, note=note))
        assert api["stage"] == "denoise" and api["stage_note"] == note
        assert html.escape(note, quote=False) in page and 'id="stage-note"' in page

        api, page = runner_says(protocol.Step(step=1, total=30, elapsed_s=35.0, eta_s=None))
        assert api["eta_s"] is None and "s left" not in page

        api, page = runner_says(protocol.Step(step=2, total=30, elapsed_s=36.0, eta_s=28.0))
        assert api["eta_s"] == 28.0 and "about 28 s left" in page

        api, page = runner_says(protocol.Stage(name="free_transformer", t=60.0))
        assert api["stage_note"] is None and 'id="stage-note"' not in page


def _transcript(result: bool = False, error: protocol.Error | None = None, violation: str | None = None):
    t = _Transcript()
    if result:
        t.result = A_RESULT
    t.last_error, t.violation = error, violation
    return t


@pytest.mark.parametrize(
    ("code", "cancelled", "transcript", "status", "error_code", "fragment"),
    [
        (0, False, _transcript(result=True), "succeeded", None, None),
        (143, True, _transcript(), "cancelled", "cancelled", "Cancelled"),
        (-9, True, _transcript(), "cancelled", "cancelled", "Cancelled"),
        (
            3,
            False,
            _transcript(error=protocol.Error(code="out_of_memory", message="decode_video at 768x512")),
            "failed",
            "out_of_memory",
            "decode_video at 768x512",
        ),
        (4, False, _transcript(), "failed", "model_missing", "missing or incomplete"),
        (0, False, _transcript(), "failed", "internal", "without producing a video"),
        (0, False, _transcript(result=True, violation="line 3 is junk"), "failed", "internal", "line 3 is junk"),
        (-9, False, _transcript(), "failed", "internal", "SIGKILL. This is usually the system running out of memory"),
        (143, False, _transcript(), "failed", "internal", "signal the portal did not send"),
        (
            1,
            False,
            _transcript(error=protocol.Error(code="internal", message="bad tensor")),
            "failed",
            "internal",
            "bad tensor",
        ),
        (7, False, _transcript(), "failed", "internal", "crashed (exit code 7)"),
    ],
)
def test_runner_exits_are_classified_from_exit_code_and_last_error(
    code, cancelled, transcript, status, error_code, fragment
) -> None:
    outcome = _classify(code, cancelled, transcript)
    assert (outcome.status, outcome.code) == (status, error_code)
    if fragment:
        assert fragment in outcome.message


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 9)),
        ("bytes=10-", (10, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=90-200", (90, 99)),
        ("bytes=100-", False),
        ("bytes=5-2", False),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
    ],
)
def test_range_headers(header, expected) -> None:
    assert parse_range(header, 100) == expected


def test_a_subscriber_that_falls_behind_is_dropped_and_the_publisher_never_waits() -> None:
    async def scenario() -> None:
        broker = Broker()
        with broker.subscribe("job") as slow, broker.subscribe("page") as page:
            for i in range(SUBSCRIBER_BUFFER + 5):
                broker.publish("job", {"type": "step", "id": i})
            broker.publish("page", "a fragment")
            received = [await slow.receive() for _ in range(SUBSCRIBER_BUFFER)]
            assert [e["id"] for e in received] == list(range(SUBSCRIBER_BUFFER))
            with pytest.raises(anyio.EndOfStream):
                await slow.receive()
            assert not broker.listening("job"), "nobody is left to render for"
            assert await page.receive() == "a fragment"
        assert broker.subscriber_count == 0

    anyio.run(scenario)


def test_store_numbers_events_per_job_and_refuses_past_the_queue_limit(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    assert store.create_job("a", {"prompt": "x"}, {"type": "queued"}, max_queued=2).id == 1
    assert store.create_job("b", {"prompt": "y"}, {"type": "queued"}, max_queued=2).id == 1
    assert store.create_job("c", {"prompt": "z"}, {"type": "queued"}, max_queued=2) is None
    assert store.get_job("c") is None
    second = store.record("a", {"type": "running"}, JobUpdate(status="running", start_attempt=True))
    assert second.id == 2 and second.data == {"type": "running", "id": 2}
    job = store.get_job("a")
    assert job.status == "running" and job.attempts == 1 and job.progress == JobProgress()
    assert [e.id for e in store.events_after("a", 0)] == [1, 2]
    assert [j.id for j in store.list_jobs(10)] == ["b", "a"]
    store.close()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AVP_PORT": "eighty"}, "AVP_PORT='eighty' is not a int"),
        ({"AVP_MAX_QUEUE": "0"}, "AVP_MAX_QUEUE='0' must be at least 1"),
        ({"AVP_MODEL_DIR": "/no/such/dir"}, "is not a directory"),
        ({"AVP_RUNNER_PYTHON": "/no/such/python"}, "is not an executable"),
        ({"AVP_PRECISION": "int4"}, "AVP_PRECISION='int4' is not one of fp8, bf16, fp32"),
        ({"AVP_ROOT_PATH": "portal"}, "must look like /portal"),
        ({"AVP_ROOT_PATH": "/a b"}, "must look like /portal"),
        ({"AVP_API_TOKEN": "short"}, "AVP_API_TOKEN is too short"),
        ({"AVP_PASSWORD_HASH": "hunter2"}, "not a hash made by `avportal hash-password`"),
        ({"AVP_WEIGHT_CACHE_DIR": __file__}, "AVP_WEIGHT_CACHE_DIR=.* is not a directory"),
        ({"AVP_SPARE_RUNNER": "yes"}, "AVP_SPARE_RUNNER='yes' must be on"),
        ({"AVP_KEEP_GB": "0"}, "AVP_KEEP_GB='0' must be a number above 0, or unset for no limit"),
        ({"AVP_KEEP_DAYS": "-1"}, "AVP_KEEP_DAYS='-1' must be a number above 0"),
        ({"AVP_KEEP_DAYS": "a week"}, "AVP_KEEP_DAYS='a week' is not a float"),
    ],
)
def test_bad_settings_name_the_variable(env, message) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_the_weight_cache_lives_under_the_data_dir_unless_moved_or_turned_off(tmp_path: Path) -> None:
    data = {"AVP_DATA_DIR": str(tmp_path)}
    assert Settings.from_env(data).weight_cache_dir == tmp_path.resolve() / "cache" / "weights"
    moved = Settings.from_env({**data, "AVP_WEIGHT_CACHE_DIR": str(tmp_path / "fast" / ".." / "nvme")})
    assert moved.weight_cache_dir == tmp_path.resolve() / "nvme"
    assert Settings.from_env({**data, "AVP_WEIGHT_CACHE_DIR": "off"}).weight_cache_dir is None


def test_jobs_compile_with_a_cache_under_the_data_dir_unless_turned_off(tmp_path: Path) -> None:
    data = {"AVP_DATA_DIR": str(tmp_path)}
    assert Settings.from_env(data).compile_cache_dir == tmp_path.resolve() / "cache" / "compiled"
    assert Settings.from_env({**data, "AVP_COMPILE": "off"}).compile_cache_dir is None
    with pytest.raises(SettingsError, match="AVP_COMPILE='yes' must be on"):
        Settings.from_env({**data, "AVP_COMPILE": "yes"})


def test_a_spare_runner_waits_for_jobs_unless_turned_off() -> None:
    assert Settings.from_env({}).spare_runner is True
    assert Settings.from_env({"AVP_SPARE_RUNNER": "on"}).spare_runner is True
    assert Settings.from_env({"AVP_SPARE_RUNNER": "off"}).spare_runner is False


def test_healthz_reports_a_dead_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from litestar.testing import TestClient

    from app.queue import Worker
    from app.web import create_app

    async def broken(self, directory):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Worker, "_ensure_demo_model", broken)
    app = create_app(Settings.from_env({"AVP_DATA_DIR": str(tmp_path)}))
    with TestClient(app) as client:
        for _ in range(100):
            response = client.get("/healthz")
            if response.status_code == 503:
                break
            anyio.run(anyio.sleep, 0.01)
        assert response.status_code == 503
        assert response.json()["worker"]["alive"] is False and response.json()["status"] == "worker_dead"


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({"AVP_HOST": "127.0.0.1"}, False),
        ({"AVP_HOST": "::1"}, False),
        ({"AVP_HOST": "localhost"}, False),
        ({"AVP_HOST": "0.0.0.0"}, True),
        ({"AVP_HOST": "box.lan"}, True),
        ({"AVP_HOST": "0.0.0.0", "AVP_API_TOKEN": "x" * 16}, False),
        ({"AVP_HOST": "0.0.0.0", "AVP_INSECURE_NO_AUTH": "1"}, False),
    ],
)
def test_listening_beyond_loopback_needs_a_credential(env, refused) -> None:
    settings = Settings.from_env(env)
    if refused:
        with pytest.raises(SettingsError, match="AVP_PASSWORD_HASH"):
            settings.check_exposure()
    else:
        settings.check_exposure()


def test_the_root_path_prefixes_every_url() -> None:
    assert Settings.from_env({"AVP_ROOT_PATH": "/portal/"}).url("/jobs/1") == "/portal/jobs/1"
    assert Settings.from_env({}).url("/jobs/1") == "/jobs/1"


def test_the_submit_limit_refuses_the_burst_beyond_it_and_says_when_to_retry() -> None:
    limit = SubmitRateLimit(per_minute=3)
    for _ in range(3):
        limit.take("10.0.0.2")
    with pytest.raises(RateLimited) as refused:
        limit.take("10.0.0.2")
    assert 0 < refused.value.retry_after_s <= 20
    limit.take("10.0.0.3")  # another client has its own bucket
