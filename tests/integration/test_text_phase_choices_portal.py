"""LTX-2.5's duration head and prompt enhancer (issue 16, points 4-5) through the real portal and runner: a model
directory that holds them (the demo's LTX-2 weights with a tiny random duration_head/ and prompt_enhancer/, until a
tiny 2.5 model exists) takes `num_frames: "auto"` and `enhance_prompt: true`; the runner reports what it chose and
the portal stores and shows it. Random weights: the enhancer's words mean nothing, and the head is set to predict
0.7 s (17 frames at 24 fps) so the clip stays short on a CPU."""

from __future__ import annotations

import html
import json
import re
import shutil

import pytest

from contract import library
from gpu_runner.demo.model import build_tokenizer
from gpu_runner.demo.text_extras import write_text_extras
from tests.portal import Portal, prepare_data_dir

MODEL = "with-text-parts"
SECONDS, FRAMES = 0.7, 17  # round(0.7 x 24) = 17 frames, on the 8k+1 grid
ENHANCE_TOKENS = 24


@pytest.fixture(scope="module")
def portal(tmp_path_factory, demo_model_dir):
    models = tmp_path_factory.mktemp("library")
    model_dir = shutil.copytree(demo_model_dir, models / MODEL)
    connectors = json.loads((model_dir / "connectors" / "config.json").read_text())
    widths = library.connector_widths(connectors)
    write_text_extras(model_dir, build_tokenizer(), *widths, seconds=SECONDS)
    data_dir = prepare_data_dir(tmp_path_factory.mktemp("text-parts") / "data", demo_model_dir)
    # a few tokens of the random enhancer say as much as 600 (which take a minute on a busy CPU)
    env = {"AVP_MODELS_DIR": str(models), "AVP_ENHANCE_MAX_TOKENS": str(ENHANCE_TOKENS)}
    portal = Portal(data_dir=data_dir, env=env).start()
    yield portal
    portal.stop()


def test_the_model_lists_its_parts_and_a_model_without_them_refuses_with_who_can(portal: Portal) -> None:
    with portal.client() as c:
        models = {model["id"]: model for model in c.get("/api/models").json()["models"]}
        assert {library.DURATION_HEAD, library.PROMPT_ENHANCER} <= set(models[MODEL]["parts"])
        assert library.DURATION_HEAD not in models["demo"]["parts"]
        refused = c.post("/api/jobs", json={"prompt": "a red ball", "model": "demo", "num_frames": "auto"})
        assert refused.status_code == 400
        [error] = refused.json()["errors"]
        assert error["field"] == "num_frames" and f"models that can: {MODEL}" in error["message"]
        refused = c.post("/api/jobs", json={"prompt": "a red ball", "model": "demo", "enhance_prompt": True})
        assert refused.status_code == 400 and "prompt_enhancer/" in refused.json()["errors"][0]["message"]


def test_an_auto_length_enhanced_job_runs_and_the_portal_keeps_and_shows_the_choices(portal: Portal) -> None:
    fields = {"model": MODEL, "mode": "quality", "steps": 2, "width": 128, "height": 96, "fps": 24}
    job = portal.submit(prompt="a red ball bouncing", num_frames="auto", enhance_prompt=True, **fields)
    assert job["request"]["num_frames"] == "auto" and job["num_frames_requested"] == "auto"
    assert job["enhanced_prompt"] is None
    done = portal.wait(job["id"])
    assert done["status"] == "succeeded", done["error"]

    assert done["request"]["num_frames"] == FRAMES == done["result"]["frames"]
    assert done["num_frames_requested"] == "auto"
    enhanced = done["enhanced_prompt"]
    assert isinstance(enhanced, str) and done["request"]["prompt"] == "a red ball bouncing"

    events = [json.loads(sse.data) for sse in portal.events(job["id"]) if sse.event != "end"]
    with portal.client() as c:
        page = html.unescape(c.get(f"/jobs/{job['id']}").text)
        again = html.unescape(c.get(f"/?from_job={job['id']}&use=enhanced_prompt").text)
    kinds = [event["type"] for event in events]
    assert {"token", "enhanced_prompt", "num_frames"} <= set(kinds)
    stages = [event["name"] for event in events if event["type"] == "stage"]
    assert stages[0] == "enhance_prompt" and stages[stages.index("predict_duration") + 1] == "load_transformer"
    assert kinds.index("enhanced_prompt") < kinds.index("num_frames")
    assert [e["num_frames"] for e in events if e["type"] == "num_frames"] == [FRAMES]
    assert all(e["total"] == ENHANCE_TOKENS for e in events if e["type"] == "token")
    assert enhanced in page and "Use this prompt" in page and f"{FRAMES} (auto: chosen by the model)" in page
    assert f">{enhanced}</textarea>" in again, "use this prompt: the form holds the enhanced prompt"
    checkbox = re.search(r'<input type="checkbox" name="enhance_prompt"[^>]*>', again)
    assert checkbox and "checked" not in checkbox[0], "offered, and off: the prompt is enhanced already"
    assert re.search(r'<option value="auto"\s+selected\s*>', again), "the length left to the model again"
