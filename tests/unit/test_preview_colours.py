"""Preview colours: the least-squares fit, the pooling of decoded frames into latent cells, the map's file, and
what a preview writes with a map and without one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from contract import jobdir
from gpu_runner.families.ltx2.preview import NO_COLOURS, PreviewWriter
from gpu_runner.preview_colours import (
    MAP_FILE,
    CellPooler,
    ColourLearner,
    ColourMap,
    ColourStore,
    fit,
    latent_frame_of,
    standing_out,
)


def test_the_fit_recovers_a_known_linear_map_with_its_bias():
    generator = torch.Generator().manual_seed(3)
    truth = torch.randn(9, 3, generator=generator) * 20
    truth[-1] = torch.tensor([128.0, 40.0, 200.0])
    cells = torch.randn(500, 8, generator=generator)
    colours = cells @ truth[:-1] + truth[-1] + torch.randn(500, 3, generator=generator) * 0.5  # a little noise

    matrix, rms = fit(cells, colours)

    assert torch.allclose(matrix, truth, atol=0.2)
    assert rms == pytest.approx(0.5, abs=0.1)


def test_latent_frame_0_holds_pixel_frame_0_alone_and_each_later_one_the_next_k_frames():
    assert latent_frame_of(np.arange(18), 8).tolist() == [0] + [1] * 8 + [2] * 8 + [3]


def test_pooling_averages_each_cell_over_its_pixels_and_its_temporal_group_across_chunk_boundaries():
    # 17 frames of 4x6 pixels at 2 pixels and 8 frames a latent: latents (3, 2, 3); a frame's value is its index
    frames = np.stack([np.full((4, 6, 3), index, dtype=np.uint8) for index in range(17)])
    frames[:, :2, :2, 0] += 100  # the top-left cell's red, in every frame
    pooler = CellPooler((3, 2, 3), frames_per_latent=8, pixels_per_latent=2)
    for chunk in (frames[:5], frames[5:12], frames[12:]):  # chunks that split temporal groups
        pooler.add(chunk)

    means = pooler.means()

    assert means.shape == (3, 2, 3, 3)
    assert means[:, 1, 2, 1].tolist() == [0.0, 4.5, 12.5]  # frame 0; mean of 1..8; mean of 9..16
    assert means[:, 0, 0, 0].tolist() == [100.0, 104.5, 112.5]


def test_cells_no_frame_reached_are_left_out_of_the_fit():
    cells = torch.randn(3, 1, 1, 2)
    learner = ColourLearner(cells, frames_per_latent=8, pixels_per_latent=1)
    learner.add(np.zeros((9, 1, 1, 3), dtype=np.uint8))  # latent frames 0 and 1 only
    samples, colours, weights = learner.samples()
    assert torch.equal(samples, cells[:2].reshape(2, 2)) and colours.shape == (2, 3) and weights.shape == (2,)


def test_cells_standing_out_from_the_clips_ground_weigh_more_in_the_fit():
    ground, ball = [10.0, 10.0, 12.0], [10.0 + 96, 10.0, 12.0]
    weights = standing_out(torch.tensor([ground] * 9 + [ball]))
    assert weights[:9].tolist() == [1.0] * 9 and weights[9] == pytest.approx(1 + 3**2)
    # a cell's weight counts as that many copies of it
    cells, colours = torch.randn(10, 2), torch.randn(10, 3) * 50
    copies = torch.tensor([1] * 9 + [4])
    repeated = fit(cells.repeat_interleave(copies, dim=0), colours.repeat_interleave(copies, dim=0))[0]
    assert torch.allclose(fit(cells, colours, copies.float())[0], repeated, atol=1e-3)


def a_map(bias: tuple[float, float, float], channels: int = 4, model: str = "m", vae: str = "v1") -> ColourMap:
    return ColourMap(torch.cat([torch.zeros(channels, 3), torch.tensor([bias])]), model, vae, 1.5)


def test_a_learnt_map_is_written_whole_and_read_back_for_the_same_model_and_vae_only(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    store = ColourStore(model_dir, tmp_path / "colours", "m", "v1")
    assert store.load() is None

    store.save(a_map((200, 20, 20)))
    store.save(a_map((20, 200, 20)))  # replaced whole

    assert [path.name for path in (tmp_path / "colours").iterdir()] == [store.path.name], "no partial file left"
    assert torch.equal(store.load().matrix[-1], torch.tensor([20.0, 200, 20]))
    assert ColourStore(model_dir, tmp_path / "colours", "m", "v2").load() is None, "the same id with another VAE"
    other = ColourStore(model_dir, tmp_path / "colours", "other", "v1")
    assert other.path != store.path and other.load() is None
    hostile = ColourStore(model_dir, tmp_path / "colours", "../../etc/passwd", "v1")
    assert hostile.path.parent == tmp_path / "colours", "a model's id never becomes a path"


def test_a_map_shipped_in_the_model_directory_comes_first_and_a_damaged_file_counts_as_none(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    store = ColourStore(model_dir, tmp_path / "colours", "m", "v1")
    store.save(a_map((20, 200, 20)))
    (model_dir / MAP_FILE).write_bytes(a_map((200, 20, 20), model="", vae="").to_json())
    assert torch.equal(store.load().matrix[-1], torch.tensor([200.0, 20, 20]))

    (model_dir / MAP_FILE).write_text(json.dumps({"format": 1, "model": "", "vae": "", "matrix": [[1, 2]]}))
    store.path.write_text("{")
    assert store.load() is None


def run_writer(writer: PreviewWriter, steps: int, frames: int, cells: int, channels: int) -> list:
    sigmas = torch.linspace(1, 0, steps + 1)
    clean, noise = torch.randn(1, frames * cells, channels), torch.randn(1, frames * cells, channels)
    works = [writer.after_step(sigmas, i, (1 - sigmas[i + 1]) * clean + sigmas[i + 1] * noise) for i in range(steps)]
    return [None if work is None else work() for work in works]


def test_a_model_with_no_map_gets_no_picture_and_one_event_saying_so(tmp_path):
    writer = PreviewWriter(lambda name: tmp_path / name, (3, 2, 4), total_steps=6, colours=None, previews=3)

    events = [event for event in run_writer(writer, 6, 3, 8, 4) if event is not None]

    assert [(e.file, e.step, e.note) for e in events] == [(None, 2, NO_COLOURS)]
    assert list(tmp_path.iterdir()) == []


def test_a_preview_takes_its_colours_from_the_map_unstretched(tmp_path):
    # a map that ignores the latents: every cell is the bias's dark red, which a stretch would have turned bright
    writer = PreviewWriter(lambda name: tmp_path / name, (3, 2, 4), total_steps=4, colours=a_map((90, 10, 10)))

    events = [event for event in run_writer(writer, 4, 3, 8, 4) if event is not None]

    assert [(e.file, e.step) for e in events] == [(jobdir.PREVIEW_FILE, step) for step in (2, 3, 4)]
    image = np.asarray(Image.open(tmp_path / jobdir.PREVIEW_FILE).convert("RGB")).astype(int)
    frame = image[4:-4, 4 : 4 * writer.upscale - 4]  # the first frame of the strip, away from JPEG's edge ringing
    assert np.abs(frame - [90, 10, 10]).max() <= 6  # JPEG's error
