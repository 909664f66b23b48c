"""A local Ray cluster for the Ray executor's tests and bench: a head with no GPU (as on the portal's host) and
GPU nodes, each with one fake GPU, the demo model's resource and its own models copy and scratch directory.

It must run inside a loopback-only network namespace (tests/integration/test_ray_executor.py says why). A node's
environment is the driver's when it is added, so each node's AVP_MODELS_DIR and AVP_RAY_SCRATCH are set just
before; Ray's own files go to a temporary directory of the cluster's (never the machine's shared /tmp/ray),
removed with it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.ray_node import model_resource
from tests.portal import REPO_ROOT

ON_LOOPBACK = {"node_ip_address": "127.0.0.1"}


@contextmanager
def local_cluster(tmp: Path, demo_model_dir: Path, nodes: tuple[str, ...]) -> Iterator[tuple[object, dict]]:
    """The cluster and {node name: (its Ray node, its scratch directory)}."""
    from ray.cluster_utils import Cluster  # the optional extra

    saved = dict(os.environ)
    ray_files = tempfile.mkdtemp(prefix="avp-ray-")  # short: Ray's socket paths live under it
    # Ray's Cluster writes the head's address to <RAY_TMPDIR>/ray/ray_current_cluster whatever temp_dir says; by
    # default that is the machine's /tmp/ray, which a clean machine lacks (FileNotFoundError at the head's start).
    os.environ["RAY_TMPDIR"] = ray_files
    os.makedirs(os.path.join(ray_files, "ray"))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH"))))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False, "temp_dir": ray_files, **ON_LOOPBACK},
    )
    added = {}
    try:
        for name in nodes:
            models = tmp / name / "models"
            shutil.copytree(demo_model_dir, models / "demo")
            os.environ.update(AVP_MODELS_DIR=str(models), AVP_RAY_SCRATCH=str(tmp / name / "scratch"))
            node = cluster.add_node(
                num_cpus=1, num_gpus=1, resources={model_resource("demo"): 1000}, temp_dir=ray_files, **ON_LOOPBACK
            )
            added[name] = (node, tmp / name / "scratch")
        cluster.wait_for_nodes()
        yield cluster, added
    finally:
        os.environ.clear()
        os.environ.update(saved)
        cluster.shutdown()
        shutil.rmtree(ray_files, ignore_errors=True)
