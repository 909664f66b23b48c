"""Train the demo model on the synthetic world, component by component.

    python -m gpu_runner.demo.train STAGE --run-dir DIR [--seconds S] [--steps N] [--device cuda:0]

Stages: `video_vae`, `audio_vae` and `vocoder` learn from the world directly and are
independent (they may run at once on separate GPUs); `transformer` (with the text
connectors) learns LTX-2's flow-matching objective on the latents of the two trained VAEs,
conditioned on the frozen tiny Gemma-3. Fast (two-stage) generation adds two more, after
those: `latent_upsampler` learns the x2 spatial latent upsampling between the two stages from
world clips rendered at both sizes, and `distill` teaches a copy of the transformer to reach
the guided transformer's results in the distilled 8 + 3 sigmas without guidance. `export`
writes the Diffusers directory, and `import --source DIR` turns an exported directory back
into a run to train on from.

Every stage is reproducible from `--seed` (step k's batch is drawn from seed + k, the model
from seed) and resumable: it checkpoints to DIR/<stage>.pt and appends its losses to
DIR/<stage>.jsonl, so a run cut off by a time limit goes on where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy
import torch
import torch.nn.functional as F
from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES as STAGE_1_SIGMAS
from diffusers.pipelines.ltx2.utils import STAGE_2_DISTILLED_SIGMA_VALUES as STAGE_2_SIGMAS
from torch import nn

from gpu_runner.demo import model as demo_model
from gpu_runner.demo import world

STAGES = ("video_vae", "audio_vae", "vocoder", "transformer", "latent_upsampler", "distill")
# What fast mode adds to the pipeline's components: saved beside them in their own directories.
EXTRA_COMPONENTS = ("latent_upsampler", "transformer_distilled")
MEL_RATE = 16000  # the audio VAE's mel spectrogram: LTX-2's 16 kHz, hop 160 (100 frames a second)
MEL_HOP = 160
MEL_FFT = 1024
MEL_FLOOR = 1e-5
LOG_MEL_FLOOR = math.log(MEL_FLOOR)  # what silence reads as
AUDIO_LATENT_STEP = 4  # mel frames per audio latent frame
FPS = 24.0
# (width, height, frames) the model sees; the default 256x160x25 most often.
SHAPES = ((256, 160, 25), (256, 160, 25), (256, 160, 33), (160, 256, 25), (224, 224, 17), (320, 192, 17))
# Fast mode's full-size shapes (its sides are multiples of 64; stage 1 runs at half of each side),
# the default 320x192x25 most often.
FAST_SHAPES = (
    (320, 192, 25),
    (320, 192, 25),
    (320, 192, 33),
    (192, 320, 25),
    (256, 256, 17),
    (384, 256, 25),
    (512, 320, 17),
)
TEACHER_GUIDANCE = 3.0  # the demo's default guidance scale: its quality path
TEACHER_STEPS = 16  # of the dev schedule, twice the demo's default: the teacher's results are its best
LATENT_NOISE = 0.05
LATENT_PENALTY = 1e-4
STAT_CLIPS = 128  # the video VAE's latent statistics: 8 batches of 16 default-size clips
STAT_BATCH = 16
UNCONDITIONED = 0.1  # share of captions dropped to "" so classifier-free guidance has something to contrast


@dataclass(frozen=True)
class Options:
    """Command-line choices that size a run (a CPU smoke test makes them tiny)."""

    batch: int | None = None  # clips per step at 25 frames; None: the stage's own
    pool: int | None = None  # transformer, distill: clips per shape prepared up front; None: the stage's own
    stat_clips: int | None = None  # video_vae: clips its latent statistics are measured on; None: STAT_CLIPS
    teacher_steps: int | None = None  # distill: the teacher's dev-schedule steps; None: TEACHER_STEPS
    shapes: int | None = None  # clip shapes trained on: the first this many of each stage's list; None: all


@dataclass(frozen=True)
class Hyper:
    batch: int
    learning_rate: float
    warmup: int = 200
    betas: tuple[float, float] = (0.9, 0.99)
    ema_decay: float = 0.999  # of the exported weights' moving average; 0 exports the live weights
    pool: int = 0  # clips per shape prepared up front, where the stage does


HYPER = {
    "video_vae": Hyper(batch=16, learning_rate=8e-4),
    "audio_vae": Hyper(batch=64, learning_rate=4e-4),
    # The first run (betas 0.9, exporting the moving average) made every sound ~40 dB too quiet;
    # HiFi-GAN's beta 0.8 with the live weights exported reproduces the world's levels.
    "vocoder": Hyper(batch=48, learning_rate=4e-4, betas=(0.8, 0.99), ema_decay=0.0),
    "transformer": Hyper(batch=128, learning_rate=3e-4, warmup=300, pool=2560),
    # These two train for a few hundred steps: a slow moving average would still be mostly their start.
    "latent_upsampler": Hyper(batch=32, learning_rate=1e-3, warmup=50, ema_decay=0.99),
    "distill": Hyper(batch=64, learning_rate=1e-4, warmup=50, ema_decay=0.99, pool=512),
}


# -- the world as the model sees it ------------------------------------------------------------


@functools.cache  # the same filters every step
def mel_filterbank(bins: int, fft: int, rate: int) -> torch.Tensor:
    """Triangular filters evenly spaced on the HTK mel scale, 0 Hz to Nyquist: (bins, fft // 2 + 1)."""

    def to_mel(hz):
        return 2595.0 * torch.log10(1.0 + hz / 700.0)

    edges_mel = torch.linspace(0.0, float(to_mel(torch.tensor(rate / 2))), bins + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    freqs = torch.linspace(0, rate / 2, fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def log_mel(waveform: torch.Tensor) -> torch.Tensor:
    """(B, channels, samples) at 16 kHz -> (B, channels, samples // hop, mel bins), causal frames.

    Each frame ends at its hop, so frame i holds sound up to (i + 1) * 10 ms and a click is
    never heard before it happens.
    """
    batch, channels, samples = waveform.shape
    signal = F.pad(waveform.reshape(batch * channels, samples), (MEL_FFT - MEL_HOP, 0))
    window = torch.hann_window(MEL_FFT, device=waveform.device)
    spectrum = torch.stft(signal, MEL_FFT, MEL_HOP, window=window, center=False, return_complex=True).abs()
    filters = mel_filterbank(demo_model.MEL_BINS, MEL_FFT, MEL_RATE).to(waveform.device)
    mel = torch.log(torch.clamp(filters @ spectrum, min=MEL_FLOOR))
    return mel.reshape(batch, channels, demo_model.MEL_BINS, -1).transpose(2, 3)[:, :, : samples // MEL_HOP]


def audio_latent_frames(seconds: float) -> int:
    """The pipeline's audio length for a clip: 25 latent frames a second, rounded."""
    return round(seconds * MEL_RATE / MEL_HOP / AUDIO_LATENT_STEP)


class Batches:
    """Step k's batch is drawn from seed + k: the same run sees the same data, resumed or not.

    `shape_count` keeps the first that many of a list of clip shapes (the default comes first); None keeps them all.
    """

    def __init__(self, seed: int, device: torch.device, shape_count: int | None = None) -> None:
        self.seed = seed
        self.device = device
        self.shape_count = shape_count

    def scenes(self, step: int, count: int) -> tuple[list[world.Scene], random.Random]:
        draw = random.Random(self.seed * 1_000_003 + step)
        return world.sample_scenes(count, seed=draw.randrange(2**31)), draw

    def shapes(self, shapes: tuple[tuple[int, int, int], ...] = SHAPES) -> tuple[tuple[int, int, int], ...]:
        """The clip shapes of `shapes` this run trains on."""
        return shapes[: self.shape_count]

    def shape(self, step: int, shapes: tuple[tuple[int, int, int], ...] = SHAPES) -> tuple[int, int, int]:
        return random.Random(self.seed * 7919 + step).choice(self.shapes(shapes))

    def video(self, scenes, width: int, height: int, frames: int) -> torch.Tensor:
        clip = world.render_video(scenes, width=width, height=height, frames=frames, fps=FPS, device=self.device)
        return clip * 2.0 - 1.0  # the VAE's range

    def mel(self, scenes, latent_frames: int) -> torch.Tensor:
        seconds = latent_frames * AUDIO_LATENT_STEP * MEL_HOP / MEL_RATE
        return log_mel(world.render_audio(scenes, seconds=seconds, sample_rate=MEL_RATE, device=self.device))

    def waveform(self, scenes, mel_frames: int) -> torch.Tensor:
        seconds = mel_frames * MEL_HOP / MEL_RATE
        return world.render_audio(scenes, seconds=seconds, sample_rate=demo_model.AUDIO_RATE, device=self.device)


# -- losses ---------------------------------------------------------------------------------


def object_weighted_l1(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 with the object's pixels weighted up: it covers a few percent of a frame but is the point."""
    background = target.flatten(2).median(dim=2).values[:, :, None, None, None]
    weight = 1.0 + 9.0 * ((target - background).abs().amax(dim=1, keepdim=True) > 0.1).float()
    return ((output - target).abs() * weight).mean()


def encode_for_training(posterior) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent the decoder learns from, and a penalty that keeps latents near unit scale.

    The posterior's mean plus a little noise, not a posterior sample: at initialisation the
    posterior's spread is ~1, which buries the encoding and teaches the decoder to ignore it
    (a first run learned a grey blur in place of coloured objects). The small noise keeps the
    decoder tolerant of the denoiser's imperfect latents.
    """
    mean = posterior.mode()
    return mean + LATENT_NOISE * torch.randn_like(mean), mean.square().mean()


def spectral_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT loss (log magnitude and spectral convergence), short windows for clicks.

    The log floor sits at -66 dBFS rather than the usual 1e-5: below it a first run found
    the loss cheapest with near-silence everywhere, since a pure tone leaves most bins empty.
    """
    total = output.new_zeros(())
    output, target = output.flatten(0, 1).float(), target.flatten(0, 1).float()
    for fft, hop in ((256, 64), (512, 128), (1024, 256), (2048, 512)):
        window = torch.hann_window(fft, device=output.device)
        spec_out = torch.stft(output, fft, hop, window=window, return_complex=True).abs() + 1e-2
        spec_target = torch.stft(target, fft, hop, window=window, return_complex=True).abs() + 1e-2
        convergence = torch.linalg.norm(spec_target - spec_out) / torch.linalg.norm(spec_target)
        total = total + convergence + (spec_out.log() - spec_target.log()).abs().mean()
    return total / 4


# -- one training loop for every stage ------------------------------------------------------------


class Stage:
    """A model being trained, its optimiser and how one step's loss is computed."""

    name: str
    trained: tuple[str, ...]  # the pipeline components this stage trains

    def __init__(self, components: dict, batches: Batches, device: torch.device, options: Options) -> None:
        self.components = components
        self.batches = batches
        self.device = device
        self.options = options
        self.batch = options.batch or HYPER[self.name].batch
        self.pool = options.pool or HYPER[self.name].pool

    def clips(self, frames: int) -> int:
        """Clips per batch at this length: about as many frames as the batch at 25."""
        return max(1, self.batch * 25 // frames)

    def trainable(self) -> list[nn.Module]:
        return [self.components[name] for name in self.trained]

    def loss(self, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def finish(self) -> None:
        """Work after the last step (latent statistics, say)."""


class VideoVAE(Stage):
    name = "video_vae"
    trained = ("vae",)

    def loss(self, step):
        vae = self.components["vae"]
        width, height, frames = self.batches.shape(step)
        scenes, _ = self.batches.scenes(step, self.clips(frames))
        clip = self.batches.video(scenes, width, height, frames)
        latent, size = encode_for_training(vae.encode(clip).latent_dist)
        output = vae.decode(latent).sample
        reconstruction = object_weighted_l1(output, clip)
        return {"loss": reconstruction + LATENT_PENALTY * size, "l1": reconstruction, "latent_size": size}

    def finish(self):
        vae = self.components["vae"]
        total = self.options.stat_clips or STAT_CLIPS
        counts = [min(STAT_BATCH, total - start) for start in range(0, total, STAT_BATCH)]
        latents = [
            vae.encode(self.batches.video(*self._eval_clip(step, count))).latent_dist.mode()
            for step, count in enumerate(counts)
        ]
        stacked = torch.cat(latents).transpose(0, 1).flatten(1)
        vae.latents_mean.copy_(stacked.mean(1))
        vae.latents_std.copy_(stacked.std(1))

    def _eval_clip(self, step, count):
        scenes, _ = self.batches.scenes(10**9 + step, count)
        return scenes, 256, 160, 25


class AudioVAE(Stage):
    name = "audio_vae"
    trained = ("audio_vae",)

    def _mel(self, step):
        scenes, draw = self.batches.scenes(step, self.batch)
        return self.batches.mel(scenes, draw.choice((18, 26, 34, 50)))

    def loss(self, step):
        audio_vae = self.components["audio_vae"]
        mel = self._mel(step)
        latent, size = encode_for_training(audio_vae.encode(mel).latent_dist)
        output = audio_vae.decode(latent).sample
        reconstruction = (output - mel[:, :, : output.shape[2]]).abs().mean()
        return {"loss": reconstruction + LATENT_PENALTY * size, "l1": reconstruction, "latent_size": size}

    def finish(self):
        from diffusers import LTX2Pipeline

        audio_vae = self.components["audio_vae"]
        packed = [
            LTX2Pipeline._pack_audio_latents(audio_vae.encode(self._mel(10**9 + step)).latent_dist.mode()).flatten(0, 1)
            for step in range(8)
        ]
        stacked = torch.cat(packed)
        audio_vae.latents_mean.copy_(stacked.mean(0))
        audio_vae.latents_std.copy_(stacked.std(0))


class Vocoder(Stage):
    name = "vocoder"
    trained = ("vocoder",)

    def loss(self, step):
        scenes, draw = self.batches.scenes(step, self.batch)
        mel_frames = draw.choice((64, 100, 128))
        mel = self.batches.mel(scenes, mel_frames // AUDIO_LATENT_STEP)
        mel = mel + 0.1 * torch.randn_like(mel)  # it will hear decoded mels, not exact ones
        output = self.components["vocoder"](mel)
        target = self.batches.waveform(scenes, mel.shape[2])[..., : output.shape[-1]]
        spectral = spectral_loss(output, target)
        return {"loss": spectral, "stft": spectral}


@dataclass
class Pool:
    """Clips of one shape encoded once: the transformer stage revisits them with fresh noise,
    noise levels and caption wordings, instead of re-rendering and re-encoding every step."""

    scenes: list[world.Scene]
    video: torch.Tensor
    audio: torch.Tensor
    audio_frames: int


class Denoiser(Stage):
    """A stage that trains a transformer through the pipeline's own pieces: its prompt encoding, its latent
    packing and normalisation, and the transformer call it makes."""

    frozen: tuple[str, ...] = ("vae", "audio_vae", "text_encoder")

    def __init__(self, components, batches, device, options):
        super().__init__(components, batches, device, options)
        from diffusers import LTX2Pipeline

        self.pipeline = LTX2Pipeline(**pipeline_components(components))
        for frozen in self.frozen:
            components[frozen].requires_grad_(False).eval()

    def pack(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Denormalised (B, C, F, H, W) video and (B, C, L, M) audio latents as the transformer reads them."""
        pipe = self.pipeline
        video = pipe._pack_latents(pipe._normalize_latents(video, pipe.vae.latents_mean, pipe.vae.latents_std))
        audio = pipe._pack_audio_latents(audio)
        audio = pipe._normalize_audio_latents(audio, pipe.audio_vae.latents_mean, pipe.audio_vae.latents_std)
        return video.float(), audio.float()

    def context(self, captions: list[str]):
        pipe = self.pipeline
        with torch.no_grad():
            embeds, mask, _, _ = pipe.encode_prompt(
                captions,
                do_classifier_free_guidance=False,
                max_sequence_length=demo_model.PROMPT_TOKENS,
                device=self.device,
            )
        return pipe.connectors(embeds, mask, padding_side=pipe.tokenizer.padding_side)

    def velocity(self, transformer, video, audio, context, sigma, shape, audio_frames):
        """The transformer's velocity for packed latents at noise levels `sigma` (one per clip) of clips of
        `shape` (width, height, frames), called as the pipeline calls it."""
        pipe = self.pipeline
        width, height, frames = shape
        video_context, audio_context, context_mask = context
        batch = video.shape[0]
        timestep = sigma * pipe.scheduler.config.num_train_timesteps  # what the scheduler's timesteps are
        latent_frames = (frames - 1) // pipe.vae_temporal_compression_ratio + 1
        latent_height = height // pipe.vae_spatial_compression_ratio
        latent_width = width // pipe.vae_spatial_compression_ratio
        video_coords = transformer.rope.prepare_video_coords(
            batch, latent_frames, latent_height, latent_width, self.device, fps=FPS
        )
        audio_coords = transformer.audio_rope.prepare_audio_coords(batch, audio_frames, self.device)
        return transformer(
            hidden_states=video,
            audio_hidden_states=audio,
            encoder_hidden_states=video_context,
            audio_encoder_hidden_states=audio_context,
            timestep=timestep,
            sigma=timestep,
            encoder_attention_mask=context_mask,
            audio_encoder_attention_mask=context_mask,
            num_frames=latent_frames,
            height=latent_height,
            width=latent_width,
            fps=FPS,
            audio_num_frames=audio_frames,
            video_coords=video_coords,
            audio_coords=audio_coords,
            use_cross_timestep=True,  # what the pipeline passes by default
            return_dict=False,
        )


class Transformer(Denoiser):
    """The denoiser and the text connectors, exactly as the pipeline will call them."""

    name = "transformer"
    trained = ("transformer", "connectors")

    def __init__(self, components, batches, device, options):
        super().__init__(components, batches, device, options)
        self.pools = {
            shape: self._pool(shape, index) for index, shape in enumerate(sorted(set(batches.shapes(SHAPES))))
        }

    @torch.no_grad()
    def _pool(self, shape: tuple[int, int, int], index: int) -> Pool:
        width, height, frames = shape
        chunks = []
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            for chunk in range(math.ceil(self.pool / 64)):
                # never a training step's draw
                scenes, _ = self.batches.scenes(-(index * 100_000 + chunk + 1), min(64, self.pool))
                chunks.append((scenes, *self._latents(scenes, width, height, frames)))
        scenes, videos, audios, audio_frames = zip(*chunks, strict=True)
        return Pool([scene for part in scenes for scene in part], torch.cat(videos), torch.cat(audios), audio_frames[0])

    def _latents(self, scenes, width, height, frames):
        pipe = self.pipeline
        video = pipe.vae.encode(self.batches.video(scenes, width, height, frames)).latent_dist.mode()
        audio_frames = audio_latent_frames(frames / FPS)
        audio = pipe.audio_vae.encode(self.batches.mel(scenes, audio_frames)).latent_dist.mode()
        return *self.pack(video, audio), audio_frames

    def loss(self, step):
        width, height, frames = shape = self.batches.shape(step)
        pool = self.pools[shape]
        _, draw = self.batches.scenes(step, 0)
        picked = draw.choices(range(len(pool.scenes)), k=self.clips(frames))
        captions = ["" if draw.random() < UNCONDITIONED else world.caption(pool.scenes[i], draw) for i in picked]
        rows = torch.tensor(picked, device=self.device)
        video, audio, audio_frames = pool.video[rows], pool.audio[rows], pool.audio_frames

        batch = video.shape[0]
        generator = torch.Generator(device=self.device).manual_seed(self.batches.seed * 31 + step)
        sigma = training_sigmas(self.pipeline.scheduler.config, batch, video.shape[1], generator, self.device)
        noise_video = torch.randn(video.shape, generator=generator, device=self.device)
        noise_audio = torch.randn(audio.shape, generator=generator, device=self.device)
        noisy_video = (1 - sigma[:, None, None]) * video + sigma[:, None, None] * noise_video
        noisy_audio = (1 - sigma[:, None, None]) * audio + sigma[:, None, None] * noise_audio
        predicted_video, predicted_audio = self.velocity(
            self.components["transformer"], noisy_video, noisy_audio, self.context(captions), sigma, shape, audio_frames
        )
        video_loss = F.mse_loss(predicted_video.float(), noise_video - video)
        audio_loss = F.mse_loss(predicted_audio.float(), noise_audio - audio)
        return {"loss": video_loss + audio_loss, "video": video_loss, "audio": audio_loss}


class LatentUpsampler(Stage):
    """Fast mode's x2 spatial upsampler between its stages, on the video VAE's denormalised latents (where the
    upsampling pipeline applies it): a world clip encoded at half width and height should become the same clip
    encoded at full size."""

    name = "latent_upsampler"
    trained = ("latent_upsampler",)

    def __init__(self, components, batches, device, options):
        super().__init__(components, batches, device, options)
        components["vae"].requires_grad_(False).eval()

    def loss(self, step):
        vae = self.components["vae"]
        width, height, frames = self.batches.shape(step, FAST_SHAPES)
        scenes, _ = self.batches.scenes(step, self.clips(frames))
        with torch.no_grad():
            small, full = [
                vae.encode(self.batches.video(scenes, w, h, frames)).latent_dist.mode()
                for w, h in ((width // 2, height // 2), (width, height))
            ]
        upsampled = self.components["latent_upsampler"](small)
        # Each channel in units of its spread, as the transformer will read the latents.
        error = (upsampled.float() - full.float()) / vae.latents_std.view(1, -1, 1, 1, 1)
        loss = error.square().mean()
        return {"loss": loss}


@dataclass
class TeacherPaths:
    """For clips of one shape, where the teacher started (at `start_sigma`) and what it reached: packed,
    normalised latents, one row per caption."""

    captions: list[str]
    shape: tuple[int, int, int]  # (width, height, frames)
    audio_frames: int
    start_sigma: float
    sigmas: tuple[float, ...]  # where fast mode samples on the way
    video_start: torch.Tensor
    audio_start: torch.Tensor
    video_end: torch.Tensor
    audio_end: torch.Tensor


class Distill(Denoiser):
    """A copy of the trained transformer learns to reach the guided transformer's results (the demo's quality path)
    in fast mode's fixed sigmas and without guidance.

    For each clip the teacher runs its guided dev schedule as fast mode's two stages run: from noise at half width
    and height (stage 1), then, once that result is upsampled and noised to the first stage-2 sigma as inference
    does, at full size from there (stage 2). The student learns the straight path from each start to the teacher's
    result (the velocity that carries the one to the other) at exactly the sigmas fast mode samples, so that its
    8 + 3 Euler steps end where the teacher's guided ones did.
    """

    name = "distill"
    trained = ("transformer_distilled",)
    frozen = (*Denoiser.frozen, "connectors", "transformer", "latent_upsampler")

    def __init__(self, components, batches, device, options):
        super().__init__(components, batches, device, options)
        from diffusers import LTX2Pipeline

        self.teacher_steps = options.teacher_steps or TEACHER_STEPS
        self.refiner = LTX2Pipeline(**pipeline_components(components) | {"scheduler": fast_scheduler(components)})
        for pipe in (self.pipeline, self.refiner):
            pipe.set_progress_bar_config(disable=True)
        started = time.monotonic()
        self.paths = {
            shape: self._teach(shape, index) for index, shape in enumerate(sorted(set(batches.shapes(FAST_SHAPES))))
        }
        print(f"distill: the teacher's paths, {self.pool} clips per shape, took {time.monotonic() - started:.0f} s")

    @torch.no_grad()
    def _teach(self, shape: tuple[int, int, int], index: int) -> tuple[TeacherPaths, TeacherPaths]:
        """The teacher's paths for stage 1 (at half width and height) and stage 2 (full size) of clips of `shape`."""
        width, height, frames = shape
        small = (width // 2, height // 2, frames)
        first_sigma = STAGE_2_SIGMAS[0]
        captions, stage_1, stage_2 = [], [], []
        for chunk in range(math.ceil(self.pool / 128)):
            # never a training step's draw
            scenes, draw = self.batches.scenes(-(index * 100_000 + chunk + 1), min(128, self.pool))
            captions += [world.caption(scene, draw) for scene in scenes]
            generator = torch.Generator(device=self.device).manual_seed(self.batches.seed * 131 + 1000 * index + chunk)
            noise = self._noise(len(scenes), small, generator)
            video, audio = self._guided(self.pipeline, captions[-len(scenes) :], small, *noise)
            stage_1.append((*noise, *self.pack(video, audio)))
            # Stage 2 starts as inference starts it: the upsampled result, noised to the first stage-2 sigma.
            upsampled = self.pack(self.components["latent_upsampler"](video), audio)
            noise = self._noise(len(scenes), shape, generator)
            start = [first_sigma * n + (1 - first_sigma) * x for n, x in zip(noise, upsampled, strict=True)]
            sigmas = self._dev_sigmas_below(first_sigma, start[0].shape[1])
            video, audio = self._guided(self.refiner, captions[-len(scenes) :], shape, *start, sigmas=sigmas)
            stage_2.append((*start, *self.pack(video, audio)))
        audio_frames = audio_latent_frames(frames / FPS)
        return tuple(
            TeacherPaths(
                captions, size, audio_frames, sigmas[0], tuple(sigmas), *map(torch.cat, zip(*parts, strict=True))
            )
            for size, sigmas, parts in ((small, STAGE_1_SIGMAS, stage_1), (shape, STAGE_2_SIGMAS, stage_2))
        )

    def _noise(self, count: int, shape, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed noise for `count` clips of `shape`: video (B, tokens, channels), audio (B, frames, features)."""
        pipe = self.pipeline
        width, height, frames = shape
        tokens = ((frames - 1) // pipe.vae_temporal_compression_ratio + 1) * (height // 32) * (width // 32)
        audio_features = demo_model.AUDIO_LATENT_CHANNELS * demo_model.MEL_BINS // 4
        return (
            torch.randn(count, tokens, demo_model.VIDEO_LATENT_CHANNELS, generator=generator, device=self.device),
            torch.randn(
                count, audio_latent_frames(frames / FPS), audio_features, generator=generator, device=self.device
            ),
        )

    def _dev_sigmas_below(self, start: float, tokens: int) -> list[float]:
        """`start`, then the sigmas of the teacher's dev schedule (as the pipeline makes it) below it."""
        scheduler = copy.deepcopy(self.pipeline.scheduler)
        mu = dev_shift(scheduler.config, tokens)
        steps = self.teacher_steps
        scheduler.set_timesteps(sigmas=numpy.linspace(1.0, 1 / steps, steps), mu=mu)
        return [start, *(float(sigma) for sigma in scheduler.sigmas[:-1] if sigma < start)]

    def _guided(self, pipe, captions, shape, video, audio, **schedule) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's result, denormalised, from packed latents at its schedule's first sigma (the dev schedule's
        teacher_steps unless `sigmas` says otherwise)."""
        width, height, frames = shape
        # The pipeline normalises audio latents it is given (and leaves packed video latents as they are).
        audio = pipe._denormalize_audio_latents(audio, pipe.audio_vae.latents_mean, pipe.audio_vae.latents_std)
        return pipe(
            prompt=captions,
            negative_prompt=[""] * len(captions),  # the demo's default negative prompt
            width=width,
            height=height,
            num_frames=frames,
            frame_rate=FPS,
            num_inference_steps=len(schedule.get("sigmas", ())) or self.teacher_steps,
            latents=video,
            audio_latents=audio,
            max_sequence_length=demo_model.PROMPT_TOKENS,
            output_type="latent",
            return_dict=False,
            **guidance(TEACHER_GUIDANCE),
            **schedule,
        )

    def loss(self, step):
        shape = self.batches.shape(step, FAST_SHAPES)
        _, draw = self.batches.scenes(step, 0)
        paths = self.paths[shape][draw.random() < 0.5]  # stage 1 or stage 2
        picked = draw.choices(range(len(paths.captions)), k=self.clips(paths.shape[2]))
        rows = torch.tensor(picked, device=self.device)
        sigma = torch.tensor([draw.choice(paths.sigmas) for _ in picked], device=self.device)

        def on_path(start: torch.Tensor, end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """The point at `sigma` on the straight path from the start through the teacher's result, and the
            velocity along it (the pipeline's: noise minus clean)."""
            noise = (start - (1 - paths.start_sigma) * end) / paths.start_sigma
            level = sigma[:, None, None]
            return (1 - level) * end + level * noise, noise - end

        noisy_video, target_video = on_path(paths.video_start[rows], paths.video_end[rows])
        noisy_audio, target_audio = on_path(paths.audio_start[rows], paths.audio_end[rows])
        context = self.context([paths.captions[i] for i in picked])
        student = self.components["transformer_distilled"]
        predicted_video, predicted_audio = self.velocity(
            student, noisy_video, noisy_audio, context, sigma, paths.shape, paths.audio_frames
        )
        video_loss = F.mse_loss(predicted_video.float(), target_video)
        audio_loss = F.mse_loss(predicted_audio.float(), target_audio)
        return {"loss": video_loss + audio_loss, "video": video_loss, "audio": audio_loss}


def guidance(scale: float) -> dict:
    """The pipeline's guidance arguments for the demo: classifier-free guidance alone (its 6 blocks have no STG
    block), at `scale` for both modalities; 1 is none. All six scales are set: left out, the audio ones default to
    guidance and cost passes."""
    return {
        "guidance_scale": scale,
        "audio_guidance_scale": scale,
        "stg_scale": 0.0,
        "audio_stg_scale": 0.0,
        "modality_scale": 1.0,
        "audio_modality_scale": 1.0,
        "spatio_temporal_guidance_blocks": None,
    }


def fast_scheduler(components: dict):
    """Fast mode's scheduler: the model's own, unshifted, so that the fixed sigmas are used as they are."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = components["scheduler"].config
    return FlowMatchEulerDiscreteScheduler.from_config(config, use_dynamic_shifting=False, shift_terminal=None)


def training_sigmas(schedule, batch: int, tokens: int, generator: torch.Generator, device) -> torch.Tensor:
    """Noise levels with the inference schedule's shift for this token count, so training spends
    its steps where sampling will."""
    shift = math.exp(dev_shift(schedule, tokens))
    uniform = torch.rand(batch, generator=generator, device=device)
    return shift * uniform / (1 + (shift - 1) * uniform)


def dev_shift(schedule, tokens: int) -> float:
    """The dev schedule's shift (its log) for this many video tokens, as the pipeline computes it."""
    from diffusers.pipelines.ltx2.pipeline_ltx2 import calculate_shift

    return calculate_shift(
        tokens, schedule.base_image_seq_len, schedule.max_image_seq_len, schedule.base_shift, schedule.max_shift
    )


STAGE_CLASSES = {stage.name: stage for stage in (VideoVAE, AudioVAE, Vocoder, Transformer, LatentUpsampler, Distill)}


# -- checkpoints, export ------------------------------------------------------------------------


def fresh_components() -> dict:
    """The pipeline's components and fast mode's, random from the seed."""
    torch.manual_seed(0)
    components = demo_model.build_components()
    torch.manual_seed(0)
    components["latent_upsampler"] = demo_model.latent_upsampler("2.0")
    components["transformer_distilled"] = copy.deepcopy(components["transformer"])
    return components


def pipeline_components(components: dict) -> dict:
    """The components an LTX2Pipeline takes: all but fast mode's."""
    return {name: component for name, component in components.items() if name not in EXTRA_COMPONENTS}


def load_components(run_dir: Path, device: torch.device) -> dict:
    """Random components from the seed, with every stage trained so far loaded over them."""
    components = fresh_components()
    for stage in STAGES:
        if stage == "distill":  # the student starts as the trained transformer
            components["transformer_distilled"].load_state_dict(components["transformer"].state_dict())
        checkpoint = run_dir / f"{stage}.pt"
        if checkpoint.exists():
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
            for name, state in saved["models"].items():
                components[name].load_state_dict(state)
    for name, component in components.items():
        if isinstance(component, nn.Module):
            components[name] = component.to(device).float()
    return components


class Ranks:
    """Data parallelism under torchrun: each rank draws its own batches, gradients are averaged,
    rank 0 alone writes. A single process is the one-rank case."""

    def __init__(self) -> None:
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.size > 1:
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def average(self, parameters: list[nn.Parameter]) -> None:
        if self.size == 1:
            return
        for p in parameters:
            if p.grad is None:  # unused this step on this rank; the others may have used it
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in parameters]
        flat = torch.cat([g.flatten() for g in grads]) / self.size
        torch.distributed.all_reduce(flat)
        torch._foreach_copy_(
            grads, [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads, strict=True)]
        )

    def any(self, flag: bool, device: torch.device) -> bool:
        """True when any rank says so, so that all ranks stop at the same step."""
        if self.size == 1:
            return flag
        value = torch.tensor(float(flag), device=device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())


def train(
    stage_name: str, run_dir: Path, seconds: float, steps: int, device: torch.device, seed: int, options: Options
) -> None:
    ranks = Ranks()
    if ranks.size > 1 and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / f"{stage_name}.pt"
    log_path = run_dir / f"{stage_name}.jsonl"
    components = load_components(run_dir, device)
    torch.manual_seed(seed)
    batches = Batches(seed + 7777 * ranks.rank, device, options.shapes)
    stage = STAGE_CLASSES[stage_name](components, batches, device, options)
    models = stage.trainable()
    for model in models:
        model.train().requires_grad_(True)
    parameters = [p for model in models for p in model.parameters()]
    hyper = HYPER[stage_name]
    optimiser = torch.optim.AdamW(parameters, lr=hyper.learning_rate, weight_decay=0.01, betas=hyper.betas)
    ema = [p.detach().clone() for p in parameters]
    step, trained_s = 0, 0.0
    fresh_optimiser_at = 0  # the learning rate warms up again wherever the optimiser starts empty
    if checkpoint.exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        step, trained_s = saved["step"], saved["trained_s"]
        fresh_optimiser_at = step
        if "optimiser" in saved:  # an imported checkpoint has none: its weights start both live and averaged
            fresh_optimiser_at = 0
            optimiser.load_state_dict(saved["optimiser"])
            ema = [tensor.to(device) for tensor in saved["ema"]]
            # the models were loaded with the EMA weights; training resumes from the live ones
            for p, live in zip(parameters, saved["live"], strict=True):
                p.data.copy_(live)

    def save(final: bool) -> None:
        if not ranks.writer:
            return
        live = [p.detach().clone() for p in parameters]
        for p, average in zip(parameters, ema, strict=True):
            p.data.copy_(average)  # the exported weights are the averaged ones
        if final:
            for model in models:
                model.eval()
            with torch.no_grad():
                stage.finish()
        state = {
            "models": {name: components[name].state_dict() for name in stage.trained},
            "optimiser": optimiser.state_dict(),
            "ema": ema,
            "live": live,
            "step": step,
            "trained_s": trained_s,
        }
        torch.save(state, checkpoint.with_suffix(".tmp"))
        checkpoint.with_suffix(".tmp").replace(checkpoint)
        for p, value in zip(parameters, live, strict=True):
            p.data.copy_(value)
        for model in models:
            model.train()

    started = time.monotonic()
    last_save = started
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    losses, logged_step = None, step

    def log_losses() -> None:
        """One line of the log: the step's losses, every 50 steps and at the last."""
        record = {name: round(value.item(), 5) for name, value in losses.items()}
        record.update(
            step=step, grad_norm=round(float(norm), 3), elapsed_s=round(trained_s + time.monotonic() - started, 1)
        )
        log.write(json.dumps(record) + "\n")
        log.flush()
        print(stage_name, record, flush=True)

    with log_path.open("a") as log:
        while not ranks.any(step >= steps or time.monotonic() - started >= seconds, device):
            for group in optimiser.param_groups:
                group["lr"] = hyper.learning_rate * min(1.0, (step + 1 - fresh_optimiser_at) / hyper.warmup)
            with autocast:
                losses = stage.loss(step)
            optimiser.zero_grad(set_to_none=True)
            losses["loss"].backward()
            ranks.average(parameters)
            norm = torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimiser.step()
            decay = min(hyper.ema_decay, (step + 1) / (step + 10))
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in parameters], 1 - decay)
            step += 1
            if ranks.writer and (step % 50 == 0 or step == 1):
                log_losses()
                logged_step = step
            if time.monotonic() - last_save > 120:
                save(final=False)
                last_save = time.monotonic()
        if ranks.writer and step != logged_step:  # the log ends at the step the checkpoint holds
            log_losses()
    trained_s += time.monotonic() - started
    save(final=True)
    if ranks.size > 1:
        torch.distributed.destroy_process_group()
    print(f"{stage_name}: {step} steps, {trained_s:.0f} s in all, checkpoint {checkpoint}", flush=True)


def export(run_dir: Path, target: Path) -> None:
    """The trained pipeline as a Diffusers directory, in bf16 to keep the repository small, with fast mode's
    components (each in its own directory beside the pipeline's) where their stages have trained."""
    from diffusers import LTX2Pipeline

    components = load_components(run_dir, torch.device("cpu"))
    for name, component in components.items():
        if isinstance(component, nn.Module):
            components[name] = component.to(torch.bfloat16)
    LTX2Pipeline(**pipeline_components(components)).save_pretrained(target)
    trained = [stage for stage in STAGES if (run_dir / f"{stage}.jsonl").exists()]
    for stage in trained:
        for name in set(STAGE_CLASSES[stage].trained) & set(EXTRA_COMPONENTS):
            components[name].save_pretrained(target / name)
    logs = {
        stage: [json.loads(line) for line in (run_dir / f"{stage}.jsonl").read_text().splitlines()] for stage in trained
    }
    (target / "training_log.json").write_text(json.dumps(logs) + "\n")


def import_exported(source: Path, run_dir: Path) -> list[str]:
    """Start a run from an exported model (the inverse of `export`): each stage whose components
    have today's architecture becomes a checkpoint with its training log, so training goes on
    from those weights; a stage whose architecture changed is left to train from scratch.

    Returns the stages imported; a stage the export lacks (fast mode's, say) is not one of them.
    """
    built = fresh_components()
    frozen = type(built["text_encoder"]).from_pretrained(source / "text_encoder").state_dict()
    language = {key: value for key, value in built["text_encoder"].state_dict().items() if "vision" not in key}
    if any(not torch.equal(value.bfloat16(), frozen[key]) for key, value in language.items()):
        raise ValueError(f"{source}'s text encoder is not the seed's: a transformer trained on it cannot train on here")
    logs = json.loads((source / "training_log.json").read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    imported = []
    for stage in STAGE_CLASSES.values():
        if stage.name not in logs or not all((source / name / "config.json").exists() for name in stage.trained):
            continue
        saved_configs = [json.loads((source / name / "config.json").read_text()) for name in stage.trained]
        if any(
            _architecture(saved) != _architecture(built[name].config)
            for name, saved in zip(stage.trained, saved_configs, strict=True)
        ):
            continue
        models = {name: type(built[name]).from_pretrained(source / name).float().state_dict() for name in stage.trained}
        log = logs[stage.name]
        # The shipped vocoder's log (it was trained apart, see MODEL_CARD.md) has steps but no times.
        state = {"models": models, "step": log[-1]["step"], "trained_s": log[-1].get("elapsed_s", 0.0)}
        torch.save(state, run_dir / f"{stage.name}.pt")
        (run_dir / f"{stage.name}.jsonl").write_text("".join(json.dumps(record) + "\n" for record in log))
        imported.append(stage.name)
    return imported


def _architecture(config) -> dict:
    """A component's config without Diffusers' bookkeeping (class name, version)."""
    return {key: value for key, value in json.loads(json.dumps(dict(config))).items() if not key.startswith("_")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=(*STAGES, "export", "import"))
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--target", type=Path, help="export: the Diffusers directory to write")
    parser.add_argument("--source", type=Path, help="import: an exported Diffusers directory to train on from")
    parser.add_argument("--seconds", type=float, default=math.inf, help="stop (and checkpoint) after this long")
    parser.add_argument("--steps", type=int, default=10**9)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=Options.pool, help="transformer: clips per shape encoded up front")
    parser.add_argument("--batch", type=int, help="clips per step at 25 frames (default: the stage's own)")
    parser.add_argument(
        "--stat-clips", type=int, help=f"video_vae: clips its latent statistics are measured on (default {STAT_CLIPS})"
    )
    parser.add_argument(
        "--teacher-steps", type=int, help=f"distill: the teacher's dev-schedule steps (default {TEACHER_STEPS})"
    )
    parser.add_argument("--shapes", type=int, help="train on the first N clip shapes of each stage (default all)")
    args = parser.parse_args(argv)
    if args.stage == "export":
        export(args.run_dir, args.target)
    elif args.stage == "import":
        print("imported:", ", ".join(import_exported(args.source, args.run_dir)) or "nothing", flush=True)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # a handful of clip shapes, each seen thousands of times
        train(
            args.stage,
            args.run_dir,
            args.seconds,
            args.steps,
            torch.device(args.device),
            args.seed,
            Options(args.batch, args.pool, args.stat_clips, args.teacher_steps, args.shapes),
        )


if __name__ == "__main__":
    main()
