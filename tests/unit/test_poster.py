"""Posters: the muxer's (the clip's middle frame, written once video.mp4 is in place, at most 640 px wide) and the
start-up maker's for clips that have none (`python -m gpu_runner posters <jobs dir>`), confined to job directories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from contract import jobdir
from gpu_runner import poster
from tests.portal import REPO_ROOT
from tests.runner_fixtures import read_mp4
from tests.unit.test_mux import moving_gradient, tone, write_clip


def poster_pixels(path: Path) -> np.ndarray:
    with Image.open(path, formats=["JPEG"]) as image:
        return np.asarray(image.convert("RGB"))


def test_the_muxer_writes_the_clips_middle_frame_once_the_video_is_complete(tmp_path: Path) -> None:
    frames = moving_gradient(25, 96, 160)
    path = tmp_path / "poster.jpg"
    write_clip(tmp_path / "video.mp4", frames, 24.0, tone(25 / 24), chunk_frames=7, poster=poster.PosterFrame(path, 25))

    assert sorted(p.name for p in tmp_path.iterdir()) == ["poster.jpg", "video.mp4"], "no temporary file left"
    pixels = poster_pixels(path)
    assert pixels.shape == (96, 160, 3), "the clip's size"
    decoded = read_mp4(tmp_path / "video.mp4").frames
    # JPEG is lossy too: the poster is nearer the clip's middle frame (12 of 25) than any other frame of it
    errors = [np.abs(pixels.astype(int) - frame).mean() for frame in decoded]
    assert int(np.argmin(errors)) == 12 and errors[12] < 4, errors


def test_a_wide_clips_poster_is_640_px_wide_with_its_aspect_kept(tmp_path: Path) -> None:
    frames = moving_gradient(9, 450, 1280)
    poster.write_poster(frames[4], tmp_path / "poster.jpg")

    pixels = poster_pixels(tmp_path / "poster.jpg")
    assert pixels.shape == (225, 640, 3)
    scaled = np.asarray(Image.fromarray(frames[4]).resize((640, 225), Image.Resampling.LANCZOS))
    assert np.abs(pixels.astype(int) - scaled).mean() < 4


def test_a_poster_that_cannot_be_written_leaves_nothing_and_the_clip_is_kept(tmp_path: Path) -> None:
    blocked = tmp_path / "poster.jpg"
    blocked.mkdir()  # the rename onto it fails
    frames = moving_gradient(9, 64, 64)
    write_clip(tmp_path / "video.mp4", frames, 24.0, tone(1.0), poster=poster.PosterFrame(blocked, 9))

    assert len(read_mp4(tmp_path / "video.mp4").frames) == 9, "the job's clip is whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poster.jpg", "video.mp4"], "no temporary file left"
    assert blocked.is_dir() and not any(blocked.iterdir())


def job_dir_with(jobs_dir: Path, name: str, *, video: bool = True, job_file: bool = True) -> Path:
    job_dir = jobs_dir / name
    job_dir.mkdir(parents=True)
    if job_file:
        (job_dir / jobdir.JOB_FILE).write_text("{}")
    if video:
        write_clip(job_dir / jobdir.VIDEO_FILE, moving_gradient(17, 64, 96), 24.0, tone(1.0))
    return job_dir


def test_the_poster_maker_gives_each_job_directorys_clip_its_middle_frame_and_touches_nothing_else(
    tmp_path: Path,
) -> None:
    jobs = tmp_path / "jobs"
    wanting = job_dir_with(jobs, "a" * 32)
    no_video = job_dir_with(jobs, "b" * 32, video=False)
    has_one = job_dir_with(jobs, "c" * 32)
    (has_one / jobdir.POSTER_FILE).write_bytes(b"the runner's own")
    not_a_job = job_dir_with(jobs, "not-a-job", job_file=False)
    broken = job_dir_with(jobs, "d" * 32, video=False)
    (broken / jobdir.VIDEO_FILE).write_bytes(b"not an mp4")
    outside = job_dir_with(tmp_path / "elsewhere", "e" * 32)
    (jobs / "linked").symlink_to(outside)  # a symlink is no job directory
    linked_video = job_dir_with(jobs, "f" * 32, video=False)
    (linked_video / jobdir.VIDEO_FILE).symlink_to(outside / jobdir.VIDEO_FILE)
    (jobs / "spare-runner.log").write_text("a file, not a job")

    assert jobdir.jobs_wanting_posters(jobs) == [wanting, broken]
    made = subprocess.run(
        [sys.executable, "-m", "gpu_runner", "posters", str(jobs)], cwd=REPO_ROOT, capture_output=True, text=True
    )

    assert made.returncode == 1, made.stderr  # one could not be made
    assert f"job {broken.name}: no poster made" in made.stderr and "posters made: 1," in made.stderr, made.stderr
    assert made.stdout == ""
    decoded = read_mp4(wanting / jobdir.VIDEO_FILE).frames
    errors = [np.abs(poster_pixels(wanting / jobdir.POSTER_FILE).astype(int) - frame).mean() for frame in decoded]
    assert int(np.argmin(errors)) == 8 and errors[8] < 4, "the middle frame of 17, decoded from video.mp4"
    assert (has_one / jobdir.POSTER_FILE).read_bytes() == b"the runner's own"
    for untouched in (no_video, not_a_job, broken, outside, linked_video):
        assert not os.path.lexists(untouched / jobdir.POSTER_FILE), untouched
        assert not [p.name for p in untouched.iterdir() if p.name.endswith(".partial")], untouched
    assert jobdir.jobs_wanting_posters(jobs) == [broken], "made once: a second run has only the broken one to try"
