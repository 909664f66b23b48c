from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.portal import Portal, prepare_data_dir
from tests.proxies import Proxy
from tests.runner_fixtures import (  # noqa: F401  (registers the session fixtures)
    demo_model_dir,
    ltx25_model_dir,
    version_model_dirs,
)
from tests.small_disk import SmallDisk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator:
    """Mount small tmpfs file systems (`small_disk(size_mib)`, a SmallDisk); all are unmounted afterwards. A test
    that starts portals on one asks for this fixture before `make_portal`, so the portals stop first."""
    mounted: list[SmallDisk] = []

    def mount(size_mib: int) -> SmallDisk:
        disk = SmallDisk(tmp_path / f"disk{len(mounted)}", size_mib).mount()
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        disk.unmount()


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
def shared_portal(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    demo_model_dir: Path,  # noqa: F811
) -> Iterator[Portal]:
    """One portal for a module's tests that need nothing of their own: a start costs seconds of CPU (its spare
    runner imports torch). Those tests must wait for the jobs they look at, and never assume an empty portal.
    A module may set SHARED_PORTAL_ENV (AVP_* settings) for its portal."""
    data_dir = prepare_data_dir(tmp_path_factory.mktemp("shared") / "data", demo_model_dir)
    portal = Portal(data_dir=data_dir, env=getattr(request.module, "SHARED_PORTAL_ENV", {}))
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
