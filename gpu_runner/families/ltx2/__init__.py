"""The LTX-2 family: Gemma-3 (2.5: Gemma-4) text encoder and connectors, the audio-video DiT, video and audio VAEs,
vocoder; LTX-2.5's fast mode runs its keyframe-slot pipeline and diffusion decoder (slots.py).

The demo model is this family at a tiny size; what differs between them (its guidance) follows
from the model's own configs, not from its name.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import torch
from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES
from torch import nn

from contract.cost import (
    PeakPrediction,
    at_size_of,
    denoised_frames,
    latent_shape,
    plan_decode_tiles,
    predict_job_peak,
    vae_width,
    video_tokens,
)
from contract.library import DURATION_HEAD, PROMPT_ENHANCER
from contract.request import (
    DenoiseStage,
    Request,
    denoise_stages,
    keyframes_least_frames,
    max_frames_for_fps,
    shortest_clip,
)
from gpu_runner import lora, memory
from gpu_runner.families.base import Context, Family, Latents, OnStepEnd, OnTile, OnToken
from gpu_runner.families.ltx2 import duration, enhance, slots, tiling
from gpu_runner.families.ltx2.conditioning import AudioHold, audio_hold, image_conditions, is_conditioned
from gpu_runner.families.ltx2.guidance import share_stg_prefix
from gpu_runner.families.ltx2.loading import (
    DenoisingPipeline,
    DiffusionDecodingPipeline,
    UpsamplingPipeline,
    place_denoiser,
)
from gpu_runner.families.ltx2.neighborhood import use_windowed_attention
from gpu_runner.families.ltx2.preview import PreviewWriter
from gpu_runner.families.ltx2.text import PrecomputedConnectors, encode
from gpu_runner.families.ltx2.vocoding import vocode
from gpu_runner.job import Job
from gpu_runner.preview_colours import ColourLearner, ColourMap

# LTX-2.0's guidance beyond diffusers' defaults (which follow 2.3): no cross timestep, STG at block 29.
LTX2_0_GUIDANCE = {"use_cross_timestep": False, "spatio_temporal_guidance_blocks": [29]}
# 2.3's STG block, diffusers' default, spelled out for the STG pass to share the blocks before it.
LTX2_3_GUIDANCE = {"spatio_temporal_guidance_blocks": [28]}
# No guidance: one transformer pass a step. All six scales said outright: the audio ones, left to diffusers'
# defaults, would add CFG, STG and modality passes for the audio (2-3x the passes).
NO_GUIDANCE = {
    "guidance_scale": 1.0,
    "audio_guidance_scale": 1.0,
    "stg_scale": 0.0,
    "audio_stg_scale": 0.0,
    "modality_scale": 1.0,
    "audio_modality_scale": 1.0,
    "spatio_temporal_guidance_blocks": None,
}
# Which groups of LoRAs (gpu_runner/lora.py) each denoising stage applies: the job's always; a dev model's distilled
# LoRA, standing in for a distilled transformer in fast mode, in stage 2 (the refine) alone.
DISTILLED_GROUP = "distilled"
LORA_GROUPS = {"denoise": ("job",), "refine": ("job", DISTILLED_GROUP)}
# Fast mode's fixed schedule, diffusers' own (contract/request.py's FAST_STEPS counts them for the web process).
FAST_SIGMAS = {"denoise": DISTILLED_SIGMA_VALUES, "refine": STAGE_2_DISTILLED_SIGMA_VALUES}
DIFFUSION_DECODE_CHUNK = 16  # frames the diffusion decoder's pixels go to the muxer in


@dataclasses.dataclass
class Denoiser:
    """What load_denoiser places: the pipeline (transformer on the GPU, decoders on the CPU) and, in fast mode,
    the latent upsampler (on the CPU until its stage)."""

    pipe: nn.Module
    upsampler: nn.Module | None = None
    conditions: dict = dataclasses.field(default_factory=dict)  # the pipeline's `conditions`, read once
    hold: AudioHold | None = None  # an extension's audio hold
    slots: slots.Slots | None = None  # LTX-2.5's fast mode: stage 1's keyframe slots, for stage 2
    diffusion_seed: int | None = None  # LTX-2.5's fast mode: the diffusion decoder's noise seed (the job's)


def doubled(upsampling: UpsamplingPipeline, video: torch.Tensor) -> torch.Tensor:
    """Video latents (denormalised, as the denoising pipelines give them) at twice the height and width."""
    height, width = video.shape[-2:]
    scale = upsampling.vae_spatial_compression_ratio
    return upsampling(
        latents=video,
        latents_normalized=False,
        height=height * scale,
        width=width * scale,
        output_type="latent",
        return_dict=False,
    )[0]


def audio_latents_per_second(pipe) -> float:
    """The audio latents a second of clip has, as diffusers' pipeline counts them."""
    return pipe.audio_sampling_rate / pipe.audio_hop_length / pipe.audio_vae_temporal_compression_ratio


