"""What previews cost beside a denoising step, on the CPU: a preview written with a colour map, and the one-time
fit of a model's map at its first decode.

A demo job (fast mode's default: 320x192, 25 frames) runs through the runner's stages in this process; its
denoise steps after the first give the step time. Then, at the demo's latent size and at full-size LTX-2's
(121 frames at 768x512 and 1280x704: 16 latent frames, 128 channels, random latents and map), a preview's
`after_step` at a due step (clean estimate, colours, upscale, JPEG, rename), and the fit: a clip's decoded frames
pooled into its latent cells, then the least-squares fit. Each timing is the median of `--repeats` (and, for the
preview, the fastest: on a shared CPU the median carries other processes' load, as the step time does).

    python bench/preview_bench.py [--repeats 20]
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
from gpu_runner.pipeline import generate  # noqa: E402
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
        assert writer.after_step(sigmas, 1, second) is not None

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
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
