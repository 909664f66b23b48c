"""LTX-2.5's text-phase choices (issue 16, points 4-5) outside the runner: `num_frames: "auto"` and
`enhance_prompt: true` in the contract (who may ask, what is planned until the runner has chosen), and the runner's
`num_frames`, `enhanced_prompt` and `token` events through the real journal and store into the job's row, its JSON
and its page."""

from __future__ import annotations

import html
import json
from pathlib import Path

import anyio
import msgspec
import pytest
from diffusers.pipelines.ltx2.utils import GEMMA4_PROMPT_ENHANCEMENT_CONFIG

from app.broker import Broker
from app.config import Settings
from app.jobs import present
from app.journal import Journal
from app.page_feed import PageFeed, job_context, queue_context
from app.progress import JobProgress
from app.schemas import InvalidRequest, parse_request, resolve_request
from app.store import JobUpdate, Store
from app.web import build_templates
from contract import cost, library, protocol
from contract.cost import Estimate
from contract.models import Offer, demo_spec, with_parts
from contract.request import AUTO, Keyframe, Request, max_frames_for_fps, planned
from tests.job_history import job_row

DEMO = demo_spec(Path("/models/demo"))
PLAIN = library.Recognised(family="ltx-2", version="2.0", variant="dev", upsampler=False)
BOTH = msgspec.structs.replace(PLAIN, text_parts=(library.DURATION_HEAD, library.PROMPT_ENHANCER))
ABLE = msgspec.structs.replace(with_parts(DEMO, BOTH), id="ltx-25")  # a model with both parts
OFFER = Offer(models={"demo": with_parts(DEMO, PLAIN), "ltx-25": ABLE}, unusable=())


def problems(model: str, **fields) -> dict[str, str]:
    try:
        resolve_request(Request(prompt="a red ball", model=model, **fields), OFFER)
    except InvalidRequest as exc:
        return {error.field: error.message for error in exc.errors}
    return {}


# ---- the contract -------------------------------------------------------------------------------------------


def test_a_model_with_the_parts_accepts_auto_and_enhancement() -> None:
    assert problems("ltx-25", num_frames=AUTO, enhance_prompt=True) == {}


def test_a_model_without_a_duration_head_refuses_auto_naming_the_part_and_the_models_that_have_one() -> None:
    found = problems("demo", num_frames=AUTO)
    assert list(found) == ["num_frames"]
    assert "duration_head/" in found["num_frames"] and "'demo' lacks" in found["num_frames"]
    assert "models that can: ltx-25" in found["num_frames"] and "choose a number of frames" in found["num_frames"]


def test_a_model_without_a_prompt_enhancer_refuses_enhancement_naming_the_missing_folder() -> None:
    found = problems("demo", enhance_prompt=True)
    assert list(found) == ["enhance_prompt"] and "prompt_enhancer/" in found["enhance_prompt"]
    assert problems("demo", enhance_prompt=False) == {}, "asking for none is no problem"


def test_with_no_offered_model_able_the_message_says_so() -> None:
    spec = with_parts(DEMO, PLAIN)
    [(field, message)] = spec.violations(spec.resolve(Request(prompt="p", num_frames=AUTO, seed=1)), [spec])
    assert field == "num_frames" and "no model offered here has one" in message


def test_auto_cannot_be_combined_with_an_extension_which_needs_a_known_length() -> None:
    found = problems("ltx-25", num_frames=AUTO, extend_from="a" * 32)
    assert "extend_from" in found and "choose num_frames (at least 17)" in found["extend_from"]


def test_auto_takes_keyframes_at_the_first_and_the_last_frame_of_the_length_the_model_picks() -> None:
    keyframes = (Keyframe(upload_id="u", frame=0), Keyframe(upload_id="v", frame=-1))
    assert problems("ltx-25", num_frames=AUTO, keyframes=keyframes) == {}


