"""Webhooks' pieces: the allowlist, the URL and event checks, the secret, the backoff schedule, the deliveries a
job's events queue (real store and journal), and single attempts against a real HTTP server on loopback."""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import standardwebhooks

from app import webhooks as webhooks_module
from app.broker import Broker
from app.config import Settings, SettingsError
from app.jobs import present
from app.journal import Journal
from app.page_feed import PageFeed
from app.store import Delivery, Store
from app.web import build_templates
from app.webhook_targets import Allowlist, Refused, Webhook, check_destination, read_webhook, split_url
from app.webhooks import (
    MAX_BACKOFF_S,
    SECRET_FILE,
    Attempt,
    Webhooks,
    backoff_s,
    check_secret,
    event_name,
    load_or_create_secret,
    new_secret,
)
from contract.request import Request

ip = ipaddress.ip_address


# ---- the allowlist --------------------------------------------------------------------------


def test_the_allowlist_reads_names_addresses_and_networks_of_both_families() -> None:
    allow = Allowlist.parse(" Hooks.LAN. ,127.0.0.1, 10.0.0.0/8,[::1],fd00::/8 ,")
    assert allow.names == {"hooks.lan"}
    assert [str(n) for n in allow.networks] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128", "fd00::/8"]
    assert allow.lists(ip("10.200.3.4")) and allow.lists(ip("fd12::5")) and allow.lists(ip("::1"))
    assert not allow.lists(ip("127.0.0.2")) and not allow.lists(ip("11.0.0.1")) and not allow.lists(ip("fe80::1"))
    assert not Allowlist.parse("") and not Allowlist.parse(" , ")


@pytest.mark.parametrize("entry", ["http://hooks.lan", "hooks.lan:8080", "10.0.0.0/33", "bad_name!", "a..b"])
def test_an_allowlist_entry_that_is_neither_name_address_nor_network_is_refused_by_name(entry: str) -> None:
    with pytest.raises(ValueError, match=f"AVP_WEBHOOK_ALLOW entry '{entry}'.*127.0.0.1,hooks.lan,10.0.0.0/8"):
        Allowlist.parse(entry)


@pytest.mark.parametrize(
    ("host", "addresses"),
    [
        ("127.0.0.1", ["127.0.0.1"]),
        ("10.9.8.7", ["10.9.8.7"]),  # a listed network
        ("[::1]", ["::1"]),
        ("[::ffff:127.0.0.1]", ["127.0.0.1"]),  # an IPv4-mapped address is its IPv4 address
        ("hooks.lan", ["10.1.1.1"]),  # a listed name, resolving into a listed network
        ("HOOKS.lan.", ["10.1.1.1", "fd00::1"]),
        ("hooks.lan", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]),  # public addresses
    ],
)
def test_listed_hosts_resolving_to_allowed_addresses_pass(host: str, addresses: list[str]) -> None:
    allow = Allowlist.parse("127.0.0.1,::1,10.0.0.0/8,fd00::/8,hooks.lan")
    allow.check_addresses(host.strip("[]"), [ip(a) for a in addresses])


@pytest.mark.parametrize(
    ("host", "addresses", "message"),
    [
        ("127.0.0.2", ["127.0.0.2"], "calls 127.0.0.2, which AVP_WEBHOOK_ALLOW .* does not allow"),
        ("fe80::1", ["fe80::1"], "calls fe80::1"),
        ("::ffff:127.0.0.2", ["127.0.0.2"], "calls 127.0.0.2"),
        ("other.lan", ["10.1.1.1"], "names other.lan, which AVP_WEBHOOK_ALLOW .* does not list"),
        # a listed name that resolves (or is rebound) to a non-public address nobody listed
        ("hooks.lan", ["127.0.0.1"], "resolves to 127.0.0.1, a non-public address"),
        ("hooks.lan", ["93.184.215.14", "192.168.1.1"], "resolves to 192.168.1.1"),
        ("hooks.lan", ["::1"], "resolves to ::1"),
        ("hooks.lan", ["169.254.169.254"], "resolves to 169.254.169.254"),  # a cloud's metadata service
        ("hooks.lan", ["224.0.1.1"], "resolves to 224.0.1.1"),  # multicast
        ("hooks.lan", [], "resolves to no address"),
    ],
)
def test_hosts_not_listed_or_resolving_to_forbidden_addresses_are_refused(
    host: str, addresses: list[str], message: str
) -> None:
    allow = Allowlist.parse("10.0.0.0/8,hooks.lan")
    with pytest.raises(Refused, match=message):
        allow.check_addresses(host, [ip(a) for a in addresses])


