"""Small pieces of the web process, each on its own: outcome classification, ranges, broker, store."""

from __future__ import annotations

import functools
import html
import re
from pathlib import Path

import anyio
import pytest

from app.broker import SUBSCRIBER_BUFFER, Broker
from app.config import Settings, SettingsError
from app.page_feed import job_context
from app.progress import JobProgress
from app.ratelimit import RateLimited, SubmitRateLimit
from app.routes.files import parse_range
from app.runner import Transcript, classify
from app.store import JobFilter, JobUpdate, Store
from app.web import build_templates
from contract import protocol
from tests.job_history import job_row
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
    with TestClient(app, base_url="http://127.0.0.1") as client:  # a host the portal serves
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


@pytest.mark.parametrize(
    ("status", "stage", "shown"),
    [
        ("running", "decode_video", "decode video"),
        ("succeeded", "mux", ""),
        ("failed", "denoise", ""),
        ("queued", None, ""),
    ],
)
def test_a_job_card_names_the_stage_only_while_the_job_runs(
    tmp_path: Path, status: str, stage: str | None, shown: str
) -> None:
    templates = build_templates(Settings.from_env({"AVP_DATA_DIR": str(tmp_path)}))
    job = job_row(status=status, progress=JobProgress(stage=stage))
    card = templates.engine.get_template("fragments/_job_card.html").render(job=job)
    assert re.search(r'<span class="badge">(\w+)</span>', card)[1] == status
    stage_shown = re.search(r'<span class="stage">([\w ]+)</span>', card)
    assert (stage_shown[1] if stage_shown else "") == shown
    assert ("<progress" in card) == (status in ("queued", "running")), "progress only on unfinished cards"


def _seeded_store(path: Path) -> Store:
    """Jobs a, b, c, d, e (oldest first) of two models, two statuses and prompts with LIKE's special characters."""
    store = Store(path)
    for job_id, prompt, model, status in [
        ("a", "a red ball", "demo", "succeeded"),
        ("b", "A RED square 100%", "ltx-2", "failed"),
        ("c", "red_ball under \\ a slash", "demo", "succeeded"),
        ("d", "rédball", "demo", "failed"),
        ("e", "a blue ball", "ltx-2", "succeeded"),
    ]:
        store.create_job(job_id, {"prompt": prompt, "model": model}, {"type": "queued"}, max_queued=10)
        store.record(job_id, {"type": status}, JobUpdate(status=status))
    return store


@pytest.mark.parametrize(
    ("only", "expected"),
    [
        (JobFilter(), "edcba"),
        (JobFilter(status="failed"), "db"),
        (JobFilter(model="ltx-2"), "eb"),
        (JobFilter(model="ltx-2", status="succeeded"), "e"),
        (JobFilter(search="RED"), "cba"),  # ASCII letters in either case; "rédball" holds no "red"
        (JobFilter(search="red_ball"), "c"),  # `_` is an underscore, not any character
        (JobFilter(search="0%"), "b"),  # `%` is a percent sign
        (JobFilter(search="\\"), "c"),  # the escape character itself
        (JobFilter(search="rÉd"), ""),  # SQLite folds ASCII letters only; the Python check agrees
        (JobFilter(search="réd"), "d"),
        (JobFilter(search="ball", status="succeeded", model="demo"), "ca"),
    ],
)
def test_a_job_filter_selects_in_sqlite_what_it_matches_in_python(
    tmp_path: Path, only: JobFilter, expected: str
) -> None:
    store = _seeded_store(tmp_path / "db.sqlite3")
    try:
        listed = store.list_jobs(10, only=only)
        assert "".join(job.id for job in listed) == expected
        every = store.list_jobs(10)
        assert {job.id for job in every if only.matches(job)} == set(expected), "a new job's card follows the same rule"
        if listed:  # keyset paging: the jobs before a job's seq, newest first, no overlap
            assert "".join(j.id for j in store.list_jobs(10, before_seq=listed[0].seq, only=only)) == expected[1:]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("only", "index"),
    [
        (JobFilter(model="demo"), "jobs_model"),
        (JobFilter(search="red"), "jobs_prompt"),
        (JobFilter(search="red", model="demo"), "jobs_prompt"),
        (JobFilter(search="red", status="failed"), "jobs_prompt"),
    ],
)
def test_a_filter_reads_an_index_not_every_request(tmp_path: Path, only: JobFilter, index: str) -> None:
    store = _seeded_store(tmp_path / "db.sqlite3")
    try:
        source, where, args = only.sql()
        query = f"SELECT seq FROM {source} WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT 25"
        plan = store._db.execute(f"EXPLAIN QUERY PLAN {query}", args).fetchall()
        assert any(f"INDEX {index}" in row[-1] for row in plan), plan
    finally:
        store.close()