def test_the_api_and_the_form_say_what_the_fields_take() -> None:
    request, errors = parse_request({"prompt": "p", "num_frames": "auto", "enhance_prompt": True})
    assert (request.num_frames, request.enhance_prompt, errors) == (AUTO, True, [])
    _, errors = parse_request({"prompt": "p", "num_frames": "long", "enhance_prompt": "yes"})
    said = {error.field: error.message for error in errors}
    assert said["num_frames"].startswith('must be a whole number or "auto"')
    assert said["enhance_prompt"].startswith("must be true or false")
    form, errors = parse_request({"prompt": "p", "num_frames": "97", "enhance_prompt": "true"}, strict=False)
    assert (form.num_frames, form.enhance_prompt, errors) == (97, True, [])


def test_admission_the_eta_and_the_disk_check_plan_auto_as_the_longest_clip() -> None:
    resolved = ABLE.resolve(Request(prompt="p", num_frames=AUTO, fps=30.0, seed=1))
    longest = planned(ABLE.constraints, resolved)
    assert longest.num_frames == max_frames_for_fps(ABLE.constraints, 30.0) == 481
    assert planned(ABLE.constraints, msgspec.structs.replace(resolved, num_frames=97)).num_frames == 97
    size = cost.ModelSize(
        layers=2, inner_width=64, vae_width=32, weights_gib=dict.fromkeys(cost.WEIGHT_COMPONENTS, 0.05)
    )
    fixed = msgspec.structs.replace(resolved, num_frames=longest.num_frames)
    estimate = cost.estimate(size, "demo", longest, device="cpu", precision="fp32")
    assert estimate == cost.estimate(size, "demo", fixed, device="cpu", precision="fp32")
    shorter = cost.estimate(size, "demo", msgspec.structs.replace(fixed, num_frames=25), device="cpu", precision="fp32")
    assert shorter.disk_bytes < estimate.disk_bytes and shorter.duration_s < estimate.duration_s


def test_the_enhancer_is_its_own_line_of_the_peak_and_the_duration_where_asked() -> None:
    size = cost.ModelSize(
        layers=2,
        inner_width=64,
        vae_width=32,
        weights_gib=dict.fromkeys(cost.WEIGHT_COMPONENTS, 0.05),
        enhancer_gib=8.0,
    )
    request = ABLE.resolve(Request(prompt="p", seed=1))
    plain = cost.estimate(size, "demo", request, device="cuda", precision="bf16")
    asked = msgspec.structs.replace(request, enhance_prompt=True)
    enhanced = cost.estimate(size, "demo", asked, device="cuda", precision="bf16")
    assert enhanced.duration_s == pytest.approx(plain.duration_s + cost.enhance_seconds(8.0, "cuda"))
    assert enhanced.peak_gib == pytest.approx(8.0 + cost.ENHANCE_WORKING_GIB + cost.MARGIN_GIB)
    peak = cost.predict_job_peak(lambda _: 0.1, 64, 32, "bf16", asked, enhancer_gib=8.0)
    assert peak.peak_phase == "prompt enhancement"
    assert cost.predict_job_peak(lambda _: 0.1, 64, 32, "bf16", request, enhancer_gib=8.0).enhance_gib == 0.0


def test_the_enhancers_token_bound_is_diffusers_reference_bound() -> None:
    assert GEMMA4_PROMPT_ENHANCEMENT_CONFIG.max_new_tokens == cost.ENHANCE_MAX_NEW_TOKENS


def test_the_optional_stages_come_where_the_runner_enters_them() -> None:
    quality = protocol.stages_of("quality")
    both = protocol.stages_of("quality", enhance=True, auto_frames=True)
    assert both[0] == protocol.ENHANCE_STAGE and [s for s in both if s in quality] == list(quality)
    assert both.index(protocol.DURATION_STAGE) == both.index("load_transformer") - 1
    assert protocol.ENHANCE_STAGE not in protocol.STAGES and protocol.DURATION_STAGE not in protocol.STAGES


