"""The staged generation: one job, from prompt to MP4, holding one large model at a time.

Reads top to bottom as docs/architecture.md's stage list; what each stage does with a model is its family's
(gpu_runner/families/), so no model kind is named here. Each stage is entered through `Stages`,
which announces it, checks for cancellation, times it, accounts memory at its end and
turns an out-of-memory error into a message naming the stage and the job's size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch

from contract import jobdir, protocol
from contract.disk import is_disk_full
from contract.library import ENHANCER_TOKENIZER_DIRS
from contract.provenance import MP4_KEY, to_json
from contract.request import AUTO, DenoiseStage, denoise_stages, planned
from gpu_runner import admission, cache_budget, extension, lora, memory, mux
from gpu_runner.cache_budget import GIB, MIB, Cache, CacheBudget, Limit
from gpu_runner.cancel import Cancellation
from gpu_runner.compiling import compiles
from gpu_runner.families import Family, family_for
from gpu_runner.job import Job, JobError
from gpu_runner.poster import PosterFrame
from gpu_runner.preview_colours import ColourStore
from gpu_runner.prompt_cache import PromptCache, model_revision
from gpu_runner.resident import RESIDENT, WEIGHTS_RESIDENT
from gpu_runner.weight_cache import WeightCache

Emit = Callable[[protocol.Event], None]
log = logging.getLogger(__name__)

# The denoise stage's note when its blocks are compiled: the first step is slow and says nothing until it ends
# (26-45 s the first time a clip size is seen, 5-12 s with torch's cache warm: families/ltx2/loading.py).
COMPILE_NOTE = (
    "The first step compiles GPU kernels for this clip size: up to about 45 s the first time this size "
    "runs, about 10 s later on. The time left is estimated from the steps that follow it."
)
ENHANCED_FROM_CACHE = (
    "Cached: the prompt enhancer rewrote this prompt for an earlier job (same model, seed and token bound), so it "
    "is not loaded."
)


def generate(
    job: Job, emit: Emit, cancellation: Cancellation, started: float, family: Family | None = None
) -> protocol.Result:
    """The job's stages; then its caches are brought within their budget, however the stages ended (each new
    entry made room as it was written, but torch writes its compiled kernels with no such moment before). Only a job
    that succeeded rests its weights for the next job (warm mode): a failed or cancelled one's runner exits, and moving
    a transformer to RAM first could outlast the cancel's grace period or replace the job's error with its own."""
    budget = cache_budget_for(job)
    family = family or family_for(job, weight_cache_for(job, budget))
    try:
        result = _stages(job, emit, cancellation, started, family, budget)
    finally:
        budget.sweep()
    rest_between_jobs()
    return result


def rest_between_jobs() -> None:
    """Warm mode, at the job's end: what stays loaded waits in RAM, off the GPU, for the next job, and torch's cache
    gives back what the job's last stages reserved (the video decode's), so that the idle runner holds only its CUDA
    context on the card: the figure its `resident` line reports and the room its next job's admission finds."""
    if RESIDENT.enabled:
        free_components(memory.pick_device())


def free_components(device: torch.device) -> None:
    """Where a stage has let components go (the text side, the denoiser, the audio decoders; at a warm job's end,
    everything), their memory goes back: in warm mode the kept ones move to RAM (`Resident.park`), as a runner
    without warm mode frees them, then Python's references and torch's cache are released. Every such stage
    comes here, so no family, and no stage added later, leaves resident weights on the card for the next."""
    RESIDENT.park()
    memory.release(device)


