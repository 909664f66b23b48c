"""The MP4 writer's H.264 encode per x264 preset: seconds and file size for one clip, on this machine's CPU.

The runner's decode_video stage streams each decoded chunk into the encoder, so its time is the VAE decode
plus this. Frames are a smooth synthetic scene (a lit ball moving over a gradient with mild noise), closer
to what a video model makes than random noise, which no encoder compresses.

    python bench/encode_bench.py --frames 481 --size 768x448
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_runner import mux  # noqa: E402

PRESETS = ("medium", "fast", "faster", "veryfast", "superfast", "ultrafast")


def scene(frames: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """(frames, height, width, 3) uint8: a gradient with a moving disc and a little grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([x / width * 180 + 40, y / height * 160 + 50, (x + y) / (width + height) * 120 + 60], -1)
    clip = np.empty((frames, height, width, 3), np.uint8)
    for index in range(frames):
        t = index / max(frames - 1, 1)
        cx, cy = width * (0.15 + 0.7 * t), height * (0.5 + 0.3 * np.sin(6 * np.pi * t))
        disc = ((x - cx) ** 2 + (y - cy) ** 2 < (height / 6) ** 2)[..., None]
        frame = np.where(disc, np.array([220.0, 60.0, 40.0]), background) + rng.normal(0, 3, (height, width, 1))
        clip[index] = np.clip(frame, 0, 255).astype(np.uint8)
    return clip


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=481)
    parser.add_argument("--size", default="768x448")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    args = parser.parse_args(argv)
    width, height = (int(side) for side in args.size.split("x"))
    clip = scene(args.frames, width, height)
    audio = np.zeros((2, round(args.frames / 24 * 48000)), np.float32)
    lines = [
        f"# H.264 encode of {args.frames} frames at {width}x{height}, crf {mux.DEFAULT_CRF}, {os.cpu_count()} CPUs",
        "",
        "| preset | seconds | frames/s | MB | time / medium |",
        "|---|---|---|---|---|",
    ]
    baseline = None
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            path = Path(tmp) / f"{preset}.mp4"
            began = time.perf_counter()
            with mux.Mp4Writer(path, 24.0, audio, 48000, preset=preset) as writer:
                for start in range(0, args.frames, 64):  # chunks, as decoded tiles arrive
                    writer.add_frames(clip[start : start + 64])
                writer.finish()
            seconds = time.perf_counter() - began
            baseline = baseline or seconds
            megabytes = path.stat().st_size / 1e6
            rate, ratio = args.frames / seconds, seconds / baseline
            cells = (preset, f"{seconds:.2f}", f"{rate:.0f}", f"{megabytes:.2f}", f"{ratio:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