def test_the_command_line_asks_for_both() -> None:
    from avportal.cli import build_parser

    args = build_parser().parse_args(["generate", "a red ball", "--frames", "auto", "--enhance-prompt"])
    assert (args.num_frames, args.enhance_prompt) == (AUTO, True)
    plain = build_parser().parse_args(["generate", "a red ball", "--frames", "49"])
    assert (plain.num_frames, plain.enhance_prompt) == (49, None), "left out: the request leaves it out"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "a red ball", "--frames", "long"])


# ---- the library: the parts as a directory holds them ---------------------------------------------------------


@pytest.fixture(scope="module")
def extras_dir(tmp_path_factory) -> Path:
    from gpu_runner.demo.model import build_tokenizer
    from gpu_runner.demo.text_extras import write_text_extras

    directory = tmp_path_factory.mktemp("extras")
    (directory / "connectors").mkdir()
    connectors = {"_class_name": "LTX2TextConnectors", "per_modality_projections": True}
    (directory / "connectors" / "config.json").write_text(
        json.dumps(connectors | {"video_hidden_dim": 8, "audio_hidden_dim": 4})
    )
    write_text_extras(directory, build_tokenizer(), video_width=8, audio_width=4)
    return directory


def test_the_library_lists_the_parts_a_directory_holds(extras_dir: Path) -> None:
    assert library.text_parts(extras_dir) == ((library.DURATION_HEAD, library.PROMPT_ENHANCER), ())
    assert library.text_parts(extras_dir.parent) == ((), ()), "none: nothing to say"


