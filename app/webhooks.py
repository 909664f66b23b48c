"""Signed webhooks: what a job's events send, and the loop that delivers it.

A job that carries a `webhook` gets a delivery for each event it asked for (`webhook_events`, Replicate's names):
`start` when it starts running, `logs` at each stage the runner enters, `progress` as its steps and tiles go
(at most one every PROGRESS_EVERY_S), `output` when its MP4 is written and `completed` when it ends (succeeded,
failed or cancelled). Each delivery is queued in SQLite in the same transaction as the event that made it, with
its body (the job as the API shows it then, plus `webhook_event`), and sent by `Webhooks.run`, a task beside the
queue's consumer, following the Standard Webhooks spec: `webhook-id` (the delivery's, the same on every attempt),
`webhook-timestamp` and `webhook-signature` (HMAC-SHA256 by the `standardwebhooks` library with the portal's
secret). A 2xx answer delivers it; anything else (a redirect too: none is followed) is tried again after
`backoff_s(attempt)`, until the attempts run out and it is marked failed. Each attempt resolves the host again,
checks every address against AVP_WEBHOOK_ALLOW (app/webhook_targets.py) and connects to a checked address, with
the Host header and TLS server name of the URL's host. Nothing here blocks the event loop: DNS runs in a thread,
SQLite through the store's thread, HTTP on httpx's async client.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
import secrets
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import standardwebhooks

from app.store import Delivery, JobRow, Store, WebhookEvent
from app.webhook_targets import Allowlist, Refused, default_port, literal_address, resolve, split_url

log = logging.getLogger(__name__)

SECRET_FILE = "webhook-secret"  # in the data directory, 0600, when AVP_WEBHOOK_SECRET is not set
SECRET_PREFIX = "whsec_"
SECRET_BYTES = (24, 64)  # the Standard Webhooks spec's range for a secret's length
PROGRESS_EVERY_S = 2.0
MAX_BACKOFF_S = 3600.0  # the longest wait between two attempts
TIMEOUT_S = 10.0  # one attempt, connecting included
AT_ONCE = 4  # attempts in flight together: a slow receiver holds one slot, not the loop
STORE_RETRY_S = 2.0  # how long deliveries wait while the database cannot record them
_TERMINAL = ("succeeded", "failed", "cancelled")


def check_secret(value: str) -> str:
    """A `whsec_...` secret as the standardwebhooks library takes it; ValueError saying what is wrong."""
    if not value.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX}, then the secret in base64; {_MAKE_ONE}")
    try:
        key = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError(f"is not base64 after {SECRET_PREFIX}; {_MAKE_ONE}") from None
    low, high = SECRET_BYTES
    if not low <= len(key) <= high:
        raise ValueError(f"holds {len(key)} bytes; use {low} to {high} random bytes; {_MAKE_ONE}")
    return value


_MAKE_ONE = "make one with `python -m app webhook-secret` (unset it first) or leave it unset"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def load_or_create_secret(data_dir: Path, configured: str | None) -> str:
    """The signing secret: AVP_WEBHOOK_SECRET (checked already), else the data directory's, made once (0600)."""
    if configured:
        return configured
    path = data_dir / SECRET_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with open(path, "x", opener=lambda p, flags: os.open(p, flags, 0o600)) as f:  # readable by us only
            f.write(new_secret() + "\n")
    except FileExistsError:
        pass
    try:
        return check_secret(path.read_text().strip())
    except ValueError as exc:
        raise ValueError(f"{path} {exc}") from None


def backoff_s(attempts: int, first_s: float) -> float:
    """How long a delivery waits after its `attempts`-th failed attempt: doubling from `first_s`, at most an hour."""
    return min(first_s * 2 ** (attempts - 1), MAX_BACKOFF_S)


def event_name(event: dict[str, Any]) -> str | None:
    """The webhook event a stored job event makes, if any."""
    kind = event.get("type")
    if kind == "running":
        return "start"
    if kind in _TERMINAL:
        return "completed"
    if kind == "result":
        return "output"
    if kind == "stage":
        return "logs"
    if kind in ("step", "tile", "preview", "token", "enhanced_prompt", "num_frames"):
        return "progress"
    return None


class Attempt(msgspec.Struct, frozen=True):
    status: int | None  # the HTTP status, if an answer came
    error: str | None  # None: delivered