class Ltx2(Family):
    """LTX-2 (2.0 and 2.3) over a source of its components: a Diffusers directory, or random weights."""

    modes = frozenset({"text", "image"})

    def __init__(self, source) -> None:
        self.source = source  # loading.DiffusersDirectory, or anything with its methods

    def revision(self) -> str:
        return self.source.revision()

    def sequence_length(self) -> int:
        return self.source.sequence_length()

    def predict_peak(self, precision: str, request: Request) -> PeakPrediction:
        config = self.source.transformer_config()
        inner_width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
        vae = vae_width(self.source.vae_config())
        enhancer = self.source.weights_gib(PROMPT_ENHANCER)  # counted only where the request asks for it
        slotted = getattr(self.source, "slot_pipeline", False)
        return predict_job_peak(
            self.source.weights_gib, inner_width, vae, precision, request, enhancer_gib=enhancer, slot_pipeline=slotted
        )

    def _slot_pipeline(self, request: Request) -> bool:
        """Whether the request runs LTX-2.5's keyframe-slot pipeline and diffusion decoder (its fast mode)."""
        return request.mode == "fast" and getattr(self.source, "slot_pipeline", False)

    def load_text_side(self, dtype: torch.dtype, device: torch.device):
        return self.source.load_text_side(dtype, device)

    def resident_keys(
        self, job: Job, stage: str, dtype: torch.dtype, precision: str, device: torch.device
    ) -> tuple[tuple, ...]:
        if not hasattr(self.source, "denoiser_keys"):  # a source that keeps nothing (bench/gpu_smoke.py's random one)
            return ()
        if stage == "load_text_encoder":
            return (self.source.text_key(dtype, device),)
        if self.lora_files(job):  # its transformer loads afresh, to carry them
            return ()
        return self.source.denoiser_keys(dtype, precision, device, job.request.mode == "fast")

    def encode(self, text, request: Request, device: torch.device, dtype: torch.dtype) -> Context:
        return encode(text, request.prompt, request.negative_prompt, self.sequence_length(), device, dtype)

    def enhance_prompt(self, job: Job, device: torch.device, on_token: OnToken) -> str:
        """LTX-2.5's prompt_enhancer/ (enhance.py), on `device` until it is done, writing at most
        AVP_ENHANCE_MAX_TOKENS tokens."""
        request = job.request
        return enhance.enhance_prompt(
            job.model_dir / PROMPT_ENHANCER,
            request.prompt,
            device=device,
            seed=request.seed,
            on_token=on_token,
            max_new_tokens=job.file.enhance_max_tokens,
        )

    def predict_num_frames(self, job: Job, context: Context, device: torch.device) -> int:
        """LTX-2.5's duration_head/ (duration.py) on the positive prompt's row of the context (the last: rows are
        [negative, positive]), bounded by the model's shortest clip (or the shortest that holds the job's keyframes
        apart, where longer) and its longest at the job's frame rate."""
        head = duration.load_duration_head(job.model_dir / DURATION_HEAD, device)
        limits, fps = job.spec.constraints, job.request.fps
        try:
            return duration.predict_num_frames(
                head,
                context["video"][-1:],
                context["audio"][-1:],
                frame_rate=fps,
                min_frames=max(shortest_clip(limits, job.request), keyframes_least_frames(limits, job.request)),
                max_frames=max_frames_for_fps(limits, fps),
                frame_step=limits.frame_step,
            )
        finally:
            del head
            memory.release(device)

    def load_denoiser(self, job: Job, context: Context, device: torch.device, dtype: torch.dtype, precision: str):
        """The transformer (its big linears in FP8: from the weight cache straight onto the GPU, or cast on the
        CPU before it moves) on the GPU, VAEs, vocoder and scheduler on the CPU until their stages."""
        conditioned = is_conditioned(job)
        fast = job.request.mode == "fast"
        connectors = PrecomputedConnectors(context)
        keep = not self.lora_files(job)  # a transformer wrapped with LoRAs is not kept resident (warm mode)
        pipe = self.source.load_denoiser(dtype, precision, connectors, device, conditioned, fast, keep)
        self.attach_loras(pipe.transformer, job, dtype, fast)
        compile_cache = None if job.file.compile_cache_dir is None else Path(job.file.compile_cache_dir)
        # LTX-2.5's canvas and keyframe slots (up to a third more tokens than the clip's) and appended keyframes
        frames = denoised_frames(job.request, self._slot_pipeline(job.request))
        tokens = video_tokens(msgspec.structs.replace(job.request, num_frames=frames))
        place_denoiser(
            pipe, device, tokens, compile_cache, attention=job.file.attention, compile_dynamic=job.file.compile_dynamic
        )
        first_stage = denoise_stages(job.request)[0]  # fast mode's stages have no STG
        share_stg_prefix(pipe.transformer, self.guidance(first_stage)["spatio_temporal_guidance_blocks"])
        upsampler = self.source.load_upsampler(dtype) if fast else None
        hold = audio_hold(job, audio_latents_per_second(pipe)) if conditioned else None
        seed = job.request.seed if self._slot_pipeline(job.request) else None
        return Denoiser(pipe, upsampler, image_conditions(job), hold, diffusion_seed=seed)

    def attach_loras(self, transformer: nn.Module, job: Job, dtype: torch.dtype, fast: bool) -> None:
        """The job's LoRAs as a low-rank path beside the (FP8) weights, for every stage (gpu_runner/lora.py; one at
        scale 0 is left out, so it is exactly the model); in fast mode on a dev model with a distilled LoRA and no
        distilled transformer, that LoRA too, for stage 2 alone (`denoise` switches it on)."""
        chosen = [(lora.read_lora(Path(item.path), item.name), item.scale) for item in job.file.loras if item.scale]
        if chosen:
            lora.attach(transformer, chosen, "job", dtype)
        distilled = getattr(self.source, "fast_lora", lambda: None)() if fast else None
        if distilled is not None:
            lora.attach(transformer, [(lora.read_lora(distilled), 1.0)], DISTILLED_GROUP, dtype)
            lora.activate(transformer, LORA_GROUPS["denoise"])

    def lora_files(self, job: Job) -> list[Path]:
        distilled = getattr(self.source, "fast_lora", lambda: None)() if job.request.mode == "fast" else None
        return super().lora_files(job) + ([] if distilled is None else [distilled])

    def latent_revision(self) -> str:
        return self.source.latent_revision()

    def previews(self, job: Job, stage: DenoiseStage, colours: ColourMap | None) -> PreviewWriter:
        return PreviewWriter(job.path, latent_shape(at_size_of(job.request, stage)), stage.steps, colours)

    def colour_learner(self, decoders, latents: torch.Tensor) -> ColourLearner:
        """The denoiser's latents are normalised (the pipeline's latent output is not): the map is fitted on them."""
        vae = decoders["vae"]
        scaling = vae.config.scaling_factor
        normalised = DenoisingPipeline._normalize_latents(latents, vae.latents_mean, vae.latents_std, scaling)
        cells = normalised[0].permute(1, 2, 3, 0)  # (F, H, W, C), as a packed token sequence is laid out
        return ColourLearner(cells, vae.temporal_compression_ratio, vae.spatial_compression_ratio)

    def denoise(
        self, denoiser: Denoiser, job: Job, stage: DenoiseStage, on_step_end: OnStepEnd, start: Latents | None = None
    ) -> Latents:
        """One denoising stage: from noise, or (fast mode's refine) from `start` noised to the stage's first sigma."""
        request = job.request
        lora.activate(denoiser.pipe.transformer, LORA_GROUPS[stage.name])
        fixed = FAST_SIGMAS[stage.name] if request.mode == "fast" else None
        if self._slot_pipeline(job.request):
            # The refine holds stage 1's audio whole (freeze_audio), so an extension's hold, which noises its part to
            # each step's sigma, is stage 1's alone.
            callback = self._step_callback(denoiser.hold if start is None else None, on_step_end)
            latents, denoiser.slots = slots.denoise(
                denoiser.pipe, request, stage, fixed, start, denoiser.slots, denoiser.conditions | callback
            )
            return latents
        video, audio = start if start is not None else (None, None)
        return denoiser.pipe(
            **denoiser.pipe.connectors.placeholder_embeds(),
            width=stage.width,
            height=stage.height,
            num_frames=request.num_frames,
            frame_rate=request.fps,
            num_inference_steps=stage.steps,
            **({"sigmas": list(fixed)} if fixed else {}),
            **({"latents": video, "audio_latents": audio, "noise_scale": fixed[0]} if start is not None else {}),
            **self.guidance(stage),
            **denoiser.conditions,
            # A CPU generator draws the same noise on every device: same seed, same clip.
            generator=torch.Generator("cpu").manual_seed(request.seed),
            output_type="latent",
            return_dict=False,
            **self._step_callback(denoiser.hold, on_step_end),
        )

    @staticmethod
    def _step_callback(hold: AudioHold | None, on_step_end: OnStepEnd) -> dict:
        if hold is None:
            return {"callback_on_step_end": on_step_end}
        return {
            "callback_on_step_end": hold.wrap(on_step_end),
            "callback_on_step_end_tensor_inputs": ["latents", "audio_latents"],
        }

    def joined_audio(self, denoiser: Denoiser, audio_latents: torch.Tensor) -> torch.Tensor:
        """An extension's whole soundtrack in latents (the earlier clip's, then the new part's); else as given."""
        return audio_latents if denoiser.hold is None else denoiser.hold.joined(audio_latents)

    def upsample(self, denoiser: Denoiser, latents: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Fast mode: stage 1's video latents (and LTX-2.5's keyframe slots) x2 in height and width (diffusers'
        upsample pipeline), the upsampler on the GPU for this stage only."""
        upsampler, denoiser.upsampler = denoiser.upsampler.to(device), None
        upsampling = UpsamplingPipeline(vae=denoiser.pipe.vae, latent_upsampler=upsampler)
        upsampled = doubled(upsampling, latents)
        if denoiser.slots is not None:
            denoiser.slots = slots.upsampled(denoiser.slots, functools.partial(doubled, upsampling))
        del upsampling, upsampler
        memory.release(device)
        return upsampled

    def decoders(self, denoiser: Denoiser) -> dict:
        # Each decode stage pops what it uses, so nothing keeps a decoder alive past its stage.
        pipe = denoiser.pipe
        decoders = {"vae": pipe.vae, "audio_vae": pipe.audio_vae, "vocoder": pipe.vocoder}
        return decoders | ({"diffusion_seed": denoiser.diffusion_seed} if denoiser.diffusion_seed is not None else {})

    def decode_audio(self, decoders, latents: torch.Tensor, device: torch.device) -> tuple[np.ndarray, int]:
        """The mel spectrogram from the audio VAE, then the vocoder's waveform (vocoding.py), in float32."""
        audio_vae, vocoder = decoders.pop("audio_vae").to(device), decoders.pop("vocoder").to(device)
        waveform = vocode(vocoder, audio_vae.decode(latents.to(torch.float32), return_dict=False)[0])
        waveform = waveform[0].float().cpu().numpy()
        sample_rate = vocoder.config.output_sampling_rate  # not pipe.audio_sampling_rate: that is the mel rate
        del audio_vae, vocoder
        memory.release(device)
        return waveform, sample_rate

    def decode_video(
        self, decoders, latents: torch.Tensor, device: torch.device, on_tile: OnTile, budget_gib: float
    ) -> Iterator[np.ndarray]:
        """The video in the largest tiles that fit `budget_gib` (contract/cost.py plans them, families/ltx2/tiling.py
        decodes them), the VAE freed once the last chunk is out; LTX-2.5's fast mode decodes with its diffusion decoder
        instead (`diffusion_decode`)."""
        if "diffusion_seed" in decoders:
            yield from self.diffusion_decode(decoders, latents, device, on_tile)
            return
        vae = decoders.pop("vae").to(device)
        tiles = plan_decode_tiles(tuple(latents.shape[2:]), tiling.decoder_cost(vae), budget_gib)
        yield from tiling.decode_tiled(vae, latents, on_tile, **dataclasses.asdict(tiles))
        del vae
        memory.release(device)

    def diffusion_decode(
        self, decoders, latents: torch.Tensor, device: torch.device, on_tile: OnTile
    ) -> Iterator[np.ndarray]:
        """LTX-2.5's diffusion decoder (diffusers' LTX2VideoDiffusionDecodePipeline: one x0 step of a small diffusion
        model from noise, conditioned on the latents), read from disk now that the transformer is gone, in diffusers'
        own tiles where the clip exceeds its reference tile (768 px, 80 frames: what bounds its memory), freed once its
        pixels are out; they go to the muxer in chunks. One `tile` event when it is done."""
        # The latents are already denormalised, so the VAE goes unused; it was loaded in the job's compute dtype.
        dtype = decoders.pop("vae").dtype
        seed = decoders.pop("diffusion_seed")
        decoder = self.source.load_diffusion_decoder(dtype).to(device)
        decoder.enable_tiling()
        attention = use_windowed_attention(decoder)
        pipe = DiffusionDecodingPipeline(diffusion_decoder=decoder, scheduler=None)
        pixels = pipe(
            latents=latents,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="pt",  # (batch, frames, 3, height, width) in [0, 1]
            denormalize=False,
            return_dict=False,
        )[0][0]
        pixels = pixels.cpu()  # the muxer's chunks come from here: the card is free for what follows
        attention.release()
        del pipe, decoder
        memory.release(device)
        on_tile(1, 1)
        for start in range(0, pixels.shape[0], DIFFUSION_DECODE_CHUNK):
            chunk = pixels[start : start + DIFFUSION_DECODE_CHUNK].permute(0, 2, 3, 1)
            yield (chunk.float() * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()

    def guidance(self, stage: DenoiseStage) -> dict:
        """A stage's guidance, from its scale and the model's own configs.

        Scale 1 (fast mode, distilled models) is no guidance at all: NO_GUIDANCE. Otherwise LTX-2 keeps
        diffusers' recommended STG, modality and rescale terms, with the LTX-2.0
        settings when its connectors show 2.0 (one projection shared by both modalities). The STG
        pass starts at its first STG block from the positive CFG row's states there (guidance.py).
        A transformer too shallow to have that STG block (the demo's 6 blocks) uses CFG alone
        (two passes a step) with the request's scale for audio too.
        """
        if stage.guidance_scale <= 1.0:
            return dict(NO_GUIDANCE)
        settings = LTX2_0_GUIDANCE if self.source.is_ltx2_0() else LTX2_3_GUIDANCE
        if max(settings["spatio_temporal_guidance_blocks"]) < int(self.source.transformer_config()["num_layers"]):
            return {"guidance_scale": stage.guidance_scale, **settings}
        return {
            "guidance_scale": stage.guidance_scale,
            "audio_guidance_scale": stage.guidance_scale,
            "stg_scale": 0.0,
            "audio_stg_scale": 0.0,
            "modality_scale": 1.0,
            "audio_modality_scale": 1.0,
            "spatio_temporal_guidance_blocks": None,
        }