def _stages(
    job: Job, emit: Emit, cancellation: Cancellation, started: float, family: Family, budget: CacheBudget
) -> protocol.Result:
    request = job.request
    family.check_mode(job)
    device = memory.pick_device()
    precision = job.file.precision or job.spec.precision_cuda
    dtype = memory.compute_dtype(device, precision)
    stages = Stages(emit, cancellation, device, job, started)

    # 0. Refuse, before loading anything, a job whose predicted peak exceeds the free VRAM; what is admitted
    #    sets the video decode's memory budget.
    #    A length the model chooses (num_frames "auto") is admitted as the longest clip it may choose.
    decode_budget_gib = admission.CPU_DECODE_BUDGET_GIB
    if device.type == "cuda":
        longest = planned(job.spec.constraints, request)
        size = f"{request.width}x{request.height}, {longest.num_frames} frames"
        asked = time.monotonic()
        free_gib = memory.free_vram_gib(device)  # the process's first CUDA call: the driver starts here
        log.info("CUDA started in %.2f s, %.1f GiB free", time.monotonic() - asked, free_gib)
        predicted = family.predict_peak(precision, longest)
        loras_gib = lora.files_gib(family.lora_files(job))
        predicted = dataclasses.replace(predicted, denoise_gib=predicted.denoise_gib + loras_gib)
        decode_budget_gib = admission.admit(predicted, free_gib, size)

    # 0b. LTX-2.5's prompt enhancer (enhance_prompt: true), alone on the device and freed before the text encoder
    #     loads: the job encodes (and the prompt cache keys) its rewrite of the prompt.
    #     A rewrite made before (the same model, prompt, seed and token bound) comes from the prompt cache.
    if request.enhance_prompt:
        cache, cache_key = enhanced_prompt_cache_for(job, budget)
        enhanced = cache.get_text(cache_key) if cache else None
        with stages(protocol.ENHANCE_STAGE, note=None if enhanced is None else ENHANCED_FROM_CACHE):
            if enhanced is None:
                enhanced = family.enhance_prompt(job, device, token_reporter(emit, cancellation))
                if cache:
                    cache.put_text(cache_key, enhanced)
        emit(protocol.EnhancedPrompt(prompt=enhanced))
        job = stages.job = job.with_request(prompt=enhanced)
        request = job.request

    # 1-3. The prompt's context: from the cache, or from the text side, then freed.
    cache, cache_key = prompt_cache_for(job, family, budget)
    context = cache.get(cache_key) if cache else None
    if context is None:
        # 1. Load the text side (for LTX-2: the encoder streamed block by block on CUDA, tokenizer, connectors).
        with stages(
            "load_text_encoder", note=resident_note(family, job, "load_text_encoder", dtype, precision, device)
        ):
            text = family.load_text_side(dtype, device)

        # 2. Encode the prompt and the negative prompt into the context the denoiser attends to.
        with stages("encode_prompt"):
            context = family.encode(text, request, device, dtype)
            if cache:
                cache.put(cache_key, context)

        # 3. Free the text side before the denoiser arrives; the memory event proves it.
        with stages("free_text_encoder"):
            del text
            free_components(device)  # warm mode: the kept text side (its connectors ran on the GPU) too
    else:
        # A cache hit: the encoder is never loaded.
        with stages("encode_prompt"):
            context = {name: tensor.to(device) for name, tensor in context.items()}

    # 3b. LTX-2.5's duration head (num_frames "auto"): the clip's length from the prompt's context, for every stage
    #     after this one.
    if request.num_frames == AUTO:
        with stages(protocol.DURATION_STAGE):
            frames = family.predict_num_frames(job, context, device)
        emit(protocol.NumFrames(num_frames=frames))
        job = stages.job = job.with_request(num_frames=frames)
        request = job.request

    # The model's preview colours: shipped with it, or learnt from an earlier clip; else this clip teaches them.
    colour_store = colour_store_for(job, family)
    colours = colour_store.load()

    # 4. Load the denoiser onto the GPU; its decoders wait on the CPU until the denoiser has gone.
    with stages("load_transformer", note=resident_note(family, job, "load_transformer", dtype, precision, device)):
        denoiser = family.load_denoiser(job, context, device, dtype, precision)
        compile_cache = None if job.file.compile_cache_dir is None else Path(job.file.compile_cache_dir)
        compiled = compiles(device, compile_cache)

    # 5. Denoise video and audio latents together, reporting (and honouring cancellation) per step,
    #    with a preview of the clip every few steps. Compiled blocks make the first step slow: the stage says
    #    so, and the ETA leaves that step out. Torch's compile cache is in use while the blocks compile and run.
    #    Fast mode denoises at half size, upsamples the video latents x2, and refines them at full size.
    kernels_in_use = cache_budget.using(compile_cache, directory=True) if compiled else contextlib.nullcontext()
    plan = denoise_stages(request)
    latents = None
    with kernels_in_use:
        for number, stage in enumerate(plan, start=1):
            if latents is not None:
                with stages("upsample"):
                    video_latents, audio_latents = latents
                    latents = family.upsample(denoiser, video_latents, device), audio_latents
            with stages(stage.name, note=denoise_note(compiled)), PreviewThread(emit) as preview_thread:
                reporter = StageReporter(number, plan, compiled)
                previews = family.previews(job, stage, colours)
                on_step_end = step_reporter(emit, cancellation, reporter, previews, preview_thread.submit)
                latents = family.denoise(denoiser, job, stage, on_step_end, start=latents)
    video_latents, audio_latents = latents
    # An extension's soundtrack: the earlier clip's audio latents, then the new part's, decoded in one piece.
    audio_latents = family.joined_audio(denoiser, audio_latents)

    # 6. Free the denoiser before decoding: the decoders need the room.
    with stages("free_transformer"):
        decoders = family.decoders(denoiser)
        del denoiser
        free_components(device)  # warm mode: the kept transformer (and upsampler) too

    # 7. Decode the audio first, being small, so the muxer can take video frames as soon as they are decoded.
    with stages("decode_audio"):
        waveform, sample_rate = family.decode_audio(decoders, audio_latents, device)
        free_components(device)  # warm mode: the kept audio decoders leave the GPU to the video decode

    # 8. Decode the video chunk by chunk, streaming each finished chunk of frames into the muxer (and, for a model
    #    with no preview colours, into what learns them), and
    # 9. finish the MP4 (flush, moov atom to the front); video.mp4 appears only when complete, then its poster
    #    (the middle frame, kept as it went by).
    #    An extension's clip is the earlier clip's frames, then the new part's after the overlap (extension.py).
    total_frames = extension.joined_frame_count(job, extension.source_frame_count(job))
    poster = PosterFrame(job.path(jobdir.POSTER_FILE), total_frames)
    provenance = {} if job.file.provenance is None else {MP4_KEY: to_json(job.file.provenance)}
    video_file = job.path(jobdir.VIDEO_FILE)
    with mux.Mp4Writer(video_file, request.fps, waveform, sample_rate, poster=poster, metadata=provenance) as writer:
        with stages("decode_video"):
            on_tile = tile_reporter(emit, cancellation)
            learner = family.colour_learner(decoders, video_latents) if colours is None and colour_store.path else None
            decoded = family.decode_video(decoders, video_latents, device, on_tile, decode_budget_gib)
            for frames in extension.joined_frames(job, learner_feed(decoded, learner)):
                writer.add_frames(frames)
            if learner:
                colour_store.save(learner.fit(colour_store.model, colour_store.vae))
        with stages("mux"):
            writer.finish()
            # The clip's audio latents, kept so that a later job can extend it (a few KB a second).
            extension.keep_audio_latents(job.path(jobdir.AUDIO_LATENTS_FILE), audio_latents)

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