class Webhooks:
    """Makes each event's delivery (called by the journal) and delivers what is pending (`run`)."""

    def __init__(
        self,
        store: Store,
        present: Callable[[JobRow], Any],
        secret: str,
        allow: Allowlist,
        first_backoff_s: float,
        max_attempts: int,
        ca_file: Path | None = None,
    ) -> None:
        self._store = store
        self._present = present
        self._signer = standardwebhooks.Webhook(secret)
        self._allow = allow
        self._first_backoff_s = first_backoff_s
        self._max_attempts = max_attempts
        # The certificates an https destination's is checked against: AVP_WEBHOOK_CA_FILE's alone, or the public ones.
        self._verify: ssl.SSLContext | bool = True if ca_file is None else ssl.create_default_context(cafile=ca_file)
        self._wake = anyio.Event()
        self._in_flight: set[str] = set()

    def event_for(self, event: dict[str, Any]) -> WebhookEvent | None:
        """What the store queues with this job event (if the job's webhook wants it); None: nothing."""
        name = event_name(event)
        if name is None:
            return None
        return WebhookEvent(name, self._body, PROGRESS_EVERY_S if name == "progress" else 0.0)

    def _body(self, job: JobRow, name: str) -> bytes:
        return msgspec.json.encode({**msgspec.to_builtins(self._present(job)), "webhook_event": name})

    def wake(self) -> None:
        """Something was queued or finished: look at the table again now."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver every pending delivery when it is due, forever (a task of the app's lifespan)."""
        limiter = anyio.CapacityLimiter(AT_ONCE)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per attempt: the table records them
        # trust_env off: a proxy from the environment would resolve and connect to the name itself. No connection is
        # kept for the next delivery: connections are pooled by the address they went to, and one set up (its
        # certificate checked) for one host name must not carry a delivery to another name at the same address.
        client = httpx.AsyncClient(
            timeout=TIMEOUT_S,
            follow_redirects=False,
            trust_env=False,
            verify=self._verify,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        async with (
            client,
            anyio.create_task_group() as tg,
        ):
            while True:
                wake = self._wake = anyio.Event()
                try:
                    due, upcoming = await self._store.call(self._store.due_deliveries, time.time())
                except Exception:  # the database cannot be read (a full disk, say): no delivery is lost, only late
                    log.exception("cannot read the webhook deliveries; trying again in %s s", STORE_RETRY_S)
                    due, upcoming = [], time.time() + STORE_RETRY_S
                for delivery in due:
                    if delivery.id not in self._in_flight:
                        self._in_flight.add(delivery.id)
                        tg.start_soon(self._attempt, client, limiter, delivery)
                with anyio.move_on_after(math.inf if upcoming is None else max(0.0, upcoming - time.time())):
                    await wake.wait()

    async def _attempt(self, client: httpx.AsyncClient, limiter: anyio.CapacityLimiter, delivery: Delivery) -> None:
        try:
            async with limiter:
                try:
                    attempt = await self.send(client, delivery)
                except Exception as exc:  # a bug here must not stop the deliveries: this one is recorded, retried
                    log.exception("webhook %s of job %s: the attempt failed", delivery.id, delivery.job_id)
                    attempt = Attempt(None, f"the portal could not send it: {exc!r}")
            now, attempts = time.time(), delivery.attempts + 1
            retry_at = None if attempts >= self._max_attempts else now + backoff_s(attempts, self._first_backoff_s)
            if attempt.error is not None:
                gave_up = " (gave up)" if retry_at is None else ""
                log.warning(
                    "webhook %s of job %s, attempt %d%s: %s",
                    delivery.id,
                    delivery.job_id,
                    attempts,
                    gave_up,
                    attempt.error,
                )
            record = self._store.record_attempt
            try:
                await self._store.call(record, delivery.id, now, attempt.status, attempt.error, retry_at)
            except Exception:  # not recorded (a full disk, say): still pending as it was, tried again after a pause
                log.exception("webhook %s: cannot record its attempt; trying again in %s s", delivery.id, STORE_RETRY_S)
                await anyio.sleep(STORE_RETRY_S)
        finally:
            self._in_flight.discard(delivery.id)
            self.wake()

    async def send(self, client: httpx.AsyncClient, delivery: Delivery) -> Attempt:
        """One attempt: resolve, check every address, POST the signed body to a checked one."""
        parts = split_url(delivery.url)
        host, port = parts.hostname or "", default_port(parts)
        try:
            addresses = await resolve(host, port)
            self._allow.check_addresses(host, addresses)
        except Refused as refused:
            return Attempt(None, f"refused: the webhook {refused}")
        except OSError as exc:
            return Attempt(None, f"{host} does not resolve ({exc.strerror or exc})")
        now = datetime.now(UTC)
        headers = {
            "webhook-id": delivery.id,
            "webhook-timestamp": str(math.floor(now.timestamp())),
            "webhook-signature": self._signer.sign(delivery.id, now, delivery.body.decode()),
            "content-type": "application/json",
            "host": parts.netloc,  # the URL's host and port, though the connection goes to the checked address
            "user-agent": "avportal-webhooks",
        }
        # TLS checks the certificate against the URL's host name, sent as the server name.
        extensions = {"sni_hostname": host} if parts.scheme == "https" and literal_address(host) is None else {}
        failed = ""
        for address in addresses:
            netloc = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
            url = parts._replace(netloc=netloc, fragment="").geturl()
            # The answer's headers are all it reads (its body is never read), within TIMEOUT_S however slowly
            # the receiver drips them.
            with anyio.move_on_after(TIMEOUT_S):
                try:
                    async with client.stream(
                        "POST", url, content=delivery.body, headers=headers, extensions=extensions
                    ) as response:
                        status, reason, moved = response.status_code, response.reason_phrase, response.is_redirect
                except httpx.ConnectError as exc:
                    failed = f"could not connect to {address} port {port} ({exc or type(exc).__name__})"
                    continue  # the next address the host resolved to, checked as well
                except httpx.HTTPError as exc:
                    return Attempt(None, f"{type(exc).__name__} from {address} port {port}: {exc}".rstrip(": "))
                if 200 <= status < 300:
                    return Attempt(status, None)
                return Attempt(status, f"HTTP {status} {reason}" + ("; redirects are not followed" if moved else ""))
            return Attempt(None, f"no answer from {address} port {port} within {TIMEOUT_S:g} s")
        return Attempt(None, failed)
