"""Signed webhooks end to end: a real portal (uvicorn, SQLite, the demo model's runner) delivering to a real
receiver process on loopback that verifies every signature with the standardwebhooks library, killed in the
middle of a delivery and started again; a portal restarted while a delivery waits; bad webhooks refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from app.webhooks import new_secret
from tests.portal import REPO_ROOT, Portal, free_port, prepare_data_dir, wait_for

TINY = {"width": 64, "height": 64, "num_frames": 9, "steps": 2}
ALL_EVENTS = ["start", "output", "logs", "completed", "progress"]


class Receiver:
    """`python -m tests.webhook_receiver` on a loopback port, recording what it got to a file."""

    def __init__(self, port: int, secret: str, record: Path) -> None:
        self.port, self.secret, self.record = port, secret, record
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self, hang: bool = False, tls: tuple[Path, Path] | None = None) -> Receiver:
        args = [sys.executable, "-m", "tests.webhook_receiver", str(self.port), self.secret, str(self.record)]
        args += ["--hang"] if hang else []
        args += ["--tls", *map(str, tls)] if tls else []
        self.process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdout.readline() == "listening\n"
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def got(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.fixture
def make_receiver(tmp_path: Path) -> Iterator:
    started: list[Receiver] = []

    def make(secret: str) -> Receiver:
        receiver = Receiver(free_port(), secret, tmp_path / f"received{len(started)}.jsonl")
        started.append(receiver)
        return receiver

    yield make
    for receiver in started:
        receiver.kill()


def deliveries(portal: Portal, job_id: str) -> list[dict[str, Any]]:
    with portal.client() as c:
        return c.get(f"/api/jobs/{job_id}/webhooks").raise_for_status().json()["deliveries"]


def until_deliveries(portal: Portal, job_id: str, done, timeout: float = 120) -> list[dict[str, Any]]:
    return wait_for(lambda: (found := deliveries(portal, job_id)) and done(found) and found, timeout, "deliveries")


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def deliveries_table(portal: Portal, job_id: str) -> str:
    """The job page's table of deliveries as it asks for itself while they may change."""
    with portal.client() as c:
        answer = c.get(f"/jobs/{job_id}/webhooks")
        assert answer.status_code == 200, answer.text
        return answer.text


def test_every_event_is_delivered_signed_through_a_receiver_killed_mid_delivery(make_portal, make_receiver) -> None:
    secret = new_secret()
    portal = make_portal(AVP_WEBHOOK_ALLOW="127.0.0.1", AVP_WEBHOOK_SECRET=secret, AVP_WEBHOOK_BACKOFF_S="0.3")
    receiver = make_receiver(secret).start(hang=True)  # takes the first delivery and never answers it
    job = portal.submit(**TINY, webhook=receiver.url, webhook_events=ALL_EVENTS)
    assert (job["webhook"], job["webhook_events"]) == (receiver.url, ALL_EVENTS)
    assert job["links"]["webhooks"] == f"/api/jobs/{job['id']}/webhooks"

    hung = wait_for(receiver.got, 120, "a first delivery")[0]
    assert hung["verified"] and hung["event"] == "start" and hung["job_id"] == job["id"]
    receiver.kill()  # in the middle of that delivery: the portal's attempt loses its connection
    # It fails, and so does the retry that finds nobody listening; then the receiver comes back on its port.
    until_deliveries(portal, job["id"], lambda found: found[0]["attempts"] >= 2, timeout=60)
    waiting = deliveries_table(portal, job["id"])
    assert 'class="delivery-pending"' in waiting and 'hx-trigger="every 2s"' in waiting, "the page's table follows"
    receiver.record.unlink()
    receiver.start()

    finished = portal.wait(job["id"], timeout=180)
    assert finished["status"] == "succeeded"
    listed = until_deliveries(portal, job["id"], lambda found: all(d["status"] == "delivered" for d in found))
    got = receiver.got()
    assert got and all(g["verified"] for g in got), "every delivery carries a signature the library accepts"
    assert {g["webhook_id"] for g in got} == {d["id"] for d in listed}, "at least once each, under its listed id"

    first = listed[0]
    assert (first["id"], first["event"]) == (hung["webhook_id"], "start"), "the retried delivery kept its webhook-id"
    assert first["attempts"] >= 3 and first["last_status_code"] == 204 and first["last_error"] is None
    again = [g for g in got if g["webhook_id"] == hung["webhook_id"]]
    assert again[0]["body"] == hung["body"], "the same body on every attempt"

    events = [d["event"] for d in listed]
    assert events[0] == "start" and events[-1] == "completed"
    assert {"logs", "output"} <= set(events)
    progress = [at(d["created_at"]) for d in listed if d["event"] == "progress"]
    assert progress and all(b - a >= 2.0 for a, b in zip(progress, progress[1:], strict=False))

    completed = next(g["body"] for g in got if g["event"] == "completed")
    assert completed["status"] == "succeeded" and completed["webhook_event"] == "completed"
    assert {k: v for k, v in completed.items() if k != "webhook_event"} == portal.job(job["id"]), "the job as the API"
    output = next(g["body"] for g in got if g["event"] == "output")
    assert output["status"] == "running" and output["result"]["frames"] == 9

    with portal.client() as c:
        page = c.get(f"/jobs/{job['id']}").text
    assert "Webhook deliveries" in page and receiver.url in page
    assert all(d["id"] in page for d in listed) and page.count('class="delivery-delivered"') == len(listed)
    settled = deliveries_table(portal, job["id"])
    assert settled.count('class="delivery-delivered"') == len(listed) and "hx-trigger" not in settled, "it stops asking"