def learner_feed(chunks, learner):
    """The decoded chunks, each shown to the preview colours' learner (where there is one) as it passes."""
    for frames in chunks:
        if learner:
            learner.add(frames)
        yield frames


def resident_note(
    family: Family, job: Job, stage: str, dtype: torch.dtype, precision: str, device: torch.device
) -> str | None:
    """A loading stage's note in warm mode where this runner holds everything it loads, by the exact keys its loaders
    use (files, dtype, precision, the mode's transformer), from an earlier job."""
    if not RESIDENT.enabled:
        return None
    keys = family.resident_keys(job, stage, dtype, precision, device)
    return WEIGHTS_RESIDENT if keys and RESIDENT.holds(keys) else None


def denoise_note(compiled: bool) -> str | None:
    """The denoise stage's note: why its first step is slow, where it is (`compiling.compiles`)."""
    return COMPILE_NOTE if compiled else None


def prompt_cache_for(job: Job, family: Family, budget: CacheBudget) -> tuple[PromptCache | None, str]:
    if job.file.prompt_cache_dir is None:
        return None, ""
    request = job.request
    cache = PromptCache(Path(job.file.prompt_cache_dir), budget)
    key = cache.key(job.spec.id, family.revision(), request.prompt, request.negative_prompt, family.sequence_length())
    return cache, key