@pytest.mark.parametrize(
    "event",
    [
        protocol.Preview(file=None, step=2, note="No colour preview yet: this model's first clip teaches the portal"),
        protocol.Preview(file="preview.jpg", step=6),
    ],
)
def test_a_running_jobs_panel_shows_its_preview_with_what_it_is_or_why_there_is_none(tmp_path, event) -> None:
    templates = build_templates(Settings.from_env({"AVP_DATA_DIR": str(tmp_path)}))
    job = job_row(status="running", progress=JobProgress(stage="denoise").apply(event), started_at=0.0)
    panel = html.unescape(
        templates.engine.get_template("fragments/_job_panel.html").render(**job_context(job, {}, None))
    )
    if event.file is None:
        assert event.note in panel and 'id="job-preview"' not in panel, "a note instead of noise"
    else:
        assert 'id="job-preview"' in panel and "preview?step=6" in panel
        assert "current guess of the clip at step 6" in panel and "arbitrary" not in panel


def _transcript(result: bool = False, error: protocol.Error | None = None, violation: str | None = None):
    t = Transcript()
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
    outcome = classify(code, cancelled, transcript)
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
        ({"AVP_MAX_QUEUE": "0"}, "AVP_MAX_QUEUE='0' must be a number of at least 1"),
        ({"AVP_MAX_JOB_MINUTES": "nan"}, "AVP_MAX_JOB_MINUTES='nan' must be a number of at least 0"),
        ({"AVP_HEARTBEAT_S": "inf"}, "AVP_HEARTBEAT_S='inf' must be a number of at least"),
        ({"AVP_MODEL_DIR": "/no/such/dir"}, "is not a directory"),
        ({"AVP_MODELS_DIR": "/no/such/dir"}, "AVP_MODELS_DIR=./no/such/dir. is not a directory"),
        ({"AVP_RUNNER_PYTHON": "/no/such/python"}, "is not an executable"),
        ({"AVP_PRECISION": "int4"}, "AVP_PRECISION='int4' is not one of fp8, bf16, fp32"),
        ({"AVP_ROOT_PATH": "portal"}, "must look like /portal"),
        ({"AVP_ROOT_PATH": "/a b"}, "must look like /portal"),
        ({"AVP_API_TOKEN": "short"}, "AVP_API_TOKEN is too short"),
        ({"AVP_PASSWORD_HASH": "hunter2"}, "not a hash made by `avportal hash-password`"),
        ({"AVP_WEIGHT_CACHE_DIR": __file__}, "AVP_WEIGHT_CACHE_DIR=.* is not a directory"),
        ({"AVP_SPARE_RUNNER": "yes"}, "AVP_SPARE_RUNNER='yes' must be on"),
        ({"AVP_LOG_LEVEL": "verbose"}, "AVP_LOG_LEVEL='verbose' must be one of critical, error, warning, info, debug"),
        ({"AVP_ALLOWED_HOSTS": "portal.lan:8000"}, "AVP_ALLOWED_HOSTS entry 'portal.lan:8000' is not a host name"),
        ({"AVP_ALLOWED_HOSTS": "https://portal.lan"}, "AVP_ALLOWED_HOSTS entry 'https://portal.lan' is not a host"),
        ({"AVP_KEEP_GB": "0"}, "AVP_KEEP_GB='0' must be a number above 0, or unset for no limit"),
        ({"AVP_KEEP_DAYS": "-1"}, "AVP_KEEP_DAYS='-1' must be a number above 0"),
        ({"AVP_KEEP_DAYS": "a week"}, "AVP_KEEP_DAYS='a week' is not a float"),
        ({"AVP_CACHE_GB": "0"}, "AVP_CACHE_GB='0' must be a number above 0, or unset for 50 GiB"),
        ({"AVP_CACHE_GB": "inf"}, "AVP_CACHE_GB='inf' must be a number above 0"),
        ({"AVP_CACHE_GB": "lots"}, "AVP_CACHE_GB='lots' is not a float"),
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


def test_every_job_carries_the_cache_budget_in_gib() -> None:
    assert Settings.from_env({}).runner_options().cache_gb == 50
    assert Settings.from_env({"AVP_CACHE_GB": "0.25"}).runner_options().cache_gb == 0.25


