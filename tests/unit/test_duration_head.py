"""The duration head's frame count (gpu_runner/families/ltx2/duration.py): a tiny random LTX2DurationHead whose
output layer is set to predict a chosen duration, through the function the runner calls."""

from __future__ import annotations

import pytest
import torch

from contract.request import Constraints, max_frames_for_fps, valid_frame_counts
from gpu_runner.demo.text_extras import duration_head
from gpu_runner.families.ltx2.duration import load_duration_head, predict_num_frames

VIDEO_WIDTH, AUDIO_WIDTH = 8, 4


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """The head as the runner gets it: saved in a model's duration_head/ and loaded from there."""
    directory = tmp_path_factory.mktemp("model") / "duration_head"
    duration_head(VIDEO_WIDTH, AUDIO_WIDTH).save_pretrained(directory)
    return load_duration_head(directory, torch.device("cpu"))


def predicting(head, seconds: float):
    """`head` (its weights) made to predict `seconds` whatever the prompt, as the demo's builder makes one."""
    head.load_state_dict(duration_head(VIDEO_WIDTH, AUDIO_WIDTH, seconds).state_dict())
    return head


def embeds(tokens: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    video = torch.randn(1, tokens, VIDEO_WIDTH, generator=generator)
    return video, torch.randn(1, tokens, AUDIO_WIDTH, generator=generator)


def frames_for(head, seconds: float, fps: float = 24.0) -> int:
    c = Constraints()
    video, audio = embeds()
    return predict_num_frames(
        predicting(head, seconds),
        video,
        audio,
        frame_rate=fps,
        min_frames=c.min_frames,
        max_frames=max_frames_for_fps(c, fps),
    )


def test_a_duration_becomes_the_grid_frame_count_at_or_below_it(head):
    # 5 s at 24 fps is 120 frames; the grid below is 113 (8 x 14 + 1)
    assert frames_for(head, 5.0) == 113
    assert frames_for(head, 5.0, fps=30.0) == 145  # 150 frames, floored onto the grid
    assert frames_for(head, 121 / 24) == 121  # exactly a grid point stays


def test_durations_outside_the_model_limits_are_clamped_to_them(head):
    c = Constraints()
    assert frames_for(head, 600.0) == max_frames_for_fps(c, 24.0) == 481
    assert frames_for(head, 600.0, fps=50.0) == max_frames_for_fps(c, 50.0)  # the 20 s limit at 50 fps
    assert frames_for(head, 0.01) == c.min_frames


@pytest.mark.parametrize("fps", [24.0, 25.0, 30.0, 48.0])
def test_every_answer_is_a_frame_count_the_request_rules_accept(head, fps):
    accepted = set(valid_frame_counts(Constraints(), fps))
    for seconds in (0.2, 0.9, 1.3, 2.71, 7.7, 11.1, 19.9, 20.0, 33.0):
        assert frames_for(head, seconds, fps) in accepted


def test_one_prompt_at_a_time_and_bounds_on_the_grid(head):
    video, audio = embeds()
    with pytest.raises(ValueError, match="batch 1"):
        two = video.repeat(2, 1, 1), audio.repeat(2, 1, 1)
        predict_num_frames(head, *two, frame_rate=24, min_frames=9, max_frames=481)
    with pytest.raises(ValueError, match="8k\\+1"):
        predict_num_frames(head, video, audio, frame_rate=24, min_frames=9, max_frames=480)
