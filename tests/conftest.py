from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.portal import Portal, prepare_data_dir
from tests.proxies import Proxy
from tests.runner_fixtures import demo_model_dir, version_model_dirs  # noqa: F401  (registers the session fixtures)


@pytest.fixture
def make_portal(tmp_path: Path, demo_model_dir: Path) -> Iterator:  # noqa: F811
    """Start real portals (uvicorn subprocesses) on fresh data dirs; all are stopped afterwards."""
    started: list[Portal] = []

    def make(data_dir: Path | None = None, **env: str) -> Portal:
        if data_dir is None:
            data_dir = prepare_data_dir(tmp_path / f"data{len(started)}", demo_model_dir)
        portal = Portal(data_dir=data_dir, env=env).start()
        started.append(portal)
        return portal

    yield make
    for portal in started:
        portal.stop()


@pytest.fixture
def portal(make_portal) -> Portal:
    return make_portal()


@pytest.fixture(scope="module")
def shared_portal(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[Portal]:  # noqa: F811
    """One portal for a module's tests that need nothing of their own: a start costs seconds of CPU (its spare
    runner imports torch). Those tests must wait for the jobs they look at, and never assume an empty portal."""
    portal = Portal(data_dir=prepare_data_dir(tmp_path_factory.mktemp("shared") / "data", demo_model_dir), env={})
    portal.start()
    yield portal
    portal.stop()


@pytest.fixture
def make_proxy(tmp_path: Path) -> Iterator:
    """Start nginx or Caddy with the shipped deploy/ config in front of a portal; all are stopped afterwards."""
    started: list[Proxy] = []

    def make(kind: str, portal: Portal) -> Proxy:
        proxy = Proxy(kind=kind, upstream_port=portal.port, tmp=tmp_path / f"{kind}{len(started)}")
        started.append(proxy)
        proxy.start()
        portal.front_url = proxy.base_url
        return proxy

    yield make
    for proxy in started:
        proxy.stop()