def test_jobs_compile_with_a_cache_under_the_data_dir_unless_turned_off(tmp_path: Path) -> None:
    data = {"AVP_DATA_DIR": str(tmp_path)}
    compiled = tmp_path.resolve() / "cache" / "compiled"
    # (compile cache, dynamic shapes) each job is told: a graph per clip size by default, one for all with dynamic
    told = {
        value: (options.compile_cache_dir, options.compile_dynamic)
        for value in ("", "on", " dynamic ", "off")
        for options in [Settings.from_env({**data, "AVP_COMPILE": value}).runner_options()]
    }
    assert told == {
        "": (str(compiled), False),
        "on": (str(compiled), False),
        " dynamic ": (str(compiled), True),
        "off": (None, False),
    }
    assert Settings.from_env({**data, "AVP_COMPILE": "off"}).compile_cache_dir is None
    for wrong in ("yes", "Dynamic", "static"):
        with pytest.raises(SettingsError, match=rf"AVP_COMPILE='{wrong}' must be on .*, dynamic .* or off"):
            Settings.from_env({**data, "AVP_COMPILE": wrong})


def test_every_job_carries_the_attention_backend_and_a_name_diffusers_lacks_stops_the_start() -> None:
    assert Settings.from_env({}).runner_options().attention == "native"
    assert Settings.from_env({"AVP_ATTENTION": " _native_flash "}).runner_options().attention == "_native_flash"
    allowed = "native, _native_cudnn, _native_flash, _native_efficient"
    with pytest.raises(SettingsError, match=f"AVP_ATTENTION='flash' must be one of {allowed}"):
        Settings.from_env({"AVP_ATTENTION": "flash"})
    with pytest.raises(SettingsError, match=f"AVP_ATTENTION='sage' must be one of {allowed}"):
        Settings.from_env({"AVP_ATTENTION": "sage"})  # tried, not offered (gpu_runner/attention.py says why)


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
    with TestClient(app, base_url="http://127.0.0.1") as client:  # a host the portal serves
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
        ({"AVP_HOST": "0.0.0.0", "AVP_API_TOKEN": "x" * 16, "AVP_ALLOWED_HOSTS": "box.lan"}, False),
        ({"AVP_HOST": "0.0.0.0", "AVP_INSECURE_NO_AUTH": "1", "AVP_ALLOWED_HOSTS": "box.lan"}, False),
    ],
)
def test_listening_beyond_loopback_needs_a_credential(env, refused) -> None:
    settings = Settings.from_env(env)
    if refused:
        with pytest.raises(SettingsError, match="AVP_PASSWORD_HASH"):
            settings.check_exposure()
    else:
        settings.check_exposure()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "box.lan"])
def test_listening_beyond_loopback_needs_the_names_it_is_reached_by(host) -> None:
    with pytest.raises(SettingsError, match="without AVP_ALLOWED_HOSTS.*Set AVP_ALLOWED_HOSTS"):
        Settings.from_env({"AVP_HOST": host, "AVP_API_TOKEN": "x" * 16}).check_exposure()
    Settings.from_env({"AVP_HOST": "127.0.0.1"}).check_exposure()  # loopback needs neither


@pytest.mark.parametrize(
    ("host", "served"),
    [
        ("localhost", True),
        ("localhost:8000", True),
        ("LOCALHOST.", True),
        ("127.0.0.1:8000", True),
        ("[::1]:8000", True),
        ("[::1]", True),
        ("portal.lan", True),
        ("Portal.LAN:443", True),
        ("192.168.1.20:8000", True),
        ("[fe80::1]", True),
        ("evil.example", False),
        ("localhost.evil.example", False),
        ("portal.lan.evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("192.168.1.21", False),
        ("", False),
    ],
)
def test_a_host_header_is_served_only_for_loopback_and_the_allowed_names(host, served) -> None:
    settings = Settings.from_env({"AVP_ALLOWED_HOSTS": " portal.lan, 192.168.1.20 ,FE80::1,"})
    assert settings.serves_host(host) is served
    assert Settings.from_env({}).serves_host("portal.lan") is False


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


def test_a_video_removed_between_the_check_and_the_read_is_a_404_not_a_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention or a delete can remove a job's files after the handler found its video and before it read it."""
    from litestar.testing import TestClient

    from app.jobs import Jobs
    from app.queue import Worker
    from app.web import create_app

    async def no_worker(self, directory):  # the job stays queued; the handler is what is tested
        raise RuntimeError("no runner here")

    monkeypatch.setattr(Worker, "_ensure_demo_model", no_worker)
    monkeypatch.setattr(Jobs, "video_path", lambda self, job: tmp_path / "removed-a-moment-ago.mp4")
    app = create_app(Settings.from_env({"AVP_DATA_DIR": str(tmp_path / "data")}))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        job_id = client.post("/api/jobs", json={"prompt": "a red ball bouncing"}).json()["id"]
        for method in ("GET", "HEAD"):
            response = client.request(method, f"/api/jobs/{job_id}/video")
            assert response.status_code == 404, (method, response.status_code)
        assert "removed a moment ago" in client.get(f"/api/jobs/{job_id}/video").json()["detail"]
