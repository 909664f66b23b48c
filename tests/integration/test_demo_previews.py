"""Previews that look like the video, on the demo model: its shipped colour map makes a late preview show the clip's
colour, and a model with no map says so, learns one from its first clip, and shows previews from then on."""

from __future__ import annotations

import colorsys
import json
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from contract import jobdir, protocol
from gpu_runner.cancel import Cancellation
from gpu_runner.demo import measure, world
from gpu_runner.families.ltx2.preview import NO_COLOURS
from gpu_runner.job import load_job
from gpu_runner.pipeline import generate
from gpu_runner.preview_colours import MAP_FILE
from tests.runner_fixtures import read_mp4, run_job, write_job

# Small fast-mode jobs (8 + 3 steps): previews come from both stages, the refine's at the clip's full size.
SMALL = {"mode": "fast", "width": 256, "height": 192, "num_frames": 17}


PALE = measure.WHITE_SATURATION  # below it the object is white
HUES = {name: colorsys.rgb_to_hsv(*rgb)[0] * 360 for name, rgb in world.COLOURS.items() if name != "white"}


def dominant_colour(frames: np.ndarray) -> str | None:
    """The demo world's colour word for the clip's object: white when pale, else the word nearest the hue of the
    mean colour of the pixels that stand out from the ground (measure.object_hsv). The demo's clips are one
    coloured object on a dark ground, so this is the colour a viewer names. Unlike measure.object_colour, white
    has no brightness floor: a preview's cells average the object with the dark ground, so its object is dimmer
    than the clip's, but no paler."""
    hsv = measure.object_hsv(measure.video_from_frames(torch.from_numpy(np.ascontiguousarray(frames))))
    if hsv is None:
        return None
    hue, saturation, _ = hsv
    if saturation < PALE:
        return "white"
    return min(HUES, key=lambda name: abs((hue - HUES[name] + 180) % 360 - 180))


@pytest.fixture(scope="module")
def coloured_clips(demo_model_dir, tmp_path_factory):
    """One clip of each of the world's colours on seeds the map was not fitted on (its fit used seed 0): each
    clip's frames, and the preview of its last stage's next-to-last step (the last one before the final latents)."""
    clips = []
    for number, colour in enumerate(world.COLOURS):
        job_dir = tmp_path_factory.mktemp("colours") / colour
        prompt = f"a {colour} {world.SHAPES[number % 2]} moving right with a high beep"
        write_job(job_dir, demo_model_dir, prompt=prompt, seed=101 + number, **SMALL)
        previews: dict[tuple[str, int], np.ndarray] = {}
        stage = []

        def emit(event, job_dir=job_dir, previews=previews, stage=stage):
            if isinstance(event, protocol.Stage):
                stage.append(event.name)
            elif isinstance(event, protocol.Preview) and event.file:
                previews[stage[-1], event.step] = np.asarray(Image.open(job_dir / event.file).convert("RGB"))

        generate(load_job(job_dir), emit, Cancellation(), time.monotonic())
        clips.append((colour, previews, np.stack(read_mp4(job_dir / jobdir.VIDEO_FILE).frames)))
    return clips


def test_a_late_preview_shows_the_final_clips_colour_in_at_least_4_of_5_seeds(coloured_clips):
    matches = []
    for colour, previews, frames in coloured_clips:
        assert sorted(previews) == [("denoise", step) for step in range(2, 9)] + [("refine", 2), ("refine", 3)]
        late = previews["refine", 2]
        matches.append((colour, dominant_colour(late[None]), dominant_colour(frames)))  # the strip as one frame

    assert sum(clip == shown for _, shown, clip in matches) >= 4, matches


def test_a_preview_is_a_strip_of_frames_across_the_clip_as_wide_as_a_page_shows_it(coloured_clips):
    _, previews, frames = coloured_clips[0]
    height, width = previews["refine", 3].shape[:2]
    latent_frames = 1 + (len(frames) - 1) // 8
    assert height * width / (frames.shape[1] * frames.shape[2]) > 0.5, "not a thumbnail to be blown up"
    assert width >= latent_frames * frames.shape[2] * 0.9 and width <= 1400


def test_a_model_without_a_map_says_so_learns_it_from_its_first_clip_then_shows_previews(demo_model_dir, tmp_path):
    model = tmp_path / "model" / "demo"
    shutil.copytree(demo_model_dir, model, ignore=shutil.ignore_patterns(MAP_FILE))
    colours_dir = tmp_path / "colours"
    for name in ("first", "second"):
        write_job(tmp_path / name, model, preview_colours_dir=str(colours_dir), **SMALL)

    exit_code, events, stderr = run_job(tmp_path / "first", timeout=120)
    assert exit_code == 0, stderr
    said = [event for event in events if isinstance(event, protocol.Preview)]
    assert [(e.file, e.note) for e in said] == [(None, NO_COLOURS)] * 2, "once per denoising stage, no picture"
    assert not (tmp_path / "first" / jobdir.PREVIEW_FILE).exists()
    (learnt,) = colours_dir.iterdir()
    assert json.loads(learnt.read_text())["model"] == "demo"

    exit_code, events, stderr = run_job(tmp_path / "second", timeout=120)
    assert exit_code == 0, stderr
    shown = [event for event in events if isinstance(event, protocol.Preview)]
    assert shown and all(e.file == jobdir.PREVIEW_FILE and e.note is None for e in shown)
    assert (tmp_path / "second" / jobdir.PREVIEW_FILE).is_file()
