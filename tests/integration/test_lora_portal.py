"""LoRAs through a real portal and its runner: the library's listing, the 400s a bad choice gets, a job that applies
one (its provenance in the API and the MP4), scale 0 as no LoRA, and "use these settings again" after a change."""

from __future__ import annotations

import json
import shutil
import time

import av
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from contract import provenance
from tests.portal import Portal, prepare_data_dir

# The smallest clip whose MP4 is byte-for-byte the same for a seed (README: 256 px wide), two quality steps.
SMALL = {"width": 256, "height": 64, "num_frames": 9, "steps": 2, "mode": "quality", "seed": 7}
PROMPT = "a huge red ball moving right in silence"


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """AVP_LORA_DIR with a LoRA that does not fit the demo (4096 wide: a full-size model's) and a pickle."""
    directory = tmp_path_factory.mktemp("loras")
    too_wide = {
        "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 4096),
        "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(4096, 4),
    }
    save_file(too_wide, str(directory / "full-size.safetensors"), metadata={"base_model": "LTX-2.0 19B"})
    (directory / "old.ckpt").write_bytes(b"\x80\x04pickled")
    return directory


@pytest.fixture(scope="module")
def portal(tmp_path_factory, demo_model_dir, lora_dir):
    """One portal for the module, its LoRA library in AVP_LORA_DIR (and the demo model's loras/)."""
    data_dir = prepare_data_dir(tmp_path_factory.mktemp("lora-portal") / "data", demo_model_dir)
    started = Portal(data_dir=data_dir, env={"AVP_LORA_DIR": str(lora_dir)}).start()
    yield started
    started.stop()


def test_the_library_lists_the_demo_lora_and_what_cannot_be_used(portal, lora_dir):
    with portal.client() as client:
        listed = client.get("/api/loras").raise_for_status().json()

    assert listed["directory"] == str(lora_dir)
    by_name = {lora["name"]: lora for lora in listed["loras"]}
    shipped = by_name["demo-huge"]
    assert shipped["models"] == ["demo"] and shipped["problem"] is None
    assert (shipped["family"], shipped["version"], shipped["rank"], shipped["trigger_words"]) == (
        "ltx-2",
        "2.0",
        8,
        ["huge"],
    )
    assert 0 < shipped["size_bytes"] < 2**20
    assert by_name["full-size"]["models"] == [] and by_name["full-size"]["problem"] is None
    assert "not .safetensors" in by_name["old"]["problem"]


@pytest.mark.parametrize(
    ("loras", "field", "says"),
    [
        ([{"name": "../loras/demo-huge"}], "loras", "is not a LoRA name"),
        ([{"name": "demo-huge", "scale": 2.01}], "loras", "loras[0].scale 2.01 is outside -2..2"),
        ([{"name": f"x{i}"} for i in range(5)], "loras", "at most 4"),
        ([{"name": "nowhere"}], "loras[0].name", "no LoRA is called 'nowhere'"),
        ([{"name": "old"}], "loras[0].name", "cannot be used: its file is a .ckpt file"),
        ([{"name": "demo-huge"}, {"name": "full-size"}], "loras[1].name", "192->192"),
        ("demo-huge", "loras", "must be"),
    ],
)
def test_a_bad_lora_choice_is_a_400_naming_the_field(portal, loras, field, says):
    with portal.client() as client:
        response = client.post("/api/jobs", json={"prompt": PROMPT, "loras": loras, **SMALL})
    assert response.status_code == 400, response.text
    errors = {error["field"]: error["message"] for error in response.json()["errors"]}
    assert field in errors and says in errors[field], errors


def frames(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_a_job_with_the_lora_records_its_provenance_and_scale_0_is_the_model(portal, demo_model_dir):
    lora_file = demo_model_dir / "loras" / "demo-huge.safetensors"
    with_lora = portal.submit(prompt=PROMPT, loras=[{"name": "demo-huge", "scale": 1.5}], **SMALL)
    at_zero = portal.submit(prompt=PROMPT, loras=[{"name": "demo-huge", "scale": 0}], **SMALL)
    without = portal.submit(prompt=PROMPT, **SMALL)
    done = {job["id"]: portal.wait(job["id"], timeout=240) for job in (with_lora, at_zero, without)}
    assert {job["status"] for job in done.values()} == {"succeeded"}, done

    recorded = done[with_lora["id"]]["provenance"]
    assert recorded["model"]["id"] == "demo" and recorded["model"]["version"] == "2.0"
    assert len(recorded["model"]["revision"]) == 16
    assert recorded["loras"] == [
        {"name": "demo-huge", "scale": 1.5, "sha256": provenance.file_sha256(lora_file),
         "size_bytes": lora_file.stat().st_size}
    ]  # fmt: skip
    assert recorded["portal_version"] == provenance.portal_version()
    with av.open(str(portal.job_dir(with_lora["id"]) / "video.mp4")) as container:
        assert json.loads(container.metadata[provenance.MP4_KEY]) == recorded
    assert done[without["id"]]["provenance"]["loras"] == []

    clips = {job_id: frames(portal.job_dir(job_id) / "video.mp4") for job_id in done}
    assert np.array_equal(clips[at_zero["id"]], clips[without["id"]])  # scale 0: exactly the model
    assert not np.array_equal(clips[with_lora["id"]], clips[without["id"]])

    # "use these settings again" says when a LoRA's file changed since the job
    with portal.client() as client:
        page = client.get(f"/?from_job={with_lora['id']}").raise_for_status().text
        assert 'id="settings-changed"' not in page
        assert 'name="lora_name_0"' in page and 'value="demo-huge" selected' in page
        installed = portal.data_dir / "models" / "demo" / "loras" / "demo-huge.safetensors"
        backup = installed.with_suffix(".bak")
        shutil.copy2(installed, backup)
        try:
            data = bytearray(installed.read_bytes())
            data[-1] ^= 1  # one bit of a weight
            installed.write_bytes(bytes(data))
            time.sleep(2.1)  # the library is read again at most every 2 s
            page = client.get(f"/?from_job={with_lora['id']}").raise_for_status().text
        finally:
            shutil.move(backup, installed)
    assert 'id="settings-changed"' in page and "LoRA &#39;demo-huge&#39;&#39;s file changed since" in page


def test_the_form_sends_its_picker_slots_as_the_requests_loras(portal):
    with portal.form_client() as client:
        form = {"prompt": PROMPT, "resolution": "256x64", "num_frames": "9", "mode": "quality", "steps": "1"}
        refused = client.post("/jobs", data={**form, "lora_name_0": "demo-huge", "lora_scale_0": "3"})
        assert refused.status_code == 200 and "loras[0].scale 3 is outside -2..2" in refused.text
        made = client.post("/jobs", data={**form, "lora_name_0": "demo-huge", "lora_scale_0": "-0.5"})
    assert made.status_code == 303
    job_id = made.headers["location"].rsplit("/", 1)[1]
    assert portal.job(job_id)["request"]["loras"] == [{"name": "demo-huge", "scale": -0.5}]
    portal.wait(job_id, timeout=240)
