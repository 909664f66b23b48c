"""The staged generation: one job, from prompt to MP4, holding one large model at a time.

Reads top to bottom as DESIGN.md's stage list. Each stage is entered through `Stages`,
which announces it, checks for cancellation, times it, accounts memory at its end and
turns an out-of-memory error into a message naming the stage and the job's size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from contract import jobdir, protocol
from contract.request import Request
from gpu_runner import admission, memory, mux, tiling
from gpu_runner.cancel import Cancellation
from gpu_runner.conditioning import image_conditions
from gpu_runner.guidance import share_stg_prefix
from gpu_runner.job import Job, JobError
from gpu_runner.loading import DiffusersDirectory, compiles, place_denoiser
from gpu_runner.preview import PreviewWriter
from gpu_runner.prompt_cache import PromptCache
from gpu_runner.text import PrecomputedConnectors, encode
from gpu_runner.weight_cache import WeightCache

Emit = Callable[[protocol.Event], None]
log = logging.getLogger(__name__)

# LTX-2.0's guidance beyond diffusers' defaults (which follow 2.3): no cross timestep, STG at block 29.
LTX2_0_GUIDANCE = {"use_cross_timestep": False, "spatio_temporal_guidance_blocks": [29]}
# 2.3's STG block, diffusers' default, spelled out for the STG pass to share the blocks before it.
LTX2_3_GUIDANCE = {"spatio_temporal_guidance_blocks": [28]}

# The denoise stage's note when its blocks are compiled: the first step is slow and says nothing until it ends
# (26-45 s the first time a clip size is seen, 5-12 s with torch's cache warm: loading.place_denoiser).
COMPILE_NOTE = (
    "The first step compiles GPU kernels for this clip size: up to about 45 s the first time this size "
    "runs, about 10 s later on. The time left is estimated from the steps that follow it."
)


def generate(
    job: Job, emit: Emit, cancellation: Cancellation, started: float, source: DiffusersDirectory | None = None
) -> protocol.Result:
    request = job.request
    source = source or DiffusersDirectory(job.model_dir, weight_cache_for(job))
    device = memory.pick_device()
    precision = job.file.precision or job.spec.precision_cuda
    dtype = memory.compute_dtype(device, precision)
    stages = Stages(emit, cancellation, device, job, started)
    guidance = guidance_settings(job, source)

    # 0. Refuse, before loading anything, a job whose predicted peak exceeds the free VRAM.
    if device.type == "cuda":
        size = f"{request.width}x{request.height}, {request.num_frames} frames"
        asked = time.monotonic()
        free_gib = memory.free_vram_gib(device)  # the process's first CUDA call: the driver starts here
        log.info("CUDA started in %.2f s, %.1f GiB free", time.monotonic() - asked, free_gib)
        admission.admit(predicted_peak(source, precision, request), free_gib, size)

    # 1-3. The prompt's context: from the cache, or from the text encoder and connectors, then freed.
    cache, cache_key = prompt_cache_for(job, source)
    context = cache.get(cache_key) if cache else None
    if context is None:
        # 1. Load the text encoder (streamed block by block on CUDA), its tokenizer and the connectors.
        with stages("load_text_encoder"):
            text = source.load_text_side(dtype, device)

        # 2. Encode the prompt and the negative prompt, then run the connectors on both.
        with stages("encode_prompt"):
            max_tokens = source.sequence_length()
            context = encode(text, request.prompt, request.negative_prompt, max_tokens, device, dtype)
            if cache:
                cache.put(cache_key, context)

        # 3. Free the text side before the transformer arrives; the memory event proves it.
        with stages("free_text_encoder"):
            del text
            memory.release(device)
    else:
        # A cache hit: the encoder is never loaded.
        with stages("encode_prompt"):
            context = {name: tensor.to(device) for name, tensor in context.items()}

    # 4. Load the transformer (its big linears in FP8: from the weight cache straight onto the GPU, or cast
    #    on the CPU before it moves), VAEs, vocoder, scheduler; only the transformer goes to the GPU now,
    #    the decoders follow once it has gone.
    with stages("load_transformer"):
        conditioned = job.file.image_file is not None
        pipe = source.load_denoiser(dtype, precision, PrecomputedConnectors(context), device, conditioned)
        compile_cache = None if job.file.compile_cache_dir is None else Path(job.file.compile_cache_dir)
        place_denoiser(pipe, device, video_tokens(request), compile_cache)
        compiled = compiles(device, compile_cache)
        share_stg_prefix(pipe.transformer, guidance["spatio_temporal_guidance_blocks"])

    # 5. Denoise video and audio latents together, reporting (and honouring cancellation) per step,
    #    with a preview of the clip every few steps. Compiled blocks make the first step slow: the stage says
    #    so, and the ETA leaves that step out.
    with stages("denoise", note=denoise_note(compiled)):
        previews = PreviewWriter(job.path, latent_shape(request), request.steps)
        on_step_end = step_reporter(emit, cancellation, request.steps, previews, first_step_compiles=compiled)
        video_latents, audio_latents = pipe(
            **pipe.connectors.placeholder_embeds(),
            width=request.width,
            height=request.height,
            num_frames=request.num_frames,
            frame_rate=request.fps,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            **guidance,
            **image_conditions(job),
            # A CPU generator draws the same noise on every device: same seed, same clip.
            generator=torch.Generator("cpu").manual_seed(request.seed),
            output_type="latent",
            return_dict=False,
            callback_on_step_end=on_step_end,
        )

    # 6. Free the transformer before decoding: the decoders need the room.
    with stages("free_transformer"):
        vae, audio_vae, vocoder = pipe.vae, pipe.audio_vae, pipe.vocoder
        del pipe
        memory.release(device)

    # 7. Decode the audio latents to a mel spectrogram, then to a waveform, in float32. Audio goes
    #    first, being small, so the muxer can take video frames as soon as they are decoded.
    with stages("decode_audio"):
        audio_vae, vocoder = audio_vae.to(device), vocoder.to(device)
        waveform = vocoder(audio_vae.decode(audio_latents.to(torch.float32), return_dict=False)[0])
        waveform = waveform[0].float().cpu().numpy()
        sample_rate = vocoder.config.output_sampling_rate  # not pipe.audio_sampling_rate: that is the mel rate
        del audio_vae, vocoder
        memory.release(device)

    # 8. Decode the video in tiles, streaming each finished chunk of frames into the muxer, and
    # 9. finish the MP4 (flush, moov atom to the front); video.mp4 appears only when complete.
    with mux.Mp4Writer(job.path(jobdir.VIDEO_FILE), request.fps, waveform, sample_rate) as writer:
        with stages("decode_video"):
            for frames in tiling.decode_tiled(vae.to(device), video_latents, tile_reporter(emit, cancellation)):
                writer.add_frames(frames)
            del vae
            memory.release(device)
        with stages("mux"):
            writer.finish()

    return protocol.Result(
        file=jobdir.VIDEO_FILE,
        frames=writer.frames_written,
        fps=request.fps,
        width=request.width,
        height=request.height,
        audio_sample_rate=sample_rate,
        duration_s=round(writer.frames_written / request.fps, 3),
        peak_vram_gib=stages.peak_vram_gib,
        timings=stages.timings,
    )


def denoise_note(compiled: bool) -> str | None:
    """The denoise stage's note: why its first step is slow, where it is (`loading.compiles`)."""
    return COMPILE_NOTE if compiled else None


