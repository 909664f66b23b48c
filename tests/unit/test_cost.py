"""The job-cost estimate: first principles grow with every dimension of the work, past runs correct them,
and a job predicted past the limit is refused with what would fit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import msgspec
import pytest

from app.store import JobUpdate, Store
from contract import cost, protocol
from contract.models import demo_spec
from contract.request import Keyframe, Request

DEMO = demo_spec(Path(__file__).resolve().parents[2] / "gpu_runner" / "demo" / "weights")
SIZE = cost.ModelSize.read(Path(DEMO.path))  # the shipped demo weights: read from their files, as the portal does


def resolved(**fields: object) -> Request:
    return DEMO.resolve(Request(prompt="a red ball bouncing", **fields), seed=1)


def predicted(request: Request, device: cost.DeviceKind = "cpu", runs=()) -> cost.Estimate:
    return cost.estimate(SIZE, DEMO.kind, request, device=device, precision="bf16", runs=runs)


def test_the_model_size_comes_from_its_config_and_weight_files() -> None:
    assert (SIZE.layers, SIZE.inner_width) == (6, 192)
    assert 0 < SIZE.weights_gib["vae"] < SIZE.weights_gib["transformer"] < 0.05


@pytest.mark.parametrize(
    ("field", "smaller", "larger"),
    [("num_frames", 25, 97), ("width", 256, 512), ("height", 160, 288), ("steps", 8, 40), ("guidance_scale", 1.0, 3.0)],
)
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_first_principles_grow_with_each_dimension_of_the_work(device, field, smaller, larger) -> None:
    small, large = predicted(resolved(**{field: smaller}), device), predicted(resolved(**{field: larger}), device)
    assert large.duration_s > small.duration_s and large.denoise_s > small.denoise_s
    assert small.past_runs == large.past_runs == 0
    if field != "steps" and field != "guidance_scale":  # the clip itself grows: its file and its activations
        assert large.disk_bytes > small.disk_bytes
        assert large.peak_gib >= small.peak_gib


def test_a_cpu_is_predicted_slower_than_a_gpu() -> None:
    request = resolved(width=512, height=288, num_frames=97, steps=40)
    assert predicted(request, "cpu").denoise_s > 10 * predicted(request, "cuda").denoise_s


def test_attention_makes_long_clips_cost_more_than_in_proportion() -> None:
    short, long = predicted(resolved(num_frames=57)), predicted(resolved(num_frames=481))
    assert long.denoise_s / short.denoise_s > (481 // 8 + 1) / (57 // 8 + 1)  # more than the ratio of tokens


def run_like(request: Request, *, denoise_x: float, decode_x: float, fixed_s: float, device="cpu") -> cost.PastRun:
    """A finished run of `request` that took `denoise_x` / `decode_x` times the first-principles figures."""
    default = cost.first_principles(SIZE, device)
    denoise = cost.denoise_flop(SIZE, DEMO.kind, request) / default.denoise_flop_per_s * denoise_x
    video = cost.decode_work(SIZE, request) / default.decode_work_per_s * decode_x
    audio = cost.clip_seconds(request) * default.audio_s_per_clip_s * decode_x
    timings = {"load_transformer": 0.5, "denoise": denoise, "decode_video": video, "decode_audio": audio}
    return cost.PastRun(request=request, device=device, held_s=fixed_s + denoise + video + audio, timings=timings)


def test_past_runs_move_the_estimate_to_what_this_machine_measured() -> None:
    seen = resolved(steps=8)
    runs = [run_like(seen, denoise_x=4.0, decode_x=2.0, fixed_s=fixed) for fixed in (5.0, 6.0, 7.0)]
    learned = predicted(seen, runs=runs)
    assert learned.past_runs == 3
    assert learned.duration_s == pytest.approx(runs[1].held_s, abs=0.2)  # the median run, to rounding
    # A request of another size: its growing parts scale by the measured factors, the fixed part is measured.
    other = resolved(width=512, height=288, num_frames=49, steps=20)
    first, then = predicted(other), predicted(other, runs=runs)
    assert then.denoise_s == pytest.approx(4.0 * first.denoise_s, rel=0.01)
    assert then.duration_s > first.duration_s


def test_runs_of_two_shapes_tell_a_small_models_per_pass_cost_from_its_flop_rate() -> None:
    """Steps of the tiny demo cost mostly their calls: a rate alone, learned from a small clip, would predict a
    larger one many times too slow. Two shapes apart are enough to fit both."""
    per_pass_s, flop_per_s, decode_base_s, work_per_s, fixed_s = 0.05, 2e11, 0.4, 5e5, 3.0

    def run(request: Request) -> cost.PastRun:
        denoise = (
            cost.denoise_passes(DEMO.kind, request) * per_pass_s
            + cost.denoise_flop(SIZE, DEMO.kind, request) / flop_per_s
        )
        video = decode_base_s + cost.decode_work(SIZE, request) / work_per_s
        audio = cost.clip_seconds(request) * 0.05
        timings = {"denoise": denoise, "decode_video": video, "decode_audio": audio}
        return cost.PastRun(request=request, device="cpu", held_s=fixed_s + denoise + video + audio, timings=timings)

    small, larger = (
        resolved(width=256, height=256, num_frames=9, steps=4),
        resolved(width=512, height=320, num_frames=97),
    )
    truth = run(resolved(width=384, height=256, num_frames=49, steps=16))
    learned = predicted(truth.request, runs=[run(small), run(larger)])
    assert learned.duration_s == pytest.approx(truth.held_s, rel=0.02)
    assert predicted(truth.request, runs=[run(small)]).duration_s > 1.3 * truth.held_s, "a rate alone overshoots"


def test_one_odd_run_does_not_swing_the_estimate_and_runs_on_another_device_are_not_used() -> None:
    seen = resolved()
    steady = [run_like(seen, denoise_x=2.0, decode_x=2.0, fixed_s=4.0) for _ in range(4)]
    odd = run_like(seen, denoise_x=50.0, decode_x=50.0, fixed_s=400.0)  # a machine busy with something else
    gpu = run_like(seen, denoise_x=0.01, decode_x=0.01, fixed_s=0.1, device="cuda")
    assert predicted(seen, runs=[*steady, odd, gpu]).duration_s == pytest.approx(steady[0].held_s, abs=0.2)
    assert predicted(seen, runs=[*steady, odd, gpu]).past_runs == 5


def test_the_first_steps_warm_up_counts_as_fixed_not_as_a_slower_step() -> None:
    seen = resolved(steps=8)
    plain = run_like(seen, denoise_x=3.0, decode_x=1.0, fixed_s=2.0)
    per_step = plain.timings["denoise"] / 8
    warm_up = 20 * per_step  # the first step took 21 steps' time (a compile, say)
    timings = {**plain.timings, "denoise": plain.timings["denoise"] + warm_up}
    run = msgspec.structs.replace(plain, held_s=plain.held_s + warm_up, timings=timings, first_step_s=21 * per_step)
    learned = predicted(resolved(steps=40), runs=[run])
    assert learned.denoise_s == pytest.approx(3.0 * predicted(resolved(steps=40)).denoise_s, rel=0.01)
    without_warm_up = predicted(resolved(steps=40), runs=[plain])
    assert learned.duration_s == pytest.approx(without_warm_up.duration_s + warm_up + per_step)  # in the fixed part


def test_the_store_gives_a_models_finished_runs_newest_first_with_their_device_and_stage_times(tmp_path) -> None:
    store = Store(tmp_path / "portal.sqlite3")
    timings = {"denoise": 2.5, "decode_video": 1.0, "decode_audio": 0.5}
    for job_id, model, vram, status in [
        ("cpu", "demo", None, "succeeded"),
        ("gpu", "demo", 3.2, "succeeded"),
        ("other", "ltx-2", 20.0, "succeeded"),
        ("failed", "demo", None, "failed"),
    ]:
        store.create_job(job_id, msgspec.structs.replace(resolved(), model=model), {"type": "queued"}, max_queued=10)
        store.record(job_id, {"type": "running"}, JobUpdate(status="running", start_attempt=True))
        for step, elapsed in ((1, 0.7), (2, 0.9)):
            store.record(job_id, msgspec.to_builtins(protocol.Step(step=step, total=8, elapsed_s=elapsed, eta_s=1.0)))
        result = msgspec.to_builtins(protocol.Result("video.mp4", 25, 24.0, 256, 160, 24000, 1.04, vram, timings))
        store.record(job_id, result, JobUpdate(status=status, result=result if status == "succeeded" else None))
    runs = store.past_runs("demo", 20)
    store.close()
    assert [run.device for run in runs] == ["cuda", "cpu"]
    assert all(run.timings == timings and run.held_s >= 0 and run.request.model == "demo" for run in runs)
    assert [run.first_step_s for run in runs] == [0.7, 0.7]


def test_the_device_is_a_gpu_where_a_driver_shows_or_the_newest_run_used_one(monkeypatch, tmp_path) -> None:
    cpu_run, gpu_run = (run_like(resolved(), denoise_x=1, decode_x=1, fixed_s=1, device=d) for d in ("cpu", "cuda"))
    monkeypatch.setattr(cost, "GPU_DRIVER_PATHS", (str(tmp_path / "no-driver"),))
    assert cost.likely_device([]) == cost.likely_device([cpu_run, gpu_run]) == "cpu"
    assert cost.likely_device([gpu_run, cpu_run]) == "cuda"
    (tmp_path / "version").write_text("NVRM version: 570")
    monkeypatch.setattr(cost, "GPU_DRIVER_PATHS", (str(tmp_path / "version"),))
    assert cost.likely_device([cpu_run]) == "cuda", "a driver wins: CPU predictions must not lock a GPU out"


def test_the_gpu_peak_is_the_runners_admission_figure() -> None:
    request = resolved(num_frames=121)
    expected = cost.predict_peak(
        transformer_file_gib=SIZE.weights_gib["transformer"],
        connectors_file_gib=SIZE.weights_gib["connectors"],
        vae_file_gib=SIZE.weights_gib["vae"],
        precision="bf16",
        tokens=cost.video_tokens(request),
        inner_width=SIZE.inner_width,
        latents=cost.latent_shape(request),
        vae_width=SIZE.vae_width,
    )
    assert predicted(request, "cuda").peak_gib == pytest.approx(expected.peak_gib, abs=0.01)


def test_a_job_past_the_limit_is_refused_naming_the_minutes_the_limit_and_the_steps_that_fit() -> None:
    request = resolved(width=512, height=288, num_frames=97, steps=100)
    estimate = predicted(request)
    limit = estimate.duration_s / 60 / 3  # a third of the prediction
    message = cost.over_limit(estimate, request, limit)
    assert message is not None
    assert f"{round(estimate.duration_s / 60)} minutes" in message and f"limit of {limit:g} minutes" in message
    assert "AVP_MAX_JOB_MINUTES" in message and "first principles" in message
    fitting = int(message.split("use at most ")[1].split(" steps")[0])
    assert predicted(msgspec.structs.replace(request, steps=fitting)).duration_s <= limit * 60
    assert predicted(msgspec.structs.replace(request, steps=fitting + 1)).duration_s > limit * 60
    assert cost.over_limit(estimate, request, estimate.duration_s / 60 + 1) is None
    assert cost.over_limit(estimate, request, 0) is None, "0: no limit"


def test_when_even_one_step_is_too_long_the_message_asks_for_a_smaller_clip() -> None:
    request = resolved(width=2048, height=2048, num_frames=481, steps=100)
    message = cost.over_limit(predicted(request), request, 60)
    assert message is not None and "fewer frames or a smaller size" in message and "at most" not in message


@pytest.mark.parametrize(
    ("seconds", "said"), [(0.2, "about 1 s"), (42, "about 42 s"), (600, "about 10 min"), (5 * 3600, "about 5.0 h")]
)
def test_durations_are_said_as_people_say_them(seconds, said) -> None:
    assert cost.say_duration(seconds) == said


def test_fast_mode_costs_its_two_unguided_stages_and_peaks_with_the_upsampler_at_full_size() -> None:
    quality = resolved(mode="quality", width=512, height=320, num_frames=49, steps=11, guidance_scale=1.0)
    fast = msgspec.structs.replace(quality, mode="fast", steps=None, guidance_scale=None)
    half = msgspec.structs.replace(quality, width=256, height=160)
    # 8 unguided passes at half size, then 3 at full size
    expected = cost.denoise_flop(SIZE, DEMO.kind, msgspec.structs.replace(half, steps=8)) + cost.denoise_flop(
        SIZE, DEMO.kind, msgspec.structs.replace(quality, steps=3)
    )
    assert cost.denoise_flop(SIZE, DEMO.kind, fast) == pytest.approx(expected)
    assert cost.denoise_flop(SIZE, DEMO.kind, fast) < cost.denoise_flop(SIZE, DEMO.kind, quality)
    with_upsampler = {**SIZE.weights_gib, "latent_upsampler": 0.5}
    fast_peak = cost.predict_job_peak(with_upsampler.get, SIZE.inner_width, SIZE.vae_width, "bf16", fast)
    quality_peak = cost.predict_job_peak(with_upsampler.get, SIZE.inner_width, SIZE.vae_width, "bf16", quality)
    assert fast_peak.denoise_gib == pytest.approx(quality_peak.denoise_gib + 0.5)  # same tokens, one row, + upsampler
    too_long = cost.over_limit(predicted(fast), fast, limit_minutes=1e-4)
    assert too_long and "use fewer frames or a smaller size" in too_long and "steps" not in too_long.split(";")[1]


def test_an_ltx_2_5_fast_job_is_planned_on_its_slot_canvas_and_its_diffusion_decoder() -> None:
    """The web estimate (what admission per slot and the submit check use) plans what the runner admits: the
    denoise on the padded canvas and keyframe slots, the decode holding the decoder and the clip's pixels."""
    fast = resolved(mode="fast", width=768, height=448, num_frames=121)
    weights = {**SIZE.weights_gib, "latent_upsampler": 0.5, "diffusion_decoder": 2.0}
    size = dataclasses.replace(SIZE, weights_gib=weights)
    plain = cost.predict_job_peak(weights.get, SIZE.inner_width, SIZE.vae_width, "bf16", fast)
    slotted = cost.predict_job_peak(weights.get, SIZE.inner_width, SIZE.vae_width, "bf16", fast, slot_pipeline=True)
    canvas = msgspec.structs.replace(fast, num_frames=161)  # 121 frames: 16 latent frames + 5 slots = 21
    assert slotted.denoise_gib == pytest.approx(
        cost.predict_job_peak(weights.get, SIZE.inner_width, SIZE.vae_width, "bf16", canvas).denoise_gib
    )
    assert slotted.denoise_gib > plain.denoise_gib
    assert slotted.decode_gib >= 2.0 + 121 * 768 * 448 * 3 * 2 / cost.GIB
    as_2_5 = cost.estimate(size, "ltx-2.5", fast, device="cuda", precision="bf16")
    as_2_3 = cost.estimate(size, "ltx-2.3", fast, device="cuda", precision="bf16")
    assert as_2_5.peak_gib == pytest.approx(slotted.peak_gib, abs=0.01) and as_2_5.peak_gib > as_2_3.peak_gib