def enhanced_prompt_cache_for(job: Job, budget: CacheBudget) -> tuple[PromptCache | None, str]:
    """The prompt cache and the key of the job's prompt as its model's enhancer rewrites it."""
    if job.file.prompt_cache_dir is None:
        return None, ""
    request = job.request
    revision = model_revision(job.model_dir, ENHANCER_TOKENIZER_DIRS)  # the enhancer's and its tokenizer's files
    key = PromptCache.enhanced_key(job.spec.id, revision, request.prompt, request.seed, job.file.enhance_max_tokens)
    return PromptCache(Path(job.file.prompt_cache_dir), budget), key


def colour_store_for(job: Job, family: Family) -> ColourStore:
    directory = job.file.preview_colours_dir
    if directory is None:
        return ColourStore(job.model_dir, None, job.spec.id, "")
    return ColourStore(job.model_dir, Path(directory), job.spec.id, family.latent_revision())


def weight_cache_for(job: Job, budget: CacheBudget) -> WeightCache | None:
    return None if job.file.weight_cache_dir is None else WeightCache(Path(job.file.weight_cache_dir), budget)


def cache_budget_for(job: Job) -> CacheBudget:
    return budget_of(job.file)


def budget_of(options: jobdir.JobFile | jobdir.RunnerOptions) -> CacheBudget:
    """The caches under AVP_CACHE_GB: prompts (capped by AVP_PROMPT_CACHE_MB too), FP8 weights and torch's compile
    cache (one entry: its files refer to each other). From a job's options, or the installation's (an import)."""
    caches = []
    if options.prompt_cache_dir is not None:
        cap = Limit(options.prompt_cache_mb * MIB, f"AVP_PROMPT_CACHE_MB={options.prompt_cache_mb}")
        caches.append(Cache(Path(options.prompt_cache_dir), cap=cap))
    if options.weight_cache_dir is not None:
        caches.append(Cache(Path(options.weight_cache_dir)))
    if options.compile_cache_dir is not None:
        caches.append(Cache(Path(options.compile_cache_dir), whole=True))
    return CacheBudget(caches, Limit(int(options.cache_gb * GIB), f"AVP_CACHE_GB={options.cache_gb:g}"))


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
            if is_disk_full(error):
                raise JobError("disk_full", _disk_full_message(name, error)) from error
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


def _disk_full_message(stage: str, error: BaseException) -> str:
    """What a job that ran out of disk space says: where, and what to do. Its partial files are gone (the MP4 and
    the preview are written under temporary names, removed when a write fails)."""
    filename = getattr(error, "filename", None)
    writing = f" writing {Path(filename).name}" if filename else ""
    return (
        f"The disk ran out of space during {stage}{writing}, so the job stopped and kept no video. Free space on "
        "the data disk (delete finished jobs you no longer need, or set AVP_KEEP_DAYS or AVP_KEEP_GB so that old "
        "jobs' files are removed), then run it again."
    )


def seconds_left(
    step_times: Sequence[float], total: int, first_step_compiles: bool, later: float = 0.0
) -> float | None:
    """The ETA once `len(step_times)` of `total` steps have taken these times, and `later` more steps of this
    stage's cost follow in later stages; None while nothing honest is known.

    The first step is a warm-up (3x a later step uncompiled) or, with compiled blocks, mostly compiling (26-45 s
    against 0.4-5 s a step), so from the second step on the estimate is the mean of the steps after it. After
    the first step alone, its time stands for the rest unless it compiled: then the time left is unknown.
    """
    done = len(step_times)
    left = total - done + later
    if left <= 0:
        return 0.0
    if done >= 2:
        return sum(step_times[1:]) / (done - 1) * left
    if done == 1 and not first_step_compiles:
        return step_times[0] * left
    return None