def latent_shape(request: Request) -> tuple[int, int, int]:
    """Latent frames, rows and columns: one cell per 32x32 pixels and 8 frames (the first frame alone)."""
    return (request.num_frames - 1) // 8 + 1, request.height // 32, request.width // 32


def video_tokens(request: Request) -> int:
    """Transformer tokens of the clip: one per latent cell."""
    frames, rows, columns = latent_shape(request)
    return frames * rows * columns


def predicted_peak(
    source: DiffusersDirectory, precision: str, request: Request
) -> admission.PeakPrediction:
    """The job's peak VRAM as admission predicts it, from the model's files and the clip's size."""
    return admission.predict_peak(
        transformer_file_gib=source.weights_gib("transformer"),
        connectors_file_gib=source.weights_gib("connectors"),
        vae_file_gib=source.weights_gib("vae"),
        precision=precision,
        tokens=video_tokens(request),
        inner_width=source.inner_width(),
    )


def prompt_cache_for(job: Job, source: DiffusersDirectory) -> tuple[PromptCache | None, str]:
    if job.file.prompt_cache_dir is None:
        return None, ""
    request = job.request
    cache = PromptCache(Path(job.file.prompt_cache_dir), job.file.prompt_cache_mb * 2**20)
    key = cache.key(job.spec.id, source.revision(), request.prompt, request.negative_prompt, source.sequence_length())
    return cache, key


def weight_cache_for(job: Job) -> WeightCache | None:
    return None if job.file.weight_cache_dir is None else WeightCache(Path(job.file.weight_cache_dir))