def test_with_no_allowlist_every_webhook_is_refused_saying_how_to_allow_one() -> None:
    with pytest.raises(Refused, match="allows webhooks to no destination.*AVP_WEBHOOK_ALLOW"):
        Allowlist().check_addresses("127.0.0.1", [ip("127.0.0.1")])


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://127.0.0.1/x", "must be an http or https URL, not ftp:"),
        ("file:///etc/passwd", "must be an http or https URL, not file:"),
        ("127.0.0.1/x", "not one without a scheme"),
        ("http:///x", "has no host"),
        ("http://user:pw@127.0.0.1/", "must not carry a user name or password"),
        ("http://127.0.0.1:99999/", "is not a URL"),
        ("http://127.0.0.1/a b", "spaces or control characters"),
        ("http://127.0.0.1/" + "a" * 2000, "the limit is 2000"),
    ],
)
def test_a_webhook_url_must_be_plain_http_or_https(url: str, message: str) -> None:
    with pytest.raises(Refused, match=message):
        split_url(url)


def test_a_listed_name_is_resolved_at_submit_and_refused_for_a_loopback_address() -> None:
    """localhost is listed by name only: what it resolves to (127.0.0.1, ::1) is loopback, which nobody listed."""
    with pytest.raises(Refused, match="names localhost, which resolves to (127.0.0.1|::1), a non-public address"):
        anyio.run(check_destination, "http://localhost:9/hook", Allowlist.parse("localhost"))
    anyio.run(check_destination, "http://localhost:9/hook", Allowlist.parse("localhost,127.0.0.0/8,::1"))


def test_webhook_fields_are_read_with_replicates_default_and_every_problem_named() -> None:
    allow = Allowlist.parse("127.0.0.1")

    def read(**fields: object) -> tuple[Webhook | None, list[tuple[str, str]]]:
        webhook, problems = anyio.run(read_webhook, fields, allow)
        return webhook, [(p.field, p.message) for p in problems]

    assert read(webhook="http://127.0.0.1:9/h") == (Webhook("http://127.0.0.1:9/h", ("completed",)), [])
    chosen = ["progress", "start", "completed", "start"]
    assert read(webhook="http://127.0.0.1:9/h", webhook_events=chosen)[0].events == ("start", "completed", "progress")
    assert read() == (None, [])
    webhook, problems = read(webhook="gopher://127.0.0.1/", webhook_events=["done", "start", "finished"])
    assert webhook is None
    assert [field for field, _ in problems] == ["webhook_events", "webhook"]
    assert "'done', 'finished' are not events; choose from start, output, logs, completed, progress" in problems[0][1]
    needs = "needs a webhook: send the URL to call as `webhook`"
    assert read(webhook_events=["start"])[1] == [("webhook_events", needs)]
    assert read(webhook="http://127.0.0.1/", webhook_events=[])[1][0][1].startswith("is empty")
    assert read(webhook="http://127.0.0.1/", webhook_events="start")[1][0][0] == "webhook_events"
    assert read(webhook=["http://127.0.0.1/"])[1] == [
        ("webhook", "must be a URL (text), e.g. https://hooks.lan/avportal")
    ]


# ---- the secret, the schedule, the settings ----------------------------------------------------


def test_the_secret_is_made_once_in_the_data_dir_readable_by_the_portal_only(tmp_path: Path) -> None:
    made = load_or_create_secret(tmp_path / "data", None)
    assert made.startswith("whsec_") and check_secret(made) == made
    assert stat.S_IMODE((tmp_path / "data" / SECRET_FILE).stat().st_mode) == 0o600
    assert load_or_create_secret(tmp_path / "data", None) == made, "kept, not made again"
    configured = new_secret()
    assert load_or_create_secret(tmp_path / "data", configured) == configured
    standardwebhooks.Webhook(made)  # the library takes it


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "must start with whsec_"),
        ("whsec_not base64!", "is not base64"),
        ("whsec_c2hvcnQ=", "holds 5 bytes; use 24 to 64"),
    ],
)
def test_a_bad_configured_secret_stops_start_up_naming_the_variable(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=f"AVP_WEBHOOK_SECRET {message}"):
        Settings.from_env({"AVP_DATA_DIR": str(tmp_path), "AVP_WEBHOOK_SECRET": value})


