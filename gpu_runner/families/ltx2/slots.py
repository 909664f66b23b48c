"""LTX-2.5's fast mode: diffusers' keyframe-slot pipeline (LTX2DFRPipeline), one call per stage, then its diffusion
decoder.

The recipe is the DFR pipelines' docstrings' (diffusers 0.42.1, pipelines/ltx2/): stage 1 at half width and height
over the distilled sigmas generates the clip and its keyframe slots (single latent frames at the keyframe segments'
borders, `dfr_layout.resolve_canvas`, on a canvas padded to whole segments); the x2 spatial upsampler doubles the
video and each slot; stage 2 re-denoises both at full size over the stage-2 sigmas, its audio held at stage 1's
(`freeze_audio`: the clip keeps stage 1's sound, which stage 2's video follows); the canvas is trimmed to the clip;
the diffusion decoder turns the latents into pixels. A job's conditions (conditioning.py's: a first-frame image,
keyframes, an extension's earlier frames) go to both stages as they go to the condition pipeline's, by latent index
(loading.SlotDenoisingPipeline places a keyframe at its output frame); an extension's audio hold runs in stage 1, whose
audio stage 2 keeps. Stages 1 and 2 step with FlowMatchEulerDiscreteScheduler, as
the DFR docstrings say; the ancestral sampler (LTXEulerAncestralRFScheduler, eta 0.5) belongs to the temporal refine
rounds, which need a temporal latent upsampler that LTX-2.5's published directory does not ship. The IC-LoRA
reference pass needs an IC-LoRA it does not ship either. docs/architecture.md says what is left out and why.
"""

from __future__ import annotations

import dataclasses

import torch
from diffusers.pipelines.ltx2.utils import trim_canvas

from contract.request import DenoiseStage, Request
from gpu_runner.families.base import Latents


@dataclasses.dataclass
class Slots:
    """Stage 1's keyframe slots, carried to stage 2: raw latents (batch, channels, slots, height, width) and the
    output frames they stand at."""

    latents: torch.Tensor
    positions: list[int]


def denoise(
    pipe, request: Request, stage: DenoiseStage, sigmas, start: Latents | None, slots, arguments: dict
) -> tuple[Latents, Slots]:
    """One stage of the slot pipeline: from noise (stage 1), or from the upsampled video and slots with stage 1's
    audio held (stage 2). The video latents stay on the padded canvas between the stages; stage 2's come back
    trimmed to the clip and with stage 1's audio, cut to the clip's length. `arguments`: the job's conditions
    (conditioning.py's, the same for both stages: diffusers resizes them to each stage's size) and the step
    callback."""
    refine = start is not None
    video, audio = start if refine else (None, None)
    embeds = pipe.connectors.placeholder_embeds()
    out = pipe(
        prompt_embeds=embeds["prompt_embeds"],
        prompt_attention_mask=embeds["prompt_attention_mask"],
        width=stage.width,
        height=stage.height,
        num_frames=request.num_frames,
        frame_rate=request.fps,
        sigmas=list(sigmas),
        **(
            {
                "latents": video,
                "audio_latents": audio,
                "freeze_audio": True,
                "keyframes_latents": slots.latents,
                "keyframe_positions": slots.positions,
            }
            if refine
            else {}
        ),
        # A CPU generator draws the same noise on every device: same seed, same clip.
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="latent",
        return_dict=True,
        **arguments,
    )
    slots = Slots(out.keyframes, list(out.keyframe_positions))
    if not refine:
        return (out.frames, out.audio), slots
    frames = trim_canvas(out.frames, request.num_frames, pipe.vae_temporal_compression_ratio)
    return (frames, audio[:, :, : clip_audio_latents(pipe, request)]), slots


def clip_audio_latents(pipe, request: Request) -> int:
    """The audio latents of the clip's own length (the canvas's padding has some past it)."""
    per_second = pipe.audio_sampling_rate / pipe.audio_hop_length / pipe.audio_vae_temporal_compression_ratio
    return round(request.num_frames / request.fps * per_second)


def upsampled(slots: Slots, upsample) -> Slots:
    """Each slot through the spatial upsampler on its own: a slot is one latent frame, not a clip's next frame."""
    frames = [upsample(slots.latents[:, :, index : index + 1]) for index in range(slots.latents.shape[2])]
    return Slots(torch.cat(frames, dim=2), slots.positions)
