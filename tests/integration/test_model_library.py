"""The model library through the real portal: AVP_MODELS_DIR's directories offered, the broken ones listed with
their problem, a job for one of them refused naming the fix, and jobs on LTX-2.0 and LTX-2.3 layouts run by the
real runner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.portal import Portal, prepare_data_dir, wait_for


@pytest.fixture(scope="module")
def library_portal(tmp_path_factory, demo_model_dir, version_model_dirs):
    """A portal whose AVP_MODELS_DIR holds the tiny 2.0 dev and 2.3 distilled models and one half-copied model."""

    library = tmp_path_factory.mktemp("library")
    (library / "LTX-2.3 Distilled").symlink_to(version_model_dirs["2.3-distilled"])
    (library / "ltx-2.0-dev").symlink_to(version_model_dirs["2.0"])
    half = shutil.copytree(version_model_dirs["2.0"] / "transformer", library / "half copied" / "transformer")
    assert half.is_dir()
    data_dir = prepare_data_dir(tmp_path_factory.mktemp("library-data") / "data", demo_model_dir)
    portal = Portal(data_dir=data_dir, env={"AVP_MODELS_DIR": str(library)}).start()
    yield portal
    portal.stop()


def test_every_model_directory_is_listed_with_version_variant_and_modes_and_the_broken_one_with_its_problem(
    library_portal: Portal,
):
    with library_portal.client() as c:
        listed = c.get("/api/models").json()

    models = {model["id"]: model for model in listed["models"]}
    assert list(models) == ["ltx-2.3-distilled", "ltx-2.0-dev", "demo"]
    summary = {id: (m["kind"], m["version"], m["variant"], m["modes"], m["parts"]) for id, m in models.items()}
    assert summary == {
        "ltx-2.3-distilled": ("ltx-2.3", "2.3", "distilled", ["fast", "quality"], ["latent_upsampler"]),
        "ltx-2.0-dev": ("ltx-2", "2.0", "dev", ["quality"], ["latent_upsampler"]),
        "demo": ("demo", "2.0", "dev", ["fast", "quality"], ["latent_upsampler", "transformer_distilled"]),
    }
    assert models["demo"]["defaults"]["mode"] == "fast" and models["ltx-2.0-dev"]["defaults"]["mode"] == "quality"
    # a model's defaults are those of its default mode: fast's fix the steps and guidance, so they are left out
    assert models["ltx-2.3-distilled"]["defaults"]["mode"] == "fast"
    assert {"steps", "guidance_scale"}.isdisjoint(models["ltx-2.3-distilled"]["defaults"])
    assert (models["ltx-2.0-dev"]["defaults"]["steps"], models["ltx-2.0-dev"]["defaults"]["guidance_scale"]) == (
        30,
        4.0,
    )
    (broken,) = listed["unusable"]
    assert broken["id"] == "half-copied" and broken["directory"] == "half copied"
    assert broken["problem"].startswith("incomplete: text_encoder/ is missing")


def test_fast_mode_on_a_dev_model_without_a_distilled_transformer_is_a_400_naming_what_it_lacks(
    library_portal: Portal,
):
    with library_portal.client() as c:
        response = c.post("/api/jobs", json={"prompt": "a red ball", "model": "ltx-2.0-dev", "mode": "fast"})
        assert response.status_code == 400, response.text
        (error,) = response.json()["errors"]
        assert error["field"] == "mode" and "needs a distilled transformer" in error["message"]
        assert "latent_upsampler" not in error["message"], "it has the upsampler"
        assert c.get("/api/jobs").json()["jobs"] == []


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("half-copied", "model 'half-copied' cannot be used: its directory 'half copied' incomplete: text_encoder/"),
        ("../../etc", "unknown model '../../etc'; pick one of ltx-2.3-distilled, ltx-2.0-dev, demo"),
    ],
)
def test_a_job_for_an_unusable_or_unknown_model_is_a_400_naming_the_fix(library_portal: Portal, model, expected):
    with library_portal.client() as c:
        response = c.post("/api/jobs", json={"prompt": "a red ball", "model": model})
        assert response.status_code == 400, response.text
        (error,) = response.json()["errors"]
        assert error["field"] == "model" and expected in error["message"]
        assert "GET /api/models" in error["message"]
        assert c.get("/api/jobs").json()["jobs"] == []


def test_the_create_form_offers_every_model_and_shows_the_unusable_one_disabled(library_portal: Portal):
    with library_portal.client() as c:
        page = c.get("/").text
        form = c.get("/fragments/form", params={"model": "ltx-2.0-dev"}).text

    create_form = page[page.index('id="create-form"') : page.index("</form>", page.index('id="create-form"'))]
    filters = page[page.index('id="job-filters"') :]
    for model in ("ltx-2.3-distilled", "ltx-2.0-dev", "demo"):
        assert f'<option value="{model}"' in create_form
        assert f'<option value="{model}">{model}</option>' in filters, "the job list filters by every usable model"
    assert "<option disabled>half copied: cannot be used (incomplete: text_encoder/ is missing" in page
    assert '<option value="ltx-2.0-dev" selected>LTX-2.0 dev (ltx-2.0-dev)</option>' in form


@pytest.mark.parametrize(("model", "audio_rate"), [("ltx-2.0-dev", 24000), ("ltx-2.3-distilled", 48000)])
def test_a_job_on_each_versions_layout_runs_through_the_real_runner(
    library_portal: Portal, version_model_dirs, model, audio_rate
):
    job = library_portal.submit(prompt="a red ball", model=model, width=128, height=96, num_frames=9, steps=2)
    finished = library_portal.wait(job["id"], timeout=180)

    assert finished["status"] == "succeeded", finished["error"]
    assert finished["request"]["model"] == model
    assert (finished["result"]["width"], finished["result"]["audio_sample_rate"]) == (128, audio_rate)
    job_file = json.loads((library_portal.job_dir(job["id"]) / "job.json").read_text())
    built = version_model_dirs[{"ltx-2.0-dev": "2.0", "ltx-2.3-distilled": "2.3-distilled"}[model]]
    assert Path(job_file["model_path"]).resolve() == built.resolve()
    log = (library_portal.job_dir(job["id"]) / "runner.log").read_text()
    assert "newly initialized" not in log  # every weight of the directory was loaded into its own class


def test_a_model_copied_into_the_data_dirs_models_while_the_portal_runs_is_offered_without_a_restart(
    make_portal, version_model_dirs
):
    portal = make_portal()  # no AVP_MODELS_DIR: the library is <data dir>/models, where the demo lives
    models = portal.data_dir / "models"
    with portal.client() as c:

        def offered() -> list[str]:
            return [model["id"] for model in c.get("/api/models").json()["models"]]

        assert offered() == ["demo"]
        (models / "Late Arrival").symlink_to(version_model_dirs["2.3"])
        assert wait_for(lambda: offered() if "late-arrival" in offered() else None, 30, "new model") == [
            "late-arrival",
            "demo",
        ]
        assert c.get("/api/models").json()["unusable"] == []
