"""Does the demo model follow its prompts? Generate clips through the runner and measure them.

    python -m gpu_runner.demo.evaluate MODEL_DIR [--seeds 5] [--precision fp32]

Each clip goes through `gpu_runner.pipeline.generate` (the stages a portal job runs) and is
read back from the MP4 it wrote, so what is measured is what a user downloads. The prompt
set pairs every colour and every motion with five seeds in 25 clips (colour i with motion
i + seed), each carrying the sound its motion goes with.

    python -m gpu_runner.demo.evaluate MODEL_DIR --fast-table [--device cuda]

compares fast mode's two stages (8 + 3 sigmas, no guidance) with the distilled transformer and
with the guided one against the guided quality path, on the same prompts and seeds at fast
mode's default size: the diffusers pipelines driven directly, each clip decoded as the runner
decodes it, so it runs wherever the training runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy
import torch

from contract import jobdir
from contract.models import demo_spec, directory_spec
from contract.request import LoraChoice, Request
from gpu_runner import memory
from gpu_runner.demo import measure, world

BANDS = {"high beep": (700.0, 1100.0), "low hum": (80.0, 160.0)}  # Hz; the world's tones are 860-900 and 105-115
SILENCE_DB = -40.0  # dBFS; the world's tones are at -13.5 dBFS
FAST_SIZE = (320, 192)  # fast mode's default job: 25 frames at 24 fps
FAST_FRAMES = 25
FAST_FPS = 24.0
TONE_FOR_COLOUR = ("high beep", "low hum", "silence", "high beep", "low hum")


@dataclass(frozen=True)
class Prompt:
    colour: str
    shape: str
    motion: str
    sound: str
    seed: int

    @property
    def text(self) -> str:
        sound = {"clicks": "with clicks", "silence": "in silence"}.get(self.sound, f"with a {self.sound}")
        return f"a {self.colour} {self.shape} {self.motion} {sound}"


@dataclass(frozen=True)
class Clip:
    video: torch.Tensor  # (3, F, H, W) in [0, 1]
    audio: torch.Tensor  # (channels, samples) in [-1, 1]
    sample_rate: int
    fps: float


@dataclass(frozen=True)
class Measured:
    prompt: str
    seed: int
    colour: str | None
    direction: str | None
    contacts: list[int]
    frequency: float
    level_db: float
    sync: float | None


def prompt_set(seeds: int) -> list[Prompt]:
    """Every colour and every motion once per seed; shapes alternate, sounds follow the motion."""
    prompts = []
    for seed in range(seeds):
        for index, colour in enumerate(world.COLOURS):
            motion = world.MOTIONS[(index + seed) % len(world.MOTIONS)]
            sound = "clicks" if motion == "bouncing" else TONE_FOR_COLOUR[(index + 2 * seed) % len(TONE_FOR_COLOUR)]
            prompts.append(Prompt(colour, world.SHAPES[(index + seed) % 2], motion, sound, seed))
    return prompts


def generate(
    model_dir: Path,
    prompt: str,
    seed: int,
    work_dir: Path,
    loras: tuple[tuple[Path, float], ...] = (),
    **request: object,
) -> Clip:
    """One clip through the runner's own stages, read back from its MP4; `loras`: (file, scale) pairs applied as a
    job's LoRAs (named by their files)."""
    import av

    from gpu_runner.cancel import Cancellation
    from gpu_runner.job import load_job
    from gpu_runner.pipeline import generate as run_stages

    job_dir = Path(tempfile.mkdtemp(dir=work_dir))
    spec = directory_spec("demo", model_dir.resolve())  # as the portal offers it: its defaults, its default mode
    fields = {key: value for key, value in request.items() if key != "precision"}
    choices = tuple(LoraChoice(path.stem, scale) for path, scale in loras)
    resolved = spec.resolve(Request(prompt=prompt, seed=seed, loras=choices or None, **fields))
    folders = tuple(sorted({str(path.parent.resolve()) for path, _scale in loras}))
    options = jobdir.RunnerOptions(precision=request.get("precision"), lora_dirs=folders)
    job_loras = tuple(jobdir.JobLora(path.stem, scale, str(path.resolve()), "") for path, scale in loras)
    jobdir.write_job_file(job_dir, jobdir.job_file(job_dir.name, resolved, spec, options, loras=job_loras))
    with memory.frozen_heap():
        result = run_stages(load_job(job_dir), lambda event: None, Cancellation(), time.monotonic())
    with av.open(str(job_dir / result.file)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        container.seek(0)
        audio = torch.cat([torch.from_numpy(frame.to_ndarray()) for frame in container.decode(audio=0)], dim=-1)
    video = measure.video_from_frames(torch.from_numpy(numpy.stack(frames)))
    return Clip(video=video, audio=audio.float(), sample_rate=result.audio_sample_rate, fps=result.fps)


def measure_clip(prompt: Prompt, clip: Clip) -> Measured:
    mask = measure.object_mask(clip.video)  # once for the colour, the path and the contacts: a median over the clip
    path = measure.track(clip.video, mask)
    contacts = measure.floor_contacts(clip.video, clip.fps, path)
    sync = None
    if prompt.motion == "bouncing":
        found = measure.onsets(clip.audio, clip.sample_rate)
        sync = measure.sync_fraction(contacts, found, clip.fps, frames=clip.video.shape[1])
    return Measured(
        prompt=prompt.text,
        seed=prompt.seed,
        colour=measure.object_colour(clip.video, mask),
        direction=measure.direction(clip.video, path),
        contacts=contacts,
        frequency=measure.dominant_frequency(clip.audio, clip.sample_rate),
        level_db=measure.level_db(clip.audio),
        sync=sync,
    )


def followed(prompt: Prompt, measured: Measured) -> dict[str, bool]:
    """Which parts of the prompt the clip shows."""
    checks = {"colour": measured.colour == prompt.colour}
    if prompt.motion == "bouncing":
        checks["motion"] = len(measured.contacts) >= 1
    else:
        checks["motion"] = measured.direction == prompt.motion.removeprefix("moving ")
    if prompt.sound == "silence":
        checks["sound"] = measured.level_db < SILENCE_DB
    elif prompt.sound in BANDS:
        low, high = BANDS[prompt.sound]
        checks["sound"] = low <= measured.frequency <= high
    return checks


FAST_TABLE_RUNS = {
    "fast distilled": "fast 8+3, distilled transformer",
    "fast undistilled": "fast 8+3, undistilled transformer",
    "quality": "quality path: guided, dev schedule at the default steps",
    "teacher": "the distillation's teacher: guided, dev schedule, more steps",
}


def fast_table(
    model_dir: Path, prompts: list[Prompt], device: torch.device, runs: tuple[str, ...] = tuple(FAST_TABLE_RUNS)
) -> dict[str, dict[str, list[bool]]]:
    """Per run of FAST_TABLE_RUNS (those in `runs`) and per check, which prompts' clips follow them."""
    from diffusers import LTX2Pipeline, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplePipeline, LTX2LatentUpsamplerModel
    from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES

    from gpu_runner.demo import train
    from gpu_runner.demo.model import PROMPT_TOKENS

    pipe = LTX2Pipeline.from_pretrained(model_dir, torch_dtype=torch.float32).to(device)
    distilled = LTX2VideoTransformer3DModel.from_pretrained(model_dir / "transformer_distilled").float().to(device)
    upsampler = LTX2LatentUpsamplerModel.from_pretrained(model_dir / "latent_upsampler").float().to(device)
    upsample = LTX2LatentUpsamplePipeline(vae=pipe.vae, latent_upsampler=upsampler)
    pipe.set_progress_bar_config(disable=True)
    defaults = demo_spec(model_dir.resolve()).defaults
    width, height = FAST_SIZE
    common = {
        "prompt": [prompt.text for prompt in prompts],
        "negative_prompt": [""] * len(prompts),
        "num_frames": FAST_FRAMES,
        "frame_rate": FAST_FPS,
        "max_sequence_length": PROMPT_TOKENS,
        "output_type": "latent",
        "return_dict": False,
    }

    def seeded() -> list[torch.Generator]:
        return [torch.Generator("cpu").manual_seed(prompt.seed) for prompt in prompts]

    def fast(transformer) -> tuple[torch.Tensor, torch.Tensor]:
        stages = LTX2Pipeline(
            **pipe.components | {"transformer": transformer, "scheduler": train.fast_scheduler(pipe.components)}
        )
        stages.set_progress_bar_config(disable=True)
        generator, unguided = seeded(), train.guidance(1.0)
        first = DISTILLED_SIGMA_VALUES
        video, audio = stages(
            width=width // 2, height=height // 2, sigmas=first, num_inference_steps=len(first), generator=generator,
            **unguided, **common,
        )  # fmt: skip
        upsampled = upsample(latents=video, latents_normalized=False, output_type="latent", return_dict=False)[0]
        second = STAGE_2_DISTILLED_SIGMA_VALUES
        return stages(
            width=width, height=height, latents=upsampled, audio_latents=audio, sigmas=second,
            num_inference_steps=len(second), noise_scale=second[0], generator=generator, **unguided, **common,
        )  # fmt: skip

    def guided(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        return pipe(
            width=width, height=height, num_inference_steps=steps, generator=seeded(),
            **train.guidance(defaults.guidance_scale), **common,
        )  # fmt: skip

    generators = {
        "fast distilled": lambda: fast(distilled),
        "fast undistilled": lambda: fast(pipe.transformer),
        "quality": lambda: guided(defaults.steps),
        "teacher": lambda: guided(train.TEACHER_STEPS),
    }
    table = {}
    for name in runs:
        with torch.no_grad():
            video, audio = generators[name]()
            clips = [decode(pipe, one_video, one_audio) for one_video, one_audio in zip(video, audio, strict=True)]
        checks: dict[str, list[bool]] = {}
        for prompt, clip in zip(prompts, clips, strict=True):
            for check, ok in followed(prompt, measure_clip(prompt, clip)).items():
                checks.setdefault(check, []).append(ok)
        table[name] = checks
    return table


def decode(pipe, video: torch.Tensor, audio: torch.Tensor) -> Clip:
    """One clip's denormalised latents decoded as the runner decodes them, to 8-bit frames and the vocoder's audio."""
    from gpu_runner.families.ltx2.tiling import to_rgb_frames
    from gpu_runner.families.ltx2.vocoding import vocode

    frames = to_rgb_frames(pipe.vae.decode(video[None], return_dict=False)[0][0])
    waveform = vocode(pipe.vocoder, pipe.audio_vae.decode(audio[None], return_dict=False)[0])[0]
    return Clip(
        video=measure.video_from_frames(torch.from_numpy(frames)),
        audio=waveform.float().cpu(),
        sample_rate=pipe.vocoder.config.output_sampling_rate,
        fps=FAST_FPS,
    )


def evaluate(model_dir: Path, prompts: list[Prompt], **request: object) -> Iterator[tuple[Prompt, Measured]]:
    with tempfile.TemporaryDirectory() as work:
        for prompt in prompts:
            clip = generate(model_dir, prompt.text, prompt.seed, Path(work), **request)
            yield prompt, measure_clip(prompt, clip)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp8"))
    parser.add_argument("--fast-table", action="store_true", help="fast mode against the quality path (see above)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="for --fast-table")
    args = parser.parse_args(argv)
    if args.fast_table:
        table = fast_table(args.model_dir, prompt_set(args.seeds), torch.device(args.device))
        for name, checks in table.items():
            counts = ", ".join(f"{check} {sum(oks)}/{len(oks)}" for check, oks in checks.items())
            print(f"{FAST_TABLE_RUNS[name]}: {counts}")
        print(json.dumps(table), flush=True)
        return
    totals: dict[str, list[bool]] = {}
    syncs = []
    for prompt, measured in evaluate(args.model_dir, prompt_set(args.seeds), precision=args.precision):
        checks = followed(prompt, measured)
        for name, ok in checks.items():
            totals.setdefault(name, []).append(ok)
        if measured.sync is not None:
            syncs.append(measured.sync)
        print(json.dumps(asdict(measured) | {"checks": checks}), flush=True)
    for name, oks in totals.items():
        print(f"{name}: {sum(oks)}/{len(oks)}")
    if syncs:
        print(f"sync: mean {sum(syncs) / len(syncs):.2f} over {len(syncs)} bouncing clips")
    print(f"(silence below {SILENCE_DB} dBFS; tone bands {BANDS})")


if __name__ == "__main__":
    main()
