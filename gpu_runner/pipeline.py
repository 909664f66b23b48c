"""The staged generation: one job, from prompt to MP4, holding one large model at a time.

Reads top to bottom as DESIGN.md's stage list. Each stage is entered through `Stages`,
which announces it, checks for cancellation, times it, accounts memory at its end and
turns an out-of-memory error into a message naming the stage and the job's size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from diffusers import LTX2Pipeline

from gpu_runner import memory, mux, protocol, tiling
from gpu_runner.cancel import Cancellation
from gpu_runner.job import Job, JobError

Emit = Callable[[protocol.Event], None]


def generate(job: Job, emit: Emit, cancellation: Cancellation, started: float) -> protocol.Result:
    request = job.request
    device = memory.pick_device()
    precision = job.file.precision or job.spec.precision_cuda
    dtype = memory.compute_dtype(device, precision)
    stages = Stages(emit, cancellation, device, job, started)

    # 1. Load the text encoder and its tokenizer, nothing else.
    with stages("load_text_encoder"):
        encoder = LTX2Pipeline.from_pretrained(job.model_dir, dtype=dtype, **dict.fromkeys(DENOISING_COMPONENTS))
        encoder.to(device)

    # 2. Encode the prompt and the negative prompt (the pipeline decides later whether CFG uses it).
    with stages("encode_prompt"):
        prompt_embeds, prompt_mask, negative_embeds, negative_mask = encoder.encode_prompt(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            do_classifier_free_guidance=True,
            max_sequence_length=min(encoder.tokenizer.model_max_length, MAX_PROMPT_TOKENS),
            device=device,
            dtype=dtype,
        )

    # 3. Free the text encoder before the transformer arrives; the memory event proves it.
    with stages("free_text_encoder"):
        del encoder
        memory.release(device)

    # 4. Load the transformer, connectors, VAEs, vocoder and scheduler; audio decoding stays float32.
    with stages("load_transformer"):
        pipe = LTX2Pipeline.from_pretrained(
            job.model_dir,
            dtype={"default": dtype, "audio_vae": torch.float32, "vocoder": torch.float32},
            text_encoder=None,
            tokenizer=None,
        )
        memory.store_transformer(pipe.transformer, precision)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)

    # 5. Denoise video and audio latents together, reporting (and honouring cancellation) per step.
    with stages("denoise"):
        video_latents, audio_latents = pipe(
            prompt_embeds=prompt_embeds,
            prompt_attention_mask=prompt_mask,
            negative_prompt_embeds=negative_embeds,
            negative_prompt_attention_mask=negative_mask,
            width=request.width,
            height=request.height,
            num_frames=request.num_frames,
            frame_rate=request.fps,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            **guidance_settings(job, pipe),
            # A CPU generator draws the same noise on every device: same seed, same clip.
            generator=torch.Generator("cpu").manual_seed(request.seed),
            output_type="latent",
            return_dict=False,
            callback_on_step_end=step_reporter(emit, cancellation, request.steps),
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
    with mux.Mp4Writer(job.path(protocol.VIDEO_FILE), request.fps, waveform, sample_rate) as writer:
        with stages("decode_video"):
            for frames in tiling.decode_tiled(vae.to(device), video_latents, tile_reporter(emit, cancellation)):
                writer.add_frames(frames)
            del vae
            memory.release(device)
        with stages("mux"):
            writer.finish()

    return protocol.Result(
        file=protocol.VIDEO_FILE,
        frames=writer.frames_written,
        fps=request.fps,
        width=request.width,
        height=request.height,
        audio_sample_rate=sample_rate,
        duration_s=round(writer.frames_written / request.fps, 3),
        peak_vram_gib=memory.peak_vram_gib(device),
        timings=stages.timings,
    )


# Everything the denoising half loads; the text-encoding half is loaded without them.
DENOISING_COMPONENTS = ("transformer", "connectors", "vae", "audio_vae", "vocoder", "scheduler")
MAX_PROMPT_TOKENS = 1024  # LTX-2's prompt length; a tokenizer may declare a shorter one


class Stages:
    """Enters stages: cancellation check, `stage` event, timing, `memory` event, OOM translation."""

    def __init__(self, emit: Emit, cancellation: Cancellation, device: torch.device, job: Job, started: float):
        self.emit, self.cancellation, self.device, self.job, self.started = emit, cancellation, device, job, started
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.cancellation.check()
        entered = time.monotonic()
        self.emit(protocol.Stage(name=name, t=round(entered - self.started, 3)))
        try:
            with torch.no_grad():
                yield
        except Exception as error:
            if memory.is_out_of_memory(error):
                raise JobError("out_of_memory", self._out_of_memory_message(name)) from error
            raise
        self.timings[name] = round(time.monotonic() - entered, 3)
        self.emit(memory.snapshot(name, self.device))

    def _out_of_memory_message(self, stage: str) -> str:
        request = self.job.request
        return (
            f"Out of GPU memory during {stage} at {request.width}x{request.height}, {request.num_frames} frames. "
            "Try fewer frames or a smaller size, or stop other programs that hold GPU memory."
        )


def step_reporter(emit: Emit, cancellation: Cancellation, total: int):
    """The per-step callback: a `step` event with an ETA from the mean step time, then a cancellation check.

    Raising from it (Cancelled) leaves the pipeline before it decodes anything.
    """
    started = time.monotonic()

    def on_step_end(_pipe, index: int, _timestep, _tensors) -> dict:
        done = index + 1
        elapsed = time.monotonic() - started
        eta = elapsed / done * (total - done)
        emit(protocol.Step(step=done, total=total, elapsed_s=round(elapsed, 3), eta_s=round(eta, 3)))
        cancellation.check()
        return {}

    return on_step_end


def tile_reporter(emit: Emit, cancellation: Cancellation):
    """The per-tile callback of the tiled decode: a `tile` event, then a cancellation check."""

    def on_tile(done: int, total: int) -> None:
        emit(protocol.Tile(done=done, total=total))
        cancellation.check()

    return on_tile


def guidance_settings(job: Job, pipe: LTX2Pipeline) -> dict:
    """The guidance beyond CFG, per model.

    The demo's two blocks have no STG block to perturb, so it uses CFG alone (two passes
    a step) with the request's scale for audio too. LTX-2 keeps diffusers' recommended
    STG, modality and rescale terms, with the LTX-2.0 settings when its connectors show
    2.0 (one projection shared by both modalities).
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
    if not pipe.connectors.config.per_modality_projections:
        return {"use_cross_timestep": False, "spatio_temporal_guidance_blocks": [29]}
    return {}