def test_webhook_settings_are_read_from_the_environment(tmp_path: Path) -> None:
    secret = new_secret()
    settings = Settings.from_env(
        {
            "AVP_DATA_DIR": str(tmp_path),
            "AVP_WEBHOOK_ALLOW": "127.0.0.1,hooks.lan",
            "AVP_WEBHOOK_SECRET": secret,
            "AVP_WEBHOOK_BACKOFF_S": "0.2",
            "AVP_WEBHOOK_ATTEMPTS": "3",
        }
    )
    assert settings.webhook_allow.names == {"hooks.lan"} and settings.webhook_secret == secret
    assert (settings.webhook_backoff_s, settings.webhook_attempts) == (0.2, 3)
    assert not Settings.from_env({"AVP_DATA_DIR": str(tmp_path)}).webhook_allow, "none allowed by default"
    with pytest.raises(SettingsError, match="AVP_WEBHOOK_ALLOW entry 'https://x'"):
        Settings.from_env({"AVP_DATA_DIR": str(tmp_path), "AVP_WEBHOOK_ALLOW": "https://x"})


def test_the_backoff_doubles_from_the_first_wait_up_to_an_hour() -> None:
    assert [backoff_s(n, 5.0) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 320, 640]
    assert backoff_s(10, 5.0) == 2560 and backoff_s(11, 5.0) == MAX_BACKOFF_S == backoff_s(19, 5.0)
    assert sum(backoff_s(n, 5.0) for n in range(1, 20)) / 3600 == pytest.approx(10.4, abs=0.1), "20 attempts: ~10 h"
    assert [backoff_s(n, 0.2) for n in range(1, 4)] == pytest.approx([0.2, 0.4, 0.8])


@pytest.mark.parametrize(
    ("event", "name"),
    [
        ({"type": "queued"}, None),
        ({"type": "running", "attempt": 1}, "start"),
        ({"type": "stage", "name": "denoise"}, "logs"),
        ({"type": "step", "step": 1}, "progress"),
        ({"type": "tile", "done": 1}, "progress"),
        ({"type": "preview", "step": 2}, "progress"),
        ({"type": "memory", "stage": "denoise"}, None),
        ({"type": "result", "frames": 9}, "output"),
        ({"type": "error", "code": "x"}, None),
        ({"type": "interrupted"}, None),
        ({"type": "succeeded"}, "completed"),
        ({"type": "failed"}, "completed"),
        ({"type": "cancelled"}, "completed"),
    ],
)
def test_job_events_map_to_replicates_webhook_events(event: dict, name: str | None) -> None:
    assert event_name(event) == name


# ---- deliveries queued by a job's events --------------------------------------------------------


@contextlib.contextmanager
def journal_with_webhooks(tmp_path: Path, allow: str = "127.0.0.1", attempts: int = 3) -> Iterator[tuple]:
    settings = Settings(data_dir=tmp_path, webhook_allow=Allowlist.parse(allow))
    store, broker = Store(tmp_path / "portal.db"), Broker()
    secret = new_secret()
    pages = PageFeed(broker, build_templates(settings), settings)
    webhooks = Webhooks(
        store, lambda job: present(job, settings, pages.places), secret, settings.webhook_allow, 0.05, attempts
    )
    journal = Journal(store, broker, pages, slots=("cpu0",), webhooks=webhooks)
    try:
        yield store, journal, webhooks, secret
    finally:
        store.close()


def test_a_jobs_events_queue_the_deliveries_its_webhook_asks_for_with_the_job_as_it_was(tmp_path: Path) -> None:
    with journal_with_webhooks(tmp_path) as (store, journal, _, _):
        hook = Webhook("http://127.0.0.1:9/h", ("start", "progress", "completed"))
        store.create_job("a", Request(prompt="a"), {"type": "queued"}, 10, None, hook)
        store.create_job("b", Request(prompt="b"), {"type": "queued"}, 10)

        async def events() -> None:
            for job_id in "ab":
                await journal.set_status(job_id, "running", start_attempt=True)
                await journal.record(job_id, {"type": "stage", "name": "denoise"})  # logs: not asked for
                for step in (1, 2, 3):  # one progress delivery: these come within 2 s of each other
                    await journal.record(job_id, {"type": "step", "step": step, "total": 3})
                await journal.set_status(job_id, "succeeded")

        anyio.run(events)
        deliveries = store.deliveries("a")
        assert [(d.event, d.state, d.attempts, d.url) for d in deliveries] == [
            ("start", "pending", 0, hook.url),
            ("progress", "pending", 0, hook.url),
            ("completed", "pending", 0, hook.url),
        ]
        bodies = [json.loads(d.body) for d in deliveries]
        assert [(b["webhook_event"], b["status"], b["id"]) for b in bodies] == [
            ("start", "running", "a"),
            ("progress", "running", "a"),
            ("completed", "succeeded", "a"),
        ]
        assert bodies[0]["webhook"] == hook.url and bodies[0]["webhook_events"] == list(hook.events)
        assert len({d.id for d in deliveries}) == 3 and all(d.id.startswith("msg_") for d in deliveries)
        assert store.deliveries("b") == [] and store.get_job("b").webhook is None
        store.delete_job("a")
        assert store.deliveries("a") == []


