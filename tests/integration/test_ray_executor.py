"""The Ray executor's cases (tests/ray/ray_cluster_cases.py) run inside a loopback-only network namespace.

Outside one, Ray ignores 127.0.0.1 and binds the machine's outward interface (it probes 8.8.8.8 to find it), so
the cluster, the portal and the runners must all live where only `lo` exists: this test runs those cases in a
pytest of their own under `unshare -n` (as root, as the suite runs), and fails with their report when any fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.portal import Portal

REPO_ROOT = Path(__file__).resolve().parents[2]
CASES = "tests/ray/ray_cluster_cases.py"


def test_the_ray_cluster_cases_pass_inside_a_loopback_only_namespace() -> None:
    pytest_command = f"exec {sys.executable} -m pytest -q -p no:cacheprovider -p no:xdist {CASES}"
    result = subprocess.run(
        ["unshare", "-n", "sh", "-c", f"ip link set lo up && {pytest_command}"],
        cwd=REPO_ROOT,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-3000:]


def test_an_unreachable_ray_address_stops_the_start_naming_it(tmp_path: Path) -> None:
    with socket.socket() as unused:  # a port nothing listens on once it is closed
        unused.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{unused.getsockname()[1]}"
    portal = Portal(data_dir=tmp_path / "data", env={"AVP_RAY_ADDRESS": address})
    refused = portal.refused()
    assert refused.returncode == 2, refused.stderr
    assert f"AVP_RAY_ADDRESS={address}: nothing answers there" in refused.stderr
    assert "ray start --head" in refused.stderr
