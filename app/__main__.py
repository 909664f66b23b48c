"""Command line: `python -m app serve [--host H] [--port P]`, `python -m app hash-password`, `python -m app
webhook-secret`, `python -m app import-model FILE...` (also `avportal`)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import getpass
import logging
import os
import socket
import sqlite3
import sys
from collections.abc import Callable
from types import FrameType

import msgspec
import uvicorn

from app.config import Settings
from app.data_lock import DataDirBusy, DataDirLock
from app.passwords import hash_password
from app.runner import runner_command, runner_env
from app.web import create_app
from app.webhooks import load_or_create_secret as load_or_create_webhook_secret
from contract.disk import is_disk_full

MIN_PASSWORD_CHARS = 8


class _Server(uvicorn.Server):
    """Runs `on_exit` as soon as shutdown starts: open SSE streams end instead of holding it up."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_exit)
        super().handle_exit(sig, frame)


# Below this much free space a failure to open the store is taken for a full disk, whatever SQLite calls it.
STARTUP_ROOM_BYTES = 2**20


def serve(settings: Settings) -> int:
    """Serve until stopped; 3 (having changed nothing) when another portal holds the data directory or the port,
    or the data disk is too full to open the store.

    The data directory is locked before anything reads it, and the port is bound before start-up
    recovery, which marks the jobs the last portal left running as interrupted: only a portal that
    will serve may do that.
    """
    try:
        _lock = DataDirLock(  # held until this process exits, however it exits
            settings.data_dir, f"pid {os.getpid()}, serving http://{settings.host}:{settings.port}"
        )
        listener = _listen(settings.host, settings.port)
    except DataDirBusy as busy:
        return _refuse(f"{busy}; stop that portal first, or give this one its own data directory (AVP_DATA_DIR)")
    except OSError as exc:
        why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be listened on ({exc.strerror or exc})"
        return _refuse(
            f"{settings.host}:{settings.port} {why}; stop whatever uses it, or choose another port (--port or AVP_PORT)"
        )
    try:
        app = create_app(settings)
    except (OSError, sqlite3.Error) as error:
        disk = settings.data_disk.status()
        # On a full tmpfs SQLite says "disk I/O error" (it cannot make the WAL's shared-memory file), not "full".
        if not (is_disk_full(error) or disk.free_bytes < STARTUP_ROOM_BYTES):
            raise
        return _refuse(
            f"the data disk is full ({disk.free} free where the data directory {settings.data_dir} is), so the "
            "job database cannot be opened; free space on that disk, then start the portal again"
        )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
        lifespan="on",
        # Client address and scheme from X-Forwarded-For/-Proto, believed only from these addresses.
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxies,
    )
    _Server(config, app.state.parts.broker.close).run(sockets=[listener])
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, as uvicorn would make it; OSError (say, the port is in use) if not."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)
    except OSError:
        listener.close()
        raise
    return listener


def _refuse(message: str) -> int:
    print(f"avportal: {message}", file=sys.stderr)
    return 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avportal", description="Self-hosted audio+video diffusion portal")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve the portal (settings from AVP_* variables)")
    serve_cmd.add_argument("--host", help="address to listen on (AVP_HOST, default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="port to listen on (AVP_PORT, default 8000)")
    commands.add_parser(
        "hash-password", help="read a password (twice, or once from a pipe) and print AVP_PASSWORD_HASH for it"
    )
    commands.add_parser(
        "webhook-secret",
        help="print the secret webhook deliveries are signed with (AVP_WEBHOOK_SECRET, else the data directory's, "
        "made on first use), for receivers to verify them",
    )
    commands.add_parser(
        "import-model",
        add_help=False,
        help="import Lightricks' single-file LTX-2 checkpoints into the model library (AVP_MODELS_DIR); "
        "avportal import-model --help for its options",
    )
    args, rest = parser.parse_known_args(argv)
    if args.command == "import-model":
        return _import_model(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "hash-password":
        return _hash_password()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k in ("host", "port") if (v := getattr(args, k, None)) is not None}
    try:
        settings = msgspec.structs.replace(Settings.from_env(), **overrides)
        if args.command == "webhook-secret":
            print(load_or_create_webhook_secret(settings.data_dir, settings.webhook_secret))
            return 0
        settings.check_exposure()
        if settings.ray_address:
            from app.ray_executor import check_reachable

            check_reachable(settings.ray_address)
    except ValueError as exc:  # a SettingsError, or the data directory's webhook secret is damaged
        print(f"avportal: {exc}", file=sys.stderr)
        return 2
    return serve(settings)


def _import_model(arguments: list[str]) -> int:
    """Run the import in the runner's Python (AVP_RUNNER_PYTHON: the diffusion stack may live in its own venv),
    into the library the portal reads; its progress bar and messages go straight to this terminal."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"avportal: {exc}", file=sys.stderr)
        return 2
    settings.library_dir.mkdir(parents=True, exist_ok=True)
    library = ["--models-dir", str(settings.library_dir)]
    # The weight cache and its budget: the import writes FP8 weights there as they are (the first FP8 job then casts
    # nothing).
    options = ["--runner-options", msgspec.json.encode(settings.runner_options()).decode()]
    command = runner_command(settings.runner_python, "import-model", *arguments, *library, *options)
    # Replaced by the import, not waited on: Ctrl-C and SIGTERM reach it alone, so it removes what it half wrote
    # (a waiting parent would kill it 0.25 s after a Ctrl-C, or die on SIGTERM and leave it writing).
    os.execvpe(command[0], command, runner_env())


def _hash_password() -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("avportal: the two passwords differ; nothing printed", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < MIN_PASSWORD_CHARS:
        print(f"avportal: use at least {MIN_PASSWORD_CHARS} characters", file=sys.stderr)
        return 2
    print(f"AVP_PASSWORD_HASH={hash_password(password)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