class StageReporter:
    """Where a denoising stage stands among the job's: its number, its steps, and what the stages after it
    cost in its own steps (a step's cost taken as its video tokens: the transformer's linears dominate)."""

    def __init__(self, number: int, plan: Sequence[DenoiseStage], first_step_compiles: bool) -> None:
        self.number, self.stages, self.first_step_compiles = number, len(plan), first_step_compiles
        stage = plan[number - 1]
        self.name, self.total = stage.name, stage.steps
        area = stage.width * stage.height  # a frame's tokens grow with it
        self.later = sum(later.steps * later.width * later.height / area for later in plan[number:])

    def step(self, step_times: Sequence[float], elapsed: float) -> protocol.Step:
        eta = seconds_left(step_times, self.total, self.first_step_compiles, self.later)
        return protocol.Step(
            step=len(step_times),
            total=self.total,
            elapsed_s=round(elapsed, 3),
            eta_s=None if eta is None else round(eta, 3),
            stage=self.name,
            stage_number=self.number,
            stages=self.stages,
        )


class PreviewThread:
    """Finishes previews beside the denoiser: colouring, JPEG and rename (and, on a GPU, the wait for the step's
    kernels that reading its latents implies) would otherwise stall every step that shows one, every step of a
    fast job's 8+3. One preview at a time: the next waits for the last, so a slow disk slows the denoiser rather
    than piling up frames. A preview that fails (a full disk) raises at the next one or when the stage ends,
    inside the stage, as it did when written in line. Its events come from this thread (the emitter is locked).
    """

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preview")
        self._last: Future | None = None

    def submit(self, work: Callable[[], protocol.Event]) -> None:
        self._wait()
        self._last = self._pool.submit(lambda: self._emit(work()))

    def _wait(self) -> None:
        last, self._last = self._last, None
        if last is not None:
            last.result()  # re-raises what the preview raised

    def __enter__(self) -> PreviewThread:
        return self

    def __exit__(self, failure, *_) -> None:
        try:
            if failure is None:
                self._wait()
        finally:
            # Leaving with an error (a cancel): the preview in hand is not waited for, nor its failure reported.
            self._pool.shutdown(wait=True, cancel_futures=True)


def step_reporter(
    emit: Emit,
    cancellation: Cancellation,
    stage: StageReporter,
    previews,
    run_preview: Callable[[Callable[[], protocol.Event]], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
):
    """The per-step callback of one denoising stage: a `step` event with an ETA (`seconds_left`), a preview every
    few steps (finished by `run_preview`, a PreviewThread's submit in a job; in line by default), then a
    cancellation check.

    Raising from it (Cancelled) leaves the pipeline before it decodes anything.
    """
    if run_preview is None:
        run_preview = lambda work: emit(work())  # noqa: E731
    started = last_end = clock()
    step_times: list[float] = []

    def on_step_end(pipe, index: int, _timestep, tensors: dict) -> dict:
        nonlocal last_end
        now = clock()
        step_times.append(now - last_end)
        last_end = now
        emit(stage.step(step_times, now - started))
        preview = previews.after_step(pipe.scheduler.sigmas, index, tensors["latents"])
        if preview is not None:
            run_preview(preview)
        cancellation.check()
        return {}

    return on_step_end


# The prompt enhancer writes tens of tokens a second: a `token` event at most this often, a cancellation check at each.
TOKEN_EVENT_S = 0.5


def token_reporter(emit: Emit, cancellation: Cancellation, clock: Callable[[], float] = time.monotonic):
    """The prompt enhancer's per-token callback: a `token` event now and then (TOKEN_EVENT_S), then a cancellation
    check (raising from it stops the generation)."""
    last = -math.inf

    def on_token(done: int, total: int) -> None:
        nonlocal last
        now = clock()
        if now - last >= TOKEN_EVENT_S:
            emit(protocol.Token(done=done, total=total))
            last = now
        cancellation.check()

    return on_token


def tile_reporter(emit: Emit, cancellation: Cancellation):
    """The per-tile callback of the tiled decode: a `tile` event, then a cancellation check."""

    def on_tile(done: int, total: int) -> None:
        emit(protocol.Tile(done=done, total=total))
        cancellation.check()

    return on_tile
