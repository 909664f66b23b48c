"""LTX-2.5 through the real portal and runner, on the tiny 2.5-layout model that `python -m gpu_runner demo-model
<dir> --random --version 2.5` builds: recognised from its configs, listed with its modes (and a copy lacking its
diffusion decoder with fast mode disabled and why), a fast job refused there naming the folder, and a fast job with
keyframes run through every 2.5 stage on the CPU: the prompt enhancer, the Gemma-4 text phase, the duration head
choosing the length (no shorter than the keyframes need), stage 1 and its keyframe slots, the x2 upsample, the
refine, the diffusion decoder and the mux with sound (tests/integration/test_ltx25_conditions.py checks what the
conditions do in each stage).

Random weights prove the plumbing only: the clip is noise, and nothing here says the model generates well."""

from __future__ import annotations

import html
import json
import shutil

import pytest

from contract import jobdir
from tests import upload_corpus as corpus
from tests.portal import Portal, prepare_data_dir
from tests.runner_fixtures import read_mp4

SIZE = 64  # the smallest fast-mode size: stage 1 at 32x32 is one latent cell (the CPU's FlexAttention is slow)
FRAMES = 9  # what the tiny model's duration head always picks (gpu_runner.demo.model.TINY_DURATION_S)
KEYED = 17  # the shortest clip that holds keyframes at 0, 8 and the last frame apart
ENHANCE_TOKENS = 8  # the random enhancer's words mean nothing: a few prove the plumbing


@pytest.fixture(scope="module")
def ltx25_portal(tmp_path_factory, demo_model_dir, ltx25_model_dir):
    """A portal whose AVP_MODELS_DIR holds the 2.5 model and a copy of it without diffusion_decoder/ (a copy: a
    component linked from elsewhere resolves outside its model directory, which makes it unusable)."""
    library = tmp_path_factory.mktemp("ltx25-library")
    (library / "LTX-2.5").symlink_to(ltx25_model_dir)
    shutil.copytree(ltx25_model_dir, library / "ltx-2.5-no-decoder", ignore=shutil.ignore_patterns("diffusion_decoder"))
    data_dir = prepare_data_dir(tmp_path_factory.mktemp("ltx25-data") / "data", demo_model_dir)
    env = {"AVP_MODELS_DIR": str(library), "AVP_ENHANCE_MAX_TOKENS": str(ENHANCE_TOKENS)}
    portal = Portal(data_dir=data_dir, env=env).start()
    yield portal
    portal.stop()


def test_an_ltx_2_5_directory_is_listed_with_its_modes_and_parts_and_one_lacking_a_part_with_the_mode_disabled(
    ltx25_portal: Portal,
):
    with ltx25_portal.client() as c:
        models = {model["id"]: model for model in c.get("/api/models").json()["models"]}
        form = html.unescape(c.get("/fragments/form", params={"model": "ltx-2.5-no-decoder"}).text)

    full, lacking = models["ltx-2.5"], models["ltx-2.5-no-decoder"]
    assert (full["kind"], full["version"], full["variant"], full["modes"]) == (
        "ltx-2.5",
        "2.5",
        "distilled",
        ["fast", "quality"],
    )
    assert full["parts"] == [
        "latent_upsampler",
        "transformer_full",
        "diffusion_decoder",
        "duration_head",
        "prompt_enhancer",
    ]
    assert full["disabled_modes"] == {}
    assert lacking["modes"] == ["quality"] and "diffusion_decoder/" in lacking["disabled_modes"]["fast"]
    assert f"Fast mode is off for this model: it needs {lacking['disabled_modes']['fast']}." in " ".join(form.split())
    # quality runs the dev transformer_full/, so it takes a dev model's steps and guidance
    assert (full["defaults"]["mode"], lacking["defaults"]["steps"], lacking["defaults"]["guidance_scale"]) == (
        "fast",
        30,
        4.0,
    )


def test_a_fast_job_on_a_2_5_model_without_its_diffusion_decoder_is_a_400_naming_the_folder(ltx25_portal: Portal):
    with ltx25_portal.client() as c:
        response = c.post("/api/jobs", json={"prompt": "a red ball", "model": "ltx-2.5-no-decoder", "mode": "fast"})
        assert response.status_code == 400, response.text
        (error,) = response.json()["errors"]
        assert error["field"] == "mode" and "fast mode needs a diffusion_decoder/" in error["message"]
        assert c.get("/api/jobs").json()["jobs"] == []