class Receiver(http.server.ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 recording each request's path and headers; /moved answers 302."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(302 if self.path == "/moved" else 204)
                if self.path == "/moved":
                    self.send_header("location", "http://10.0.0.1/")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.shutdown()
    server.server_close()


def attempt_once(webhooks: Webhooks, delivery: Delivery):
    async def send():
        async with httpx.AsyncClient(trust_env=False) as client:
            return await webhooks.send(client, delivery)

    return anyio.run(send)


def delivery(url: str) -> Delivery:
    return Delivery("msg_1", "a", "completed", url, b'{"id": "a"}', "pending", 0, 0.0, 0.0, None, None, None)


def test_an_attempt_connects_to_the_checked_address_with_the_urls_host_and_a_valid_signature(
    tmp_path: Path, receiver: Receiver
) -> None:
    port = receiver.server_address[1]
    with journal_with_webhooks(tmp_path, allow="localhost,127.0.0.1,::1") as (_, _, webhooks, secret):
        attempt = attempt_once(webhooks, delivery(f"http://localhost:{port}/hook?x=1#frag"))
    assert (attempt.status, attempt.error) == (204, None)
    [(path, headers)] = receiver.requests
    assert path == "/hook?x=1" and headers["host"] == f"localhost:{port}"
    assert standardwebhooks.Webhook(secret).verify(b'{"id": "a"}', headers) == {"id": "a"}
    assert headers["webhook-id"] == "msg_1"


def test_a_redirect_is_not_followed_and_counts_as_a_failed_attempt(tmp_path: Path, receiver: Receiver) -> None:
    port = receiver.server_address[1]
    with journal_with_webhooks(tmp_path) as (_, _, webhooks, _):
        attempt = attempt_once(webhooks, delivery(f"http://127.0.0.1:{port}/moved"))
    assert attempt.status == 302 and "redirects are not followed" in attempt.error
    assert [path for path, _ in receiver.requests] == ["/moved"], "nothing went to the Location"


def test_at_delivery_a_listed_name_resolving_to_a_forbidden_address_is_refused_without_connecting(
    tmp_path: Path,
) -> None:
    """localhost is listed by name only: the attempt resolves it again, finds loopback, and connects nowhere."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        with journal_with_webhooks(tmp_path, allow="localhost") as (_, _, webhooks, _):
            attempt = attempt_once(webhooks, delivery(f"http://localhost:{port}/"))
        assert attempt.status is None and attempt.error.startswith("refused: the webhook names localhost, which")
        with pytest.raises(TimeoutError):
            listener.accept()


def test_the_loop_retries_with_backoff_keeps_the_id_and_gives_up_after_the_last_attempt(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]  # nothing accepts on it once closed
    with journal_with_webhooks(tmp_path, attempts=3) as (store, journal, webhooks, _):
        store.create_job("a", Request(prompt="a"), {"type": "queued"}, 10, None, Webhook(f"http://127.0.0.1:{port}/"))

        async def run() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(webhooks.run)
                await journal.set_status("a", "cancelled")
                with anyio.fail_after(10):
                    while store.deliveries("a")[0].state == "pending":
                        await anyio.sleep(0.02)
                tg.cancel_scope.cancel()

        anyio.run(run)
        [gave_up] = store.deliveries("a")
    assert (gave_up.event, gave_up.state, gave_up.attempts, gave_up.next_at) == ("completed", "failed", 3, None)
    assert gave_up.last_error.startswith(f"could not connect to 127.0.0.1 port {port}")


def test_a_receiver_that_never_answers_fails_the_attempt_after_the_timeout(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(webhooks_module, "TIMEOUT_S", 0.3)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connections wait in its backlog, never answered
        port = silent.getsockname()[1]
        with journal_with_webhooks(tmp_path) as (_, _, webhooks, _):
            attempt = attempt_once(webhooks, delivery(f"http://127.0.0.1:{port}/"))
    assert attempt == Attempt(None, f"no answer from 127.0.0.1 port {port} within 0.3 s")
