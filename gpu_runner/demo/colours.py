"""Fit the demo model's preview colours from its own decodes; the map ships with its weights.

    python -m gpu_runner.demo.colours MODEL_DIR [--seeds 3] [--out gpu_runner/demo/weights/preview_colours.json]

Runs one clip of each of the world's colours per seed (the demo's default job: fast mode, 320x192, 25 frames) through
the runner's own stages, pools each clip's decoded frames into its latent cells as a portal's first job of a model
does, and fits one map to all of them (gpu_runner/preview_colours.py). `demo-model` copies the file from the
shipped weights into the model directory, where the runner looks first.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from contract import jobdir
from contract.models import directory_spec
from contract.request import Request
from gpu_runner.cancel import Cancellation
from gpu_runner.demo.evaluate import prompt_set
from gpu_runner.demo.model import TRAINED_WEIGHTS
from gpu_runner.families.ltx2 import Ltx2
from gpu_runner.families.ltx2.loading import DiffusersDirectory
from gpu_runner.job import load_job
from gpu_runner.pipeline import generate
from gpu_runner.preview_colours import MAP_FILE, ColourMap, fit


class Recording(Ltx2):
    """The demo's family, keeping what each clip's decode taught."""

    def __init__(self, source) -> None:
        super().__init__(source)
        self.learners = []

    def colour_learner(self, decoders, latents):
        self.learners.append(super().colour_learner(decoders, latents))
        return self.learners[-1]


def fit_demo_colours(model_dir: Path, work_dir: Path, seeds: int) -> ColourMap:
    """One map from one clip of each colour per seed, learnt as a model without a map learns it."""
    model = work_dir / "model"
    shutil.copytree(model_dir, model, ignore=shutil.ignore_patterns(MAP_FILE))  # no map: each clip teaches
    spec = directory_spec("demo", model)
    family = Recording(DiffusersDirectory(model))
    for number, prompt in enumerate(prompt_set(seeds)):
        job_dir = work_dir / f"job{number}"
        job_dir.mkdir()
        # a colours directory of its own per clip, so that no clip finds an earlier one's map
        options = jobdir.RunnerOptions(preview_colours_dir=str(work_dir / f"colours{number}"))
        request = spec.resolve(Request(prompt=prompt.text, seed=prompt.seed))
        jobdir.write_job_file(job_dir, jobdir.job_file(job_dir.name, request, spec, options))
        generate(load_job(job_dir), lambda event: None, Cancellation(), time.monotonic(), family)
    samples = [learner.samples() for learner in family.learners]
    cells, colours, weights = (torch.cat(parts) for parts in zip(*samples, strict=True))
    matrix, rms = fit(cells, colours, weights)
    return ColourMap(matrix, "demo", rms_error=round(rms, 2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=TRAINED_WEIGHTS / MAP_FILE)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        colours = fit_demo_colours(args.model_dir, Path(work), args.seeds)
    args.out.write_bytes(colours.to_json())
    print(f"{args.out}: {colours.channels} channels, RMS error {colours.rms_error} levels")


if __name__ == "__main__":
    main()