def test_a_pending_delivery_survives_a_restart_of_the_portal(
    tmp_path: Path, demo_model_dir, make_portal, make_receiver
) -> None:
    data_dir = prepare_data_dir(tmp_path / "data", demo_model_dir)
    # The operator's way to the secret the portal signs with when AVP_WEBHOOK_SECRET is unset: made once, kept.
    command = [sys.executable, "-m", "app", "webhook-secret"]
    env = {**os.environ, "AVP_DATA_DIR": str(data_dir)}
    env.pop("AVP_WEBHOOK_SECRET", None)
    secret = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert secret.startswith("whsec_")

    portal = make_portal(data_dir, AVP_WEBHOOK_ALLOW="127.0.0.1", AVP_WEBHOOK_BACKOFF_S="0.5")
    receiver = make_receiver(secret)  # not started: nobody listens when the job completes
    job = portal.submit(**TINY, webhook=receiver.url)
    assert job["webhook_events"] == ["completed"], "Replicate's default"
    assert portal.wait(job["id"], timeout=180)["status"] == "succeeded"
    [pending] = until_deliveries(portal, job["id"], lambda found: found[0]["attempts"] >= 1)
    assert pending["status"] == "pending" and pending["next_attempt_at"] is not None
    assert pending["last_error"].startswith(f"could not connect to 127.0.0.1 port {receiver.port}")

    portal.stop()
    receiver.start()
    portal.start()
    [got] = wait_for(receiver.got, 60, "the delivery after the restart")
    assert (got["webhook_id"], got["verified"], got["event"]) == (pending["id"], True, "completed")
    assert got["body"]["status"] == "succeeded" and got["body"]["id"] == job["id"]
    [delivered] = until_deliveries(portal, job["id"], lambda found: found[0]["status"] == "delivered")
    assert delivered["id"] == pending["id"] and delivered["attempts"] > pending["attempts"]
    assert subprocess.run(command, env=env, capture_output=True, text=True).stdout.strip() == secret, "kept"


def test_bad_webhooks_are_400s_naming_the_field_and_a_dead_destination_is_given_up(make_portal) -> None:
    # localhost is listed by name only: it resolves to loopback addresses nobody listed.
    portal = make_portal(AVP_WEBHOOK_ALLOW="localhost,127.0.0.2", AVP_WEBHOOK_ATTEMPTS="2", AVP_WEBHOOK_BACKOFF_S="0.1")
    dead = f"http://127.0.0.2:{free_port()}/hook"  # allowed, but nothing listens there
    cases = [
        ({"webhook": "ftp://127.0.0.2/hook"}, {"webhook": "must be an http or https URL, not ftp:"}),
        ({"webhook": "http://10.1.2.3/hook"}, {"webhook": "calls 10.1.2.3, which AVP_WEBHOOK_ALLOW"}),
        ({"webhook": "http://hooks.example/hook"}, {"webhook": "names hooks.example, which AVP_WEBHOOK_ALLOW"}),
        ({"webhook": f"http://localhost:{free_port()}/"}, {"webhook": "names localhost, which resolves to"}),
        ({"webhook": dead, "webhook_events": ["done"]}, {"webhook_events": "'done' is not an event; choose from"}),
        ({"webhook_events": ["start"]}, {"webhook_events": "needs a webhook"}),
        ({"webhook": 5, "prompt": ""}, {"prompt": "is empty", "webhook": "must be a URL"}),
    ]
    with portal.client() as c:
        for fields, expected in cases:
            response = c.post("/api/jobs", json={"prompt": "a red ball", **TINY, "mode": "quality", **fields})
            assert response.status_code == 400, response.text
            errors = {e["field"]: e["message"] for e in response.json()["errors"]}
            assert set(errors) == set(expected), errors
            assert all(errors[field].startswith(start) for field, start in expected.items()), errors
        assert c.get("/api/jobs").json()["jobs"] == [], "none of them made a job"

        job = portal.submit(**TINY, webhook=dead)
        c.post(f"/api/jobs/{job['id']}/cancel", json={}).raise_for_status()
    [gave_up] = until_deliveries(portal, job["id"], lambda found: found[0]["status"] != "pending", timeout=60)
    assert (gave_up["event"], gave_up["status"], gave_up["attempts"]) == ("completed", "failed", 2)
    assert gave_up["last_error"].startswith("could not connect to 127.0.0.2")
    with portal.client() as c:
        page = c.get(f"/jobs/{job['id']}").text
    assert 'class="delivery-failed"' in page and dead in page
    with portal.client() as c:
        plain = portal.submit(**TINY)
        assert c.get(f"/jobs/{plain['id']}/webhooks").status_code == 404, "a job without a webhook has no table"
        c.post(f"/api/jobs/{plain['id']}/cancel", json={})


