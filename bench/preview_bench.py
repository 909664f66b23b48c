"""What previews cost beside a denoising step, on the CPU: a preview written with a colour map, and the one-time
fit of a model's map at its first decode.

A demo job (fast mode's default: 320x192, 25 frames) runs through the runner's stages in this process; its
denoise steps after the first give the step time. Then, at the demo's latent size and at full-size LTX-2's
(121 frames at 768x512 and 1280x704: 16 latent frames, 128 channels, random latents and map), a preview's
`after_step` at a due step (clean estimate, colours, upscale, JPEG, rename), and the fit: a clip's decoded frames
pooled into its latent cells, then the least-squares fit. Each timing is the median of `--repeats` (and, for the
preview, the fastest: on a shared CPU the median carries other processes' load, as the step time does).

    python bench/preview_bench.py [--repeats 20]

On a GPU (`--device cuda`), what a preview costs the denoiser: a stand-in step (bf16 matmuls on the card, timed to
`--step-ms`, whose result the latents depend on, as a real step's do) runs `--steps` times with a preview due at
every step (a fast job's stages), with no previews, with previews finished in line (the step callback waits for
the step's kernels, then colours, JPEG and rename), and with previews on the runner's PreviewThread. Full-size
latents of fast 121-frame jobs: stage 1 of 768x448 (384x224), stage 2 of 768x448 and of 1280x704.

    python bench/preview_bench.py --device cuda [--step-ms 80 300] [--steps 11]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contract import jobdir, protocol  # noqa: E402
from contract.models import demo_spec  # noqa: E402
from contract.request import Request  # noqa: E402
from gpu_runner.cancel import Cancellation  # noqa: E402
from gpu_runner.demo.model import build_demo_model  # noqa: E402
from gpu_runner.families.ltx2.preview import PreviewWriter  # noqa: E402
from gpu_runner.job import load_job  # noqa: E402
from gpu_runner.pipeline import PreviewThread, generate  # noqa: E402
from gpu_runner.preview_colours import MAP_FILE, ColourLearner, ColourMap  # noqa: E402

# (name, latent channels, latent frames, height and width in latent cells, pixels per cell)
SHAPES = [
    ("demo 320x192x25", 32, 4, 6, 10),
    ("LTX-2 768x512x121", 128, 16, 16, 24),
    ("LTX-2 1280x704x121", 128, 16, 22, 40),
]


def times(run, repeats: int) -> list[float]:
    taken = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        taken.append(time.perf_counter() - began)
    return taken


def demo_step_s(work: Path) -> tuple[float, ColourMap]:
    """The mean time of a demo job's denoise steps after its first, and the demo's shipped map."""
    model = build_demo_model(work / "demo")
    job_dir = work / "job"
    job_dir.mkdir()
    spec = demo_spec(model)
    request = spec.resolve(Request(prompt="a red ball moving right with a high beep", seed=1))
    jobdir.write_job_file(job_dir, jobdir.job_file("bench", request, spec, jobdir.RunnerOptions()))
    steps = []
    generate(load_job(job_dir), steps.append, Cancellation(), time.monotonic())
    elapsed = [e.elapsed_s for e in steps if isinstance(e, protocol.Step) and e.stage == "denoise"]
    return (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1), ColourMap.from_json((model / MAP_FILE).read_bytes())


def preview_s(work: Path, colours: ColourMap, frames: int, height: int, width: int, repeats: int) -> list[float]:
    writer = PreviewWriter(lambda name: work / name, (frames, height, width), total_steps=2, colours=colours)
    sigmas = torch.tensor([1.0, 0.5, 0.0])
    first, second = (torch.randn(1, frames * height * width, colours.channels) for _ in range(2))

    def due_step() -> None:
        writer.after_step(sigmas, 0, first)  # keeps the shown frames' latents
        writer.after_step(sigmas, 1, second)()  # in line: the whole cost, wherever a job runs it

    return times(due_step, repeats)


def fit_s(channels: int, frames: int, height: int, width: int, pixels: int, repeats: int) -> float:
    cells = torch.randn(frames, height, width, channels)
    shape = (1 + 8 * (frames - 1), height * pixels, width * pixels, 3)
    clip = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)

    def learn() -> None:
        learner = ColourLearner(cells, 8, pixels)
        for start in range(0, len(clip), 64):  # the decoder's chunks
            learner.add(clip[start : start + 64])
        learner.fit("bench", "")

    return statistics.median(times(learn, repeats))


# (name, latent frames, height and width in latent cells) of fast 121-frame jobs' stages
GPU_SHAPES = [
    ("121f 768x448, stage 1 (384x224)", 16, 7, 12),
    ("121f 768x448, stage 2", 16, 14, 24),
    ("121f 1280x704, stage 2", 16, 22, 40),
]


def stand_in_step(device: torch.device, step_ms: float):
    """A callable queueing about `step_ms` of bf16 matmuls and returning a scalar that depends on them."""
    matrix = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16) / 64

    def run(count: int) -> torch.Tensor:
        product = matrix
        for _ in range(count):
            product = product @ matrix
        return product[:1, :1].float()

    run(4)
    torch.cuda.synchronize(device)
    began = time.perf_counter()
    run(50)
    torch.cuda.synchronize(device)
    count = max(1, round(step_ms / ((time.perf_counter() - began) * 1000 / 50)))
    return lambda: run(count)


def gpu_steps_s(work: Path, device, step, colours, shape, steps: int, how: str) -> float:
    """Seconds a step, `steps` stand-in steps with a preview due at each, previews finished `how`."""
    frames, height, width = shape
    writer = PreviewWriter(lambda name: work / name, shape, total_steps=steps, colours=colours, previews=steps)
    sigmas = torch.linspace(1, 0, steps + 1)
    latents = torch.randn(1, frames * height * width, colours.channels, device=device, dtype=torch.bfloat16)
    torch.cuda.synchronize(device)
    began = time.perf_counter()
    with PreviewThread(lambda event: None) as thread:
        for index in range(steps):
            latents = latents * 0.99 + step().to(latents.dtype)
            work_left = None if how == "none" else writer.after_step(sigmas, index, latents)
            if work_left is not None:
                thread.submit(work_left) if how == "thread" else work_left()
        torch.cuda.synchronize(device)
    return (time.perf_counter() - began) / steps


def gpu_main(args) -> None:
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device)
    print(f"{card}, torch {torch.__version__}; full-size latent shapes, random latents and map\n")
    print("| latents | stand-in step ms | no previews ms/step | in line: ms/step (cost) | thread: ms/step (cost) |")
    print("|---|---|---|---|---|")
    colours = ColourMap(torch.randn(128 + 1, 3) * 10)
    with tempfile.TemporaryDirectory() as work:
        for step_ms in args.step_ms:
            step = stand_in_step(device, step_ms)
            for name, *shape in GPU_SHAPES:
                runs = {how: [] for how in ("none", "in line", "thread")}
                for _ in range(args.repeats):
                    for how, taken in runs.items():
                        taken.append(gpu_steps_s(Path(work), device, step, colours, tuple(shape), args.steps, how))
                none, inline, threaded = (statistics.median(runs[how]) * 1000 for how in runs)
                print(
                    f"| {name} | {step_ms:.0f} | {none:.1f} | {inline:.1f} ({(inline - none) / none:+.1%}) "
                    f"| {threaded:.1f} ({(threaded - none) / none:+.1%}) |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--step-ms", type=float, nargs="+", default=[80.0, 300.0])
    parser.add_argument("--steps", type=int, default=11)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.device != "cpu":
        gpu_main(args)
        return
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        step, demo_map = demo_step_s(work)
        print(
            f"demo denoise step (fast mode, 320x192, 25 frames, CPU, {torch.get_num_threads()} threads): "
            f"{step * 1000:.0f} ms\n"
        )
        print("| latents | preview, median (fastest) ms | / demo step | fit, once (ms) | / demo step |")
        print("|---|---|---|---|---|")
        for name, channels, frames, height, width in SHAPES:
            colours = demo_map if channels == demo_map.channels else ColourMap(torch.randn(channels + 1, 3) * 10)
            preview = preview_s(work, colours, frames, height, width, args.repeats)
            middle, fastest = statistics.median(preview), min(preview)
            fit = fit_s(channels, frames, height, width, 32, max(1, args.repeats // 4))
            print(
                f"| {name} | {middle * 1000:.1f} ({fastest * 1000:.1f}) | {middle / step:.2%} ({fastest / step:.2%}) "
                f"| {fit * 1000:.0f} | {fit / step:.2f}x |"
            )


if __name__ == "__main__":
    main()
