"""What a Ray node makes of a job file written on the portal's host (app/ray_node.py): its own paths everywhere the
job names one, the model by its id; and the resource name a node declares for a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.ray_executor import place_name
from app.ray_node import localise, model_resource, node_runner_env, plain_name
from contract import jobdir
from contract.request import Request


def portal_job(**fields) -> jobdir.JobFile:
    return jobdir.JobFile(
        id="j1",
        request=Request(prompt="x"),
        model_kind="ltx-2.3",
        model_path="/var/lib/avportal/models/ltx-2.3-dev",
        prompt_cache_dir="/var/lib/avportal/cache/prompts",
        weight_cache_dir="/var/lib/avportal/cache/weights",
        compile_cache_dir=None,
        preview_colours_dir="/var/lib/avportal/preview-colours",
        **fields,
    )


def test_the_node_resolves_the_model_by_its_id_and_keeps_its_caches_under_its_scratch() -> None:
    node = localise(portal_job(), Path("/srv/models"), Path("/srv/loras"), Path("/scratch"))
    assert node.model_path == "/srv/models/ltx-2.3-dev"
    assert (node.prompt_cache_dir, node.weight_cache_dir, node.compile_cache_dir, node.preview_colours_dir) == (
        "/scratch/cache/prompts",
        "/scratch/cache/weights",
        None,  # off on the portal: off on the node
        "/scratch/cache/preview-colours",
    )
    assert node.lora_dirs == () and node.loras == ()
    assert (node.id, node.request, node.model_kind) == ("j1", Request(prompt="x"), "ltx-2.3")


def test_a_jobs_loras_are_looked_for_by_file_name_in_the_nodes_lora_folder() -> None:
    lora = jobdir.JobLora(name="style", scale=0.8, path="/var/lib/avportal/loras/style.safetensors", sha256="ab")
    node = localise(
        portal_job(lora_dirs=("/var/lib/avportal/loras", "/var/lib/avportal/models/x/loras"), loras=(lora,)),
        Path("/srv/models"),
        Path("/srv/loras"),
        Path("/scratch"),
    )
    assert node.lora_dirs == ("/srv/loras",)
    assert node.loras == (jobdir.JobLora(name="style", scale=0.8, path="/srv/loras/style.safetensors", sha256="ab"),)


def test_a_model_resource_names_the_model_and_file_names_stay_in_the_job_directory() -> None:
    assert model_resource("ltx-2.3-dev") == "avp_model_ltx-2.3-dev"
    assert plain_name("preview.jpg") == "preview.jpg"
    for bad in ("../job.json", "/etc/passwd", "a/b", "", ".."):
        with pytest.raises(ValueError, match="not a file name of the job directory"):
            plain_name(bad)


def test_a_job_on_the_cluster_is_named_by_its_node_and_card() -> None:
    assert place_name("10.0.0.7", "1") == "10.0.0.7:gpu1"
    assert place_name("10.0.0.7", None) == "10.0.0.7", "a node that names no card: its address alone"


def test_a_nodes_runner_runs_one_job_whatever_the_nodes_keep_warm_setting(monkeypatch) -> None:
    from gpu_runner.__main__ import keep_warm_s

    monkeypatch.setenv("AVP_KEEP_WARM_S", "300")  # set for the node's own portal, say
    env = node_runner_env()
    monkeypatch.setenv("AVP_KEEP_WARM_S", env["AVP_KEEP_WARM_S"])
    assert keep_warm_s() == 0, "its stdin is /dev/null: its `resident` line would only reach the job's events"