def certificates(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA of the test's own (openssl), and a certificate it signed for the host name `name` alone:
    (the CA's certificate, the certificate, its key)."""
    ca, ca_key, cert, key, request, extensions = (
        directory / f for f in ("ca.pem", "ca.key", "cert.pem", "cert.key", "cert.csr", "cert.ext")
    )
    extensions.write_text(
        f"subjectAltName=DNS:{name}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=avportal test CA"]
        + ["-keyout", ca_key, "-out", ca],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", key, "-out", request],
        ["x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "1"]
        + ["-extfile", extensions, "-out", cert],
    ):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, cwd=directory)
    return ca, cert, key


def test_https_deliveries_check_the_certificate_against_the_urls_host_name(make_portal, make_receiver, tmp_path):
    """Delivered over TLS to a checked address, the certificate checked against the URL's host name (sent as the
    server name) by AVP_WEBHOOK_CA_FILE's CA. The same receiver by its address fails, its certificate naming no
    address, although the first delivery reached that very address under its host name."""
    ca, cert, key = certificates(tmp_path, "localhost")
    secret = new_secret()
    portal = make_portal(
        AVP_WEBHOOK_ALLOW="localhost,127.0.0.1,::1",
        AVP_WEBHOOK_SECRET=secret,
        AVP_WEBHOOK_CA_FILE=str(ca),
        AVP_WEBHOOK_ATTEMPTS="1",
    )
    receiver = make_receiver(secret).start(tls=(cert, key))
    with portal.client() as c:
        c.post("/api/queue/pause", json={}).raise_for_status()  # cancelled unstarted, each job sends `completed` alone
        jobs = {}
        for name in ("localhost", "127.0.0.1"):
            url = f"https://{name}:{receiver.port}/hook"
            jobs[name] = portal.submit(**TINY, webhook=url, webhook_events=["completed"])["id"]
            c.post(f"/api/jobs/{jobs[name]}/cancel", json={}).raise_for_status()
            until_deliveries(portal, jobs[name], lambda found: found[0]["status"] != "pending", timeout=60)
    [by_name] = deliveries(portal, jobs["localhost"])
    assert (by_name["status"], by_name["last_status_code"]) == ("delivered", 204), by_name
    [got] = receiver.got()
    assert got["verified"] and got["job_id"] == jobs["localhost"] and got["host"] == f"localhost:{receiver.port}"
    [by_address] = deliveries(portal, jobs["127.0.0.1"])
    assert by_address["status"] == "failed" and "certificate" in by_address["last_error"], by_address
    assert len(receiver.got()) == 1, "nothing was sent over a connection whose certificate did not check out"


def test_a_bad_webhook_secret_stops_the_portal_before_it_serves(tmp_path: Path) -> None:
    refused = Portal(tmp_path / "data", {"AVP_WEBHOOK_SECRET": "whsec_c2hvcnQ="}).refused()
    assert refused.returncode == 2
    assert "AVP_WEBHOOK_SECRET holds 5 bytes; use 24 to 64 random bytes" in refused.stderr
    assert not (tmp_path / "data").exists(), "nothing made"
    (tmp_path / "not-pem.txt").write_text("hello")
    for ca_file, words in ((tmp_path / "missing.pem", "No such file"), (tmp_path / "not-pem.txt", "cannot be read")):
        refused = Portal(tmp_path / "data", {"AVP_WEBHOOK_CA_FILE": str(ca_file)}).refused()
        assert refused.returncode == 2 and "AVP_WEBHOOK_CA_FILE" in refused.stderr and words in refused.stderr
    assert not (tmp_path / "data").exists(), "nothing made"
