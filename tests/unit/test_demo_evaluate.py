"""The demo evaluation's own machinery (what it measures: tests/integration/test_demo_quality.py)."""

from __future__ import annotations

import pytest

from gpu_runner.demo import evaluate, measure, world


@pytest.mark.parametrize("motion", world.MOTIONS)
def test_measuring_a_clip_once_for_colour_path_and_contacts_reads_as_each_measurement_alone(motion):
    """measure_clip finds the object once and hands it on; each measurement finds it again by itself."""
    fps, frames, rate = 24.0, 49, 16000
    scene = world.sample_scenes(1, 7, motion=motion)[0]
    video = world.render_video([scene], width=128, height=80, frames=frames, fps=fps)[0]
    audio = world.render_audio([scene], seconds=frames / fps, sample_rate=rate)[0]
    prompt = evaluate.Prompt(scene.colour, scene.shape, motion, scene.sound, seed=0)
    measured = evaluate.measure_clip(prompt, evaluate.Clip(video, audio, rate, fps))
    alone = (measure.object_colour(video), measure.direction(video), measure.floor_contacts(video, fps))
    assert (measured.colour, measured.direction, measured.contacts) == alone
    assert measured.colour == scene.colour  # a clip with an object: the measurements had something to find
    assert (len(measured.contacts) >= 1) == (motion == "bouncing")