def test_keyframes_past_the_first_frame_count_their_appended_latent_frames_in_the_peak() -> None:
    """A keyframe at frame 0 replaces the first latent frame's tokens; every other is appended as a latent frame of
    its own, which the transformer attends over (and the runner's long-clip setup counts the same way)."""
    clip = resolved(mode="fast", width=768, height=448, num_frames=121)
    first_and_last = msgspec.structs.replace(
        clip, keyframes=(Keyframe(upload_id="a" * 32, frame=0), Keyframe(upload_id="b" * 32, frame=-1))
    )
    assert cost.denoised_frames(clip) == 121 and cost.denoised_frames(first_and_last) == 129
    assert cost.denoised_frames(first_and_last, slot_pipeline=True) == cost.slot_canvas_frames(121) + 8

    def peak(request: Request) -> float:
        weights = SIZE.weights_gib.get
        return cost.predict_job_peak(weights, SIZE.inner_width, SIZE.vae_width, "bf16", request).denoise_gib

    assert peak(first_and_last) == pytest.approx(peak(msgspec.structs.replace(clip, num_frames=129)))
    assert peak(first_and_last) > peak(clip)


def test_a_fast_runs_upsample_and_refine_count_as_its_denoising() -> None:
    fast = msgspec.structs.replace(resolved(width=512, height=320), mode="fast", steps=None, guidance_scale=None)
    plain = run_like(fast, denoise_x=4.0, decode_x=1.0, fixed_s=2.0)
    denoising = plain.timings["denoise"]
    split = {**plain.timings, "denoise": denoising * 0.5, "upsample": denoising * 0.1, "refine": denoising * 0.4}
    run = msgspec.structs.replace(plain, timings=split)
    assert predicted(fast, runs=[run]).denoise_s == pytest.approx(4.0 * predicted(fast).denoise_s, rel=0.01)