def test_a_fast_2_5_job_with_keyframes_runs_every_stage_through_the_real_runner_into_an_mp4_with_sound(
    ltx25_portal: Portal,
):
    """Keyframes at 0, 8 and the last frame of a length the model picks: the duration head's choice (FRAMES) is raised
    to the shortest clip that holds them apart (KEYED), and -1 is that clip's last frame."""
    with ltx25_portal.client() as c:
        ids = [corpus.upload_photo(c, SIZE, SIZE) for _ in range(3)]
    keyframes = [{"upload_id": ids[0], "frame": 0}, {"upload_id": ids[1], "frame": 8}]
    keyframes.append({"upload_id": ids[2], "frame": -1, "strength": 0.9})
    asked = {"num_frames": "auto", "enhance_prompt": True, "keyframes": keyframes}
    job = ltx25_portal.submit(model="ltx-2.5", width=SIZE, height=SIZE, **asked)
    events = _events(ltx25_portal, job["id"])
    stages = [event["name"] for event in events if event["type"] == "stage"]
    finished = ltx25_portal.job(job["id"])

    assert finished["status"] == "succeeded", finished["error"]
    assert finished["request"]["mode"] == "fast"
    assert finished["request"]["keyframes"] == [{"strength": 1.0} | k for k in keyframes]
    assert (finished["num_frames_requested"], finished["request"]["num_frames"]) == ("auto", KEYED)
    assert isinstance(finished["enhanced_prompt"], str)
    assert [e["num_frames"] for e in events if e["type"] == "num_frames"] == [KEYED]
    longest, chosen = job["estimate"], finished["estimate"]
    assert chosen["disk_bytes"] < longest["disk_bytes"], "estimated again at the chosen length, not the longest clip"
    assert stages == [
        "enhance_prompt",
        "load_text_encoder",
        "encode_prompt",
        "free_text_encoder",
        "predict_duration",
        "load_transformer",
        "denoise",
        "upsample",
        "refine",
        "free_transformer",
        "decode_audio",
        "decode_video",  # the diffusion decoder
        "mux",
    ]
    video = read_mp4(ltx25_portal.job_dir(job["id"]) / jobdir.VIDEO_FILE)
    assert (video.width, video.height, len(video.frames)) == (SIZE, SIZE, KEYED)
    assert video.sample_rate == 48000 and video.audio_duration_s == pytest.approx(KEYED / 24, abs=0.03)
    log = (ltx25_portal.job_dir(job["id"]) / "runner.log").read_text()
    assert "newly initialized" not in log  # every weight of the directory was loaded into its own class
    assert "will be skipped" not in log  # diffusers drops a condition past the canvas with only this warning


def test_the_same_prompt_and_seed_enhanced_again_come_from_the_cache(ltx25_portal: Portal):
    asked = {"model": "ltx-2.5", "width": SIZE, "height": SIZE, "num_frames": FRAMES, "enhance_prompt": True}
    first = ltx25_portal.submit(prompt="a blue square humming", seed=5, **asked)
    written = ltx25_portal.wait_for_event(first["id"], "enhanced_prompt", timeout=300)["prompt"]
    ltx25_portal.cancel(first["id"])  # the rewrite is all this needs of it
    again = ltx25_portal.submit(prompt="a blue square humming", seed=5, **asked)
    events = []
    for sse in ltx25_portal.events(again["id"], timeout=300):
        events.append(json.loads(sse.data))
        if sse.event == "enhanced_prompt":
            break
    ltx25_portal.cancel(again["id"])
    (stage,) = [e for e in events if e["type"] == "stage" and e["name"] == "enhance_prompt"]
    assert stage["note"] and stage["note"].startswith("Cached"), stage
    assert not [e for e in events if e["type"] == "token"], "the enhancer never ran"
    assert events[-1]["prompt"] == written


def _events(portal: Portal, job_id: str) -> list[dict]:
    return [json.loads(sse.data) for sse in portal.events(job_id, timeout=300) if sse.event != "end"]
