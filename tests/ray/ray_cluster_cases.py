"""The Ray executor against a real local Ray cluster (run by tests/integration/test_ray_executor.py inside a
loopback-only network namespace; not collected on its own).

One cluster for the module (tests/ray_cluster.py): a head with no GPU, as on the portal host, and two worker
nodes, each with one (fake) GPU and the demo model's resource, each with its own models copy and scratch
directory so a test can tell where a job runs. One portal with AVP_RAY_ADDRESS drives it; a local portal gives
the transcript to compare with. Cases: a demo job on a worker node (the local transcript, its files back), a
cancel reaching the node's runner, a node removed mid-job (the job queued again and finished on the other), a
model no node has (the executor itself, as a driver of the cluster), an image job's image travelling to the node.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from app.executor import Outcome
from app.ray_executor import RayExecutor
from contract import jobdir
from contract.request import Request
from tests import upload_corpus as corpus
from tests.portal import Portal, prepare_data_dir, runner_processes, wait_for
from tests.ray_cluster import local_cluster

QUICK = {"steps": 2, "seed": 7}
SLOW = {"steps": 100}  # minutes on a CPU: cancelled or interrupted long before its end
NODE_LOSS = {"steps": 6, "seed": 11}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[tuple[object, dict]]:
    with local_cluster(tmp_path_factory.mktemp("ray"), demo_model_dir, ("node-a", "node-b")) as (ray_cluster, nodes):
        yield ray_cluster, nodes


@pytest.fixture(scope="module")
def ray_portal(cluster, tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[Portal]:
    ray_cluster, _ = cluster
    data_dir = prepare_data_dir(tmp_path_factory.mktemp("portal") / "data", demo_model_dir)
    portal = Portal(data_dir=data_dir, env={"AVP_RAY_ADDRESS": ray_cluster.address, "AVP_CANCEL_GRACE_S": "2"})
    portal.start(timeout=60)
    yield portal
    portal.stop()


def where_it_runs(nodes: dict, job_id: str) -> str:
    """The node whose scratch directory holds the job now."""
    found = [name for name, (_, scratch) in nodes.items() if (scratch / "jobs" / job_id).is_dir()]
    assert len(found) == 1, found
    return found[0]


def transcript(portal: Portal, job_id: str) -> list[str]:
    return [sse.event for sse in portal.events(job_id, timeout=120)]


def test_a_demo_job_runs_on_a_worker_node_with_the_local_transcript_and_its_clip_comes_back(
    ray_portal: Portal, cluster, make_portal
) -> None:
    _, nodes = cluster
    job = ray_portal.submit(**QUICK)
    ray_portal.wait_for_event(job["id"], "stage", timeout=120)
    node = where_it_runs(nodes, job["id"])
    done = ray_portal.wait(job["id"], timeout=120)
    assert done["status"] == "succeeded", done
    assert done["slot"] == "127.0.0.1:gpu0", "the node and the card it ran on (each node here has one GPU, 0)"
    job_dir = ray_portal.job_dir(job["id"])
    assert (job_dir / "video.mp4").stat().st_size > 1000 and (job_dir / "poster.jpg").is_file()
    assert (job_dir / "preview.jpg").is_file()
    assert "--- ran on Ray node 127.0.0.1" in (job_dir / "runner.log").read_text()
    assert not (nodes[node][1] / "jobs" / job["id"]).exists(), "the node's scratch job directory is removed"
    with ray_portal.client() as c:
        assert c.get(f"/api/jobs/{job['id']}/video").status_code == 200
        slots = c.get("/healthz").json()["worker"]["slot_states"]
    assert [(slot["name"], slot["device"]) for slot in slots] == [("ray0", "cuda"), ("ray1", "cuda")], "a GPU each"

    local = make_portal(AVP_GPUS="cpu:1", AVP_SPARE_RUNNER="off")
    local_job = local.submit(**QUICK)
    assert local.wait(local_job["id"], timeout=120)["status"] == "succeeded"
    types = transcript(ray_portal, job["id"])
    assert "preview" in types and types[-3:] == ["result", "succeeded", "end"]
    assert types == transcript(local, local_job["id"])


def test_a_cancel_reaches_the_runner_on_its_node(ray_portal: Portal, cluster) -> None:
    _, nodes = cluster
    job = ray_portal.submit(**SLOW)
    ray_portal.wait_for_event(job["id"], "step", timeout=120)
    scratch_job = nodes[where_it_runs(nodes, job["id"])][1] / "jobs" / job["id"]
    assert runner_processes(scratch_job), "its runner runs on the node"
    ray_portal.cancel(job["id"])
    assert ray_portal.wait(job["id"], timeout=60)["status"] == "cancelled"
    wait_for(lambda: not runner_processes(scratch_job), 30, "the node's runner gone")


def test_a_model_no_node_has_fails_its_job_at_once_naming_it(cluster, tmp_path: Path) -> None:
    ray_cluster, _ = cluster
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    job = jobdir.JobFile(id="j", request=Request(prompt="x"), model_kind="ltx-2.3", model_path="/srv/models/ltx-big")
    jobdir.write_job_file(job_dir, job)
    executor = RayExecutor(ray_cluster.address, cancel_grace_s=1)

    async def run() -> Outcome:
        try:
            events: list = []
            slot = executor.claim(None)
            assert slot == "ray0" and executor.capacity == 2, "one slot per GPU of the cluster"

            async def sink(event) -> None:
                events.append(event)

            outcome = await executor.run("j", job_dir, sink, slot)
            assert events == []
            return outcome
        finally:
            await executor.close()

    outcome = anyio.run(run)
    assert (outcome.status, outcome.code) == ("failed", "model_missing")
    assert "No node of the Ray cluster holds the model 'ltx-big'" in outcome.message
    assert '"avp_model_ltx-big": 1000' in outcome.message


def test_a_node_lost_mid_job_requeues_it_once_and_the_other_node_finishes_it(ray_portal: Portal, cluster) -> None:
    ray_cluster, nodes = cluster
    job = ray_portal.submit(**NODE_LOSS)
    ray_portal.wait_for_event(job["id"], "step", timeout=120)
    lost = where_it_runs(nodes, job["id"])
    ray_cluster.remove_node(nodes[lost][0], allow_graceful=False)
    done = ray_portal.wait(job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    types = transcript(ray_portal, job["id"])
    assert "interrupted" in types and types[-2:] == ["succeeded", "end"]
    other = next(name for name in nodes if name != lost)
    assert "--- ran on Ray node" in (ray_portal.job_dir(job["id"]) / "runner.log").read_text()
    assert not runner_processes(nodes[other][1] / "jobs" / job["id"])


def test_an_image_job_takes_its_image_to_the_node(ray_portal: Portal) -> None:
    with ray_portal.client() as client:
        uploaded = client.post("/api/uploads", files={"file": ("photo.jpg", corpus.rotated_jpeg(6), "image/jpeg")})
    assert uploaded.status_code == 201, uploaded.text
    job = ray_portal.submit(image_upload_id=uploaded.json()["upload_id"], width=64, height=64, num_frames=9, steps=2)
    done = ray_portal.wait(job["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    # the node's runner refuses a job whose image_file is not in its job directory (gpu_runner/job.py)
    assert "image.png" in (ray_portal.job_dir(job["id"]) / "job.json").read_text()