class Stages:
    """Enters stages: cancellation check, `stage` event, timing, `memory` event, OOM translation."""

    def __init__(self, emit: Emit, cancellation: Cancellation, device: torch.device, job: Job, started: float):
        self.emit, self.cancellation, self.device, self.job, self.started = emit, cancellation, device, job, started
        self.timings: dict[str, float] = {}
        self.peak_vram_gib: float | None = None  # the job's: the highest of the stages' peaks

    @contextmanager
    def __call__(self, name: str, note: str | None = None) -> Iterator[None]:
        self.cancellation.check()
        memory.reset_peak(self.device)
        entered = time.monotonic()
        self.emit(protocol.Stage(name=name, t=round(entered - self.started, 3), note=note))
        try:
            with torch.no_grad():
                yield
        except Exception as error:
            if memory.is_out_of_memory(error):
                raise JobError("out_of_memory", self._out_of_memory_message(name)) from error
            raise
        self.timings[name] = round(time.monotonic() - entered, 3)
        snapshot = memory.snapshot(name, self.device)
        if snapshot.peak_gib is not None:
            self.peak_vram_gib = max(self.peak_vram_gib or 0.0, snapshot.peak_gib)
        self.emit(snapshot)

    def _out_of_memory_message(self, stage: str) -> str:
        request = self.job.request
        return (
            f"Out of GPU memory during {stage} at {request.width}x{request.height}, {request.num_frames} frames. "
            "Try fewer frames or a smaller size, or stop other programs that hold GPU memory."
        )


def seconds_left(step_times: Sequence[float], total: int, first_step_compiles: bool) -> float | None:
    """The ETA once `len(step_times)` of `total` steps have taken these times; None while nothing honest is known.

    The first step is a warm-up (3x a later step uncompiled) or, with compiled blocks, mostly compiling (26-45 s
    against 0.4-5 s a step), so from the second step on the estimate is the mean of the steps after it. After
    the first step alone, its time stands for the rest unless it compiled: then the time left is unknown.
    """
    done = len(step_times)
    left = total - done
    if left <= 0:
        return 0.0
    if done >= 2:
        return sum(step_times[1:]) / (done - 1) * left
    if done == 1 and not first_step_compiles:
        return step_times[0] * left
    return None


def step_reporter(
    emit: Emit,
    cancellation: Cancellation,
    total: int,
    previews: PreviewWriter,
    first_step_compiles: bool = False,
    clock: Callable[[], float] = time.monotonic,
):
    """The per-step callback: a `step` event with an ETA (`seconds_left`), a preview every few steps, then a
    cancellation check.

    Raising from it (Cancelled) leaves the pipeline before it decodes anything.
    """
    started = last_end = clock()
    step_times: list[float] = []

    def on_step_end(pipe, index: int, _timestep, tensors: dict) -> dict:
        nonlocal last_end
        done = index + 1
        now = clock()
        elapsed = now - started
        step_times.append(now - last_end)
        last_end = now
        eta = seconds_left(step_times, total, first_step_compiles)
        eta_s = None if eta is None else round(eta, 3)
        emit(protocol.Step(step=done, total=total, elapsed_s=round(elapsed, 3), eta_s=eta_s))
        preview = previews.after_step(pipe.scheduler.sigmas, index, tensors["latents"])
        if preview is not None:
            emit(preview)
        cancellation.check()
        return {}

    return on_step_end


def tile_reporter(emit: Emit, cancellation: Cancellation):
    """The per-tile callback of the tiled decode: a `tile` event, then a cancellation check."""

    def on_tile(done: int, total: int) -> None:
        emit(protocol.Tile(done=done, total=total))
        cancellation.check()

    return on_tile


def guidance_settings(job: Job, source: DiffusersDirectory) -> dict:
    """The guidance beyond CFG, per model.

    The demo's two blocks have no STG block to perturb, so it uses CFG alone (two passes
    a step) with the request's scale for audio too. LTX-2 keeps diffusers' recommended
    STG, modality and rescale terms, with the LTX-2.0 settings when its connectors show
    2.0 (one projection shared by both modalities). The STG pass starts at its first STG
    block from the positive CFG row's states there (gpu_runner/guidance.py).
    """
    if job.spec.kind == "demo":
        return {
            "audio_guidance_scale": job.request.guidance_scale,
            "stg_scale": 0.0,
            "audio_stg_scale": 0.0,
            "modality_scale": 1.0,
            "audio_modality_scale": 1.0,
            "spatio_temporal_guidance_blocks": None,
        }
    return dict(LTX2_0_GUIDANCE if source.is_ltx2_0() else LTX2_3_GUIDANCE)
