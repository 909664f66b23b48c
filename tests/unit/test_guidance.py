"""The STG pass reuses the positive CFG row's first blocks: the same latents, fewer block runs."""

from __future__ import annotations

import torch
from diffusers import LTX2VideoTransformer3DModel
from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition
from PIL import Image

from gpu_runner.families.ltx2.conditioning import image_crf
from gpu_runner.families.ltx2.guidance import share_stg_prefix, unshare_stg_prefix
from gpu_runner.families.ltx2.loading import DiffusersDirectory
from gpu_runner.families.ltx2.text import PrecomputedConnectors
from gpu_runner.memory import fit_long_clips
from tests.unit.test_fp8 import transformer_inputs

STG_BLOCKS = [3]  # of the demo transformer's six: the STG pass can reuse blocks 0-2
PREFIX, REST = 3, 3
STEPS = 2
# The shared path runs block 0 on one row where the plain one runs it in a batch of two: the same
# sums in float32, summed in another order at most.
LATENTS_TOLERANCE = 1e-5


def denoiser(model_dir, conditioned: bool = False):
    torch.manual_seed(0)
    tokens = 6
    width = LTX2VideoTransformer3DModel.load_config(model_dir, subfolder="transformer")["caption_channels"]
    context = {
        "video": torch.randn(2, tokens, width),
        "audio": torch.randn(2, tokens, width),
        "mask": torch.ones(2, tokens, dtype=torch.int64),
    }
    pipe = DiffusersDirectory(model_dir).load_denoiser(
        torch.float32, "fp32", PrecomputedConnectors(context), torch.device("cpu"), conditioned
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def block_runs(transformer) -> list[int]:
    """Counts each block's calls, in a list that grows as the blocks run."""
    runs = [0] * len(transformer.transformer_blocks)
    for index, block in enumerate(transformer.transformer_blocks):
        block.register_forward_pre_hook(lambda _module, _args, index=index: runs.__setitem__(index, runs[index] + 1))
    return runs


def default_guidance_latents(pipe, **conditions) -> tuple[torch.Tensor, torch.Tensor]:
    """Two steps of default guidance (CFG, STG at block 3, modality) at 64x64, 9 frames."""
    video, audio = pipe(
        **conditions,
        **pipe.connectors.placeholder_embeds(),
        width=64,
        height=64,
        num_frames=9,
        frame_rate=24,
        num_inference_steps=STEPS,
        guidance_scale=3.0,
        stg_scale=1.0,
        modality_scale=3.0,
        spatio_temporal_guidance_blocks=STG_BLOCKS,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="latent",
        return_dict=False,
    )
    return video, audio


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_default_guidance_gives_the_same_latents_with_the_stg_pass_starting_at_its_block(demo_model_dir) -> None:
    plain = denoiser(demo_model_dir)
    plain_runs = block_runs(plain.transformer)
    expected = default_guidance_latents(plain)

    shared = denoiser(demo_model_dir)
    shared_runs = block_runs(shared.transformer)
    blocks = shared.transformer.transformer_blocks
    share_stg_prefix(shared.transformer, STG_BLOCKS)
    got = default_guidance_latents(shared)

    for a, b in zip(got, expected, strict=True):
        assert relative_difference(a, b) < LATENTS_TOLERANCE
    # Per step: the CFG batch, the STG pass, the modality pass; the STG pass skips blocks 0-2.
    assert plain_runs == [3 * STEPS] * (PREFIX + REST)
    assert shared_runs == [2 * STEPS] * PREFIX + [3 * STEPS] * REST
    assert shared.transformer.transformer_blocks is blocks  # put back after every pass


def test_image_to_video_shares_the_same_way(demo_model_dir) -> None:
    """LTX2ConditionPipeline's loop (per-token timesteps, a conditioned first frame) passes the same check."""
    red = Image.new("RGB", (64, 64), (200, 30, 30))
    first_frame = {"conditions": [LTX2VideoCondition(frames=red, index=0, strength=1.0, crf=image_crf("2.0"))]}
    expected = default_guidance_latents(denoiser(demo_model_dir, conditioned=True), **first_frame)

    shared = denoiser(demo_model_dir, conditioned=True)
    share_stg_prefix(shared.transformer, STG_BLOCKS)
    runs = block_runs(shared.transformer)
    got = default_guidance_latents(shared, **first_frame)

    for a, b in zip(got, expected, strict=True):
        assert relative_difference(a, b) < LATENTS_TOLERANCE
    assert runs == [2 * STEPS] * PREFIX + [3 * STEPS] * REST


def test_a_long_clips_row_by_row_cfg_batch_still_shares_its_positive_row(demo_model_dir) -> None:
    plain = denoiser(demo_model_dir)
    expected = default_guidance_latents(plain)

    shared = denoiser(demo_model_dir)
    fit_long_clips(shared.transformer, tokens=1000, long_clip=8)  # every clip is long: CFG rows one at a time
    share_stg_prefix(shared.transformer, STG_BLOCKS)
    runs = block_runs(shared.transformer)
    got = default_guidance_latents(shared)

    for a, b in zip(got, expected, strict=True):
        assert relative_difference(a, b) < LATENTS_TOLERANCE
    # Per step: CFG's two rows, the modality pass; the STG pass skips blocks 0-2.
    assert runs == [3 * STEPS] * PREFIX + [4 * STEPS] * REST


def test_an_stg_call_that_is_not_the_positive_row_runs_in_full(demo_model_dir) -> None:
    transformer = denoiser(demo_model_dir).transformer
    runs = block_runs(transformer)
    cfg = transformer_inputs(transformer.config, batch=2)
    positive = {name: value[1:] if isinstance(value, torch.Tensor) else value for name, value in cfg.items()}
    other_latents = dict(positive, hidden_states=positive["hidden_states"] + 1.0)
    with torch.no_grad():
        expected = transformer(**other_latents, spatio_temporal_guidance_blocks=STG_BLOCKS)
        share_stg_prefix(transformer, STG_BLOCKS)
        runs[:] = [0] * (PREFIX + REST)
        transformer(**cfg)
        got = transformer(**other_latents, spatio_temporal_guidance_blocks=STG_BLOCKS)
        reused = transformer(**cfg), transformer(**positive, spatio_temporal_guidance_blocks=STG_BLOCKS)

    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
    # The CFG call, the other latents' full STG pass, the CFG call again, then the reusing STG pass.
    assert runs == [3] * PREFIX + [4] * REST
    with torch.no_grad():
        full = transformer.__class__.forward(transformer, **positive, spatio_temporal_guidance_blocks=STG_BLOCKS)
    for a, b in zip(reused[1], full, strict=True):
        assert relative_difference(a, b) < LATENTS_TOLERANCE


def test_nothing_is_shared_without_an_stg_block_after_the_first(demo_model_dir) -> None:
    transformer = denoiser(demo_model_dir).transformer
    forward = transformer.forward
    share_stg_prefix(transformer, None)
    share_stg_prefix(transformer, [0])
    assert transformer.forward == forward


def test_unsharing_puts_back_the_forward_sharing_wrapped_however_often_it_was_shared(demo_model_dir) -> None:
    """A warm runner's resident transformer sheds the last job's sharing: its next job's STG pass runs every block
    unless that job shares again."""
    transformer = denoiser(demo_model_dir).transformer
    cfg = transformer_inputs(transformer.config, batch=2)
    positive = {name: value[1:] if isinstance(value, torch.Tensor) else value for name, value in cfg.items()}
    fit_long_clips(transformer, tokens=cfg["hidden_states"].shape[1], long_clip=8)  # a long clip's job, first
    fitted = transformer.__dict__["forward"]
    share_stg_prefix(transformer, STG_BLOCKS)
    share_stg_prefix(transformer, STG_BLOCKS)

    unshare_stg_prefix(transformer)
    assert transformer.__dict__["forward"] is fitted
    runs = block_runs(transformer)
    with torch.no_grad():
        transformer(**cfg)
        transformer(**positive, spatio_temporal_guidance_blocks=STG_BLOCKS)
    assert runs == [3] * (PREFIX + REST), "CFG's two rows one at a time, then the whole STG pass"

    plain = denoiser(demo_model_dir).transformer
    share_stg_prefix(plain, STG_BLOCKS)
    unshare_stg_prefix(plain)
    assert "forward" not in plain.__dict__, "the class's forward again"
