"""Real reverse proxies for tests: nginx and Caddy running the shipped deploy/ configs on loopback.

Each proxy gets the site config from deploy/ with only its listening port and the portal's port
changed, in a temp dir of its own, and is killed in `stop()`. What the tests prove about the
proxy (streaming, prefix stripping, body limit) is therefore true of the files we ship.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.portal import REPO_ROOT, free_port

DEPLOY = REPO_ROOT / "deploy"
SUB_PATH = "/portal"
SHIPPED_UPSTREAM = "127.0.0.1:8000"

# A main config as hostile as a stock one: gzip on for every type, streams included. The site
# config must turn it off for event streams.
NGINX_MAIN = """
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 2048; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    gzip on;
    gzip_min_length 1;
    gzip_types *;
    include {site};
}}
"""

CADDY_GLOBAL = """{{
	admin off
	auto_https off
	storage file_system {tmp}/data
}}
"""


def _shipped(name: str, replacements: dict[str, str]) -> str:
    text = (DEPLOY / name).read_text()
    for old, new in replacements.items():
        assert old in text, f"deploy/{name} no longer contains {old!r}; update tests/proxies.py"
        text = text.replace(old, new)
    return text


@dataclass
class Proxy:
    kind: str  # "nginx" or "caddy"
    upstream_port: int
    tmp: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        """The portal's address as a browser sees it: through the proxy, under the sub-path."""
        return f"http://127.0.0.1:{self.port}{SUB_PATH}"

    def start(self, timeout: float = 20) -> Proxy:
        self.tmp.mkdir(parents=True, exist_ok=True)
        command = self._nginx() if self.kind == "nginx" else self._caddy()
        self.log_path = self.tmp / "proxy.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT, env=self._env()
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                return self
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} did not listen within {timeout} s:\n{self.log()}")

    def _nginx(self) -> list[str]:
        site = self.tmp / "site.conf"
        site.write_text(
            _shipped(
                "nginx-avportal.conf",
                {"listen 80;": f"listen 127.0.0.1:{self.port};", SHIPPED_UPSTREAM: f"127.0.0.1:{self.upstream_port}"},
            )
        )
        main = self.tmp / "nginx.conf"
        main.write_text(NGINX_MAIN.format(tmp=self.tmp, site=site))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return [nginx, "-p", str(self.tmp), "-e", str(self.tmp / "error.log"), "-c", str(main)]

    def _caddy(self) -> list[str]:
        config = self.tmp / "Caddyfile"
        site = _shipped(
            "Caddyfile",
            {":80 {": f":{self.port} {{\n\tbind 127.0.0.1", SHIPPED_UPSTREAM: f"127.0.0.1:{self.upstream_port}"},
        )
        config.write_text(CADDY_GLOBAL.format(tmp=self.tmp) + site)
        return ["caddy", "run", "--config", str(config), "--adapter", "caddyfile"]

    def _env(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.tmp), "XDG_DATA_HOME": str(self.tmp), "XDG_CONFIG_HOME": str(self.tmp)}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