def test_a_part_that_cannot_be_used_is_left_out_with_why(extras_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(extras_dir, broken)
    config = broken / library.DURATION_HEAD / "config.json"
    config.write_text(config.read_text().replace("LTX2DurationHead", "SomethingElse"))
    (broken / library.PROMPT_ENHANCER / "tokenizer_config.json").unlink()
    parts, notes = library.text_parts(broken)
    assert parts == ()
    assert "duration_head/ has _class_name 'SomethingElse', not 'LTX2DurationHead'" in notes[0]
    assert "prompt_enhancer/ has no tokenizer" in notes[1]


def test_a_duration_head_for_other_connectors_is_left_out(extras_dir: Path, tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "model"
    shutil.copytree(extras_dir, other)
    (other / "connectors" / "config.json").write_text(json.dumps({"caption_channels": 64}))  # an LTX-2.0's
    parts, notes = library.text_parts(other)
    assert parts == (library.PROMPT_ENHANCER,)
    assert notes == (
        "duration_head/ reads connector outputs 8 and 4 wide, but this model's connectors give (64, 64), "
        "so it is left out",
    )


# ---- the portal: the runner's events into the job's row, its JSON and its page ----------------------------------


def test_the_runners_choices_are_stored_with_the_job_and_shown(tmp_path: Path) -> None:
    store, broker, settings = Store(tmp_path / "portal.db"), Broker(), Settings(data_dir=tmp_path)
    templates = build_templates(settings)
    journal = Journal(store, broker, PageFeed(broker, templates, settings), slots=("cpu0",))
    asked = Request(prompt="a ball", model="ltx-25", num_frames=AUTO, fps=24.0, enhance_prompt=True, seed=3)
    rewrite = "A red rubber ball bounces on a wooden floor; each bounce clicks."
    longest = Estimate(
        duration_s=600.0, denoise_s=500.0, decode_s=90.0, peak_gib=9.0, disk_bytes=9, device="cpu", past_runs=0
    )
    at_chosen = msgspec.structs.replace(longest, duration_s=120.0, denoise_s=100.0, decode_s=15.0, disk_bytes=2)
    asked_at: list[tuple[str, int]] = []

    async def estimate_at_length(job_id: str, num_frames: int) -> Estimate:
        asked_at.append((job_id, num_frames))
        return at_chosen

    journal.estimate_at_length = estimate_at_length

    async def scenario() -> None:
        await store.call(store.create_job, "j", asked, {"type": "queued"}, 10, longest)
        await store.call(store.record, "j", {"type": "running"}, JobUpdate(status="running", start_attempt=True))
        with broker.subscribe("j") as api:
            progress = JobProgress()
            for event in (
                protocol.Stage(name=protocol.ENHANCE_STAGE, t=1.0),
                protocol.Token(done=120, total=600),
                protocol.EnhancedPrompt(prompt=rewrite),
                protocol.NumFrames(num_frames=97),
            ):
                progress = await journal.runner_event("j", event, progress)
                assert (await api.receive())["type"] == event.__struct_config__.tag
        assert (progress.tokens_done, progress.tokens_total) == (120, 600)

    anyio.run(scenario)
    try:
        job = store.get_job("j")
        assert (job.num_frames_chosen, job.enhanced_prompt, job.num_frames) == (97, rewrite, 97)
        assert job.request.num_frames == AUTO and job.request.prompt == "a ball", "the request stays as asked"
        assert asked_at == [("j", 97)] and job.estimate == at_chosen, "estimated again at the chosen length"
        left = queue_context(job, None)["finishes_in"]
        assert left is not None and left <= at_chosen.duration_s, "the page's time left follows it"

        shown = msgspec.to_builtins(present(job, settings, {}))
        assert shown["request"]["num_frames"] == 97 and shown["num_frames_requested"] == AUTO
        assert shown["estimate"]["duration_s"] == 120.0
        assert shown["enhanced_prompt"] == rewrite and shown["request"]["prompt"] == "a ball"

        context = job_context(job, {}, None)
        assert protocol.ENHANCE_STAGE in [s["name"] for s in context["timeline"]]
        assert dict(context["settings"])["num_frames"] == "97 (auto: chosen by the model)"
        panel = html.unescape(templates.engine.get_template("fragments/_job_panel.html").render(**context))
        assert "<h1>a ball</h1>" in panel and rewrite in panel
        assert "/?from_job=j&use=enhanced_prompt" in panel and "Use this prompt" in panel

        # another attempt of the job chooses again
        store.record("j", {"type": "running"}, JobUpdate(status="running", start_attempt=True))
        again = store.get_job("j")
        assert (again.num_frames_chosen, again.enhanced_prompt, again.num_frames) == (None, None, None)
    finally:
        store.close()


def test_a_job_that_asked_shows_what_is_still_to_come(tmp_path: Path) -> None:
    templates = build_templates(Settings.from_env({"AVP_DATA_DIR": str(tmp_path)}))
    request = Request(prompt="a ball", num_frames=AUTO, fps=24.0, enhance_prompt=True)
    job = job_row(status="running", request=request, progress=JobProgress(tokens_done=40, tokens_total=600))
    context = job_context(job, {}, None)
    assert dict(context["settings"])["num_frames"] == "auto: the model chooses from the prompt"
    panel = templates.engine.get_template("fragments/_job_panel.html").render(**context)
    assert 'id="enhanced-prompt-pending"' in panel and "40 tokens written so far" in panel
    card = templates.engine.get_template("fragments/_job_card.html").render(job=job)
    assert "the model&#39;s choice" in card or "the model's choice" in card


def test_a_finished_auto_job_teaches_the_estimate_at_the_length_it_ran(tmp_path: Path) -> None:
    store = Store(tmp_path / "portal.db")
    try:
        asked = Request(prompt="p", model="m", num_frames=AUTO, fps=24.0, width=64, height=64, steps=2, seed=1)
        for job_id, chosen in (("known", 49), ("unknown", None)):
            store.create_job(job_id, asked, {"type": "queued"}, 10)
            store.record(job_id, {"type": "running"}, JobUpdate(status="running", start_attempt=True))
            store.record(job_id, {"type": "num_frames"}, JobUpdate(num_frames_chosen=chosen))
            result = {"timings": {"denoise": 1.0}, "peak_vram_gib": None}
            store.record(job_id, {"type": "succeeded"}, JobUpdate(status="succeeded", result=result))
        [run] = store.past_runs("m", 10)
        assert run.request.num_frames == 49, "a run whose length is unknown teaches nothing"
    finally:
        store.close()
