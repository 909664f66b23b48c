"""Reading job.json: the request is re-checked and every path stays where it belongs."""

from __future__ import annotations

import json

import pytest

from contract.library import COMPONENTS
from gpu_runner.job import JobError, check_model_dir, load_job
from tests.runner_fixtures import write_job
from tests.unit.test_library import write_model


@pytest.fixture
def model_dir(tmp_path):
    """A directory shaped like a Diffusers LTX-2.0 model: every config, a weights file where one belongs."""
    return write_model(tmp_path / "model", "2.0")


def refusal(job_dir) -> JobError:
    with pytest.raises(JobError) as raised:
        load_job(job_dir)
    return raised.value


def test_a_valid_job_loads_with_its_spec(tmp_path, model_dir):
    write_job(tmp_path / "job", model_dir, steps=3)

    job = load_job(tmp_path / "job")

    assert job.request.steps == 3
    assert job.spec.kind == "demo"
    assert job.model_dir == model_dir.resolve()


def test_every_broken_rule_is_named(tmp_path, model_dir):
    write_job(tmp_path / "job", model_dir, width=250, num_frames=24, prompt=" ")

    error = refusal(tmp_path / "job")

    assert error.code == "invalid_input"
    assert "width: 250 is not a multiple of 32" in error.message
    assert "num_frames: 24 is not 8k+1" in error.message
    assert "prompt: is empty" in error.message


def test_malformed_json_is_invalid_input(tmp_path, model_dir):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job.json").write_text('{"id": "x", "request": ')

    assert refusal(tmp_path / "job").code == "invalid_input"


def test_an_unknown_model_kind_is_invalid_input(tmp_path, model_dir):
    write_job(tmp_path / "job", model_dir, model_kind="sora")

    error = refusal(tmp_path / "job")
    assert error.code == "invalid_input" and "sora" in error.message


def test_an_unknown_precision_is_invalid_input(tmp_path, model_dir):
    write_job(tmp_path / "job", model_dir, precision="fp4")

    error = refusal(tmp_path / "job")
    assert error.code == "invalid_input" and "fp4" in error.message


@pytest.mark.parametrize("image_file", ["../outside.png", "/etc/hostname"])
def test_an_image_outside_the_job_directory_is_refused(tmp_path, model_dir, image_file):
    (tmp_path / "outside.png").write_bytes(b"png")
    write_job(tmp_path / "job", model_dir, image_file=image_file)

    error = refusal(tmp_path / "job")
    assert error.code == "invalid_input" and "outside" in error.message


def test_a_symlink_out_of_the_job_directory_is_refused(tmp_path, model_dir):
    (tmp_path / "secret.png").write_bytes(b"png")
    write_job(tmp_path / "job", model_dir, image_file="image.png")
    (tmp_path / "job" / "image.png").symlink_to(tmp_path / "secret.png")

    assert refusal(tmp_path / "job").code == "invalid_input"


def test_an_image_inside_the_job_directory_is_accepted(tmp_path, model_dir):
    write_job(tmp_path / "job", model_dir, image_file="image.png")
    (tmp_path / "job" / "image.png").write_bytes(b"png")

    assert load_job(tmp_path / "job").file.image_file == "image.png"


def test_a_missing_image_is_invalid_input(tmp_path, model_dir):
    write_job(tmp_path / "job", model_dir, image_file="image.png")

    error = refusal(tmp_path / "job")
    assert error.code == "invalid_input" and "image.png" in error.message


def test_an_output_video_symlinked_elsewhere_is_refused(tmp_path, model_dir):
    write_job(tmp_path / "job", model_dir)
    (tmp_path / "job" / "video.mp4").symlink_to(tmp_path / "elsewhere.mp4")
    job = load_job(tmp_path / "job")

    with pytest.raises(JobError, match="outside"):
        job.path("video.mp4")


@pytest.mark.parametrize("subfolder", sorted(COMPONENTS))
def test_a_missing_model_subfolder_is_named(model_dir, subfolder):
    for entry in (model_dir / subfolder).iterdir():
        entry.unlink()
    (model_dir / subfolder).rmdir()

    with pytest.raises(JobError) as raised:
        check_model_dir(model_dir)
    assert raised.value.code == "model_missing"
    assert f"{subfolder}/ is missing" in raised.value.message
    assert "demo-model" in raised.value.message and "AVP_MODEL_DIR" in raised.value.message


def test_a_malformed_or_weightless_subfolder_is_named(model_dir):
    (model_dir / "vae" / "config.json").write_text("{not json")
    with pytest.raises(JobError, match="vae/ has an unreadable config.json"):
        check_model_dir(model_dir)

    (model_dir / "vae" / "config.json").write_text(json.dumps({}))
    (model_dir / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(JobError, match="vae/ has no weights"):
        check_model_dir(model_dir)


def test_a_subfolder_linking_out_of_the_model_directory_is_refused(tmp_path, model_dir):
    (model_dir / "vocoder").rename(tmp_path / "vocoder")
    (model_dir / "vocoder").symlink_to(tmp_path / "vocoder")

    with pytest.raises(JobError, match="vocoder/ resolves outside the model directory"):
        check_model_dir(model_dir)


def test_a_missing_model_directory_is_model_missing(tmp_path):
    with pytest.raises(JobError, match="does not exist") as raised:
        check_model_dir(tmp_path / "nowhere")
    assert raised.value.code == "model_missing"


def test_a_model_directory_changed_into_an_unknown_one_after_submit_is_model_missing_naming_the_key(model_dir):
    scheduler = model_dir / "scheduler" / "scheduler_config.json"
    scheduler.write_text(json.dumps(json.loads(scheduler.read_text()) | {"shift_terminal": None}))

    with pytest.raises(JobError) as raised:
        check_model_dir(model_dir)
    assert raised.value.code == "model_missing"
    assert "not a usable LTX-2 model" in raised.value.message and "shift_terminal=None" in raised.value.message
