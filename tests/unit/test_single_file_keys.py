"""The single-file name table (gpu_runner/single_file_keys.py): known Lightricks names land where diffusers' own
converters put them, each name goes back to where it came from, and what is no LTX-2 tensor is refused."""

from __future__ import annotations

import pytest

from gpu_runner import single_file_keys as keys

# (single-file name, component, Diffusers name): LTX-2.0's as diffusers 0.42.1's convert_ltx2_* give them; 2.3's,
# the connectors' and the vocoders' as diffusers' conversion script renames them.
KNOWN = [
    ("model.diffusion_model.adaln_single.linear.weight", "transformer", "time_embed.linear.weight"),
    ("model.diffusion_model.audio_adaln_single.linear.bias", "transformer", "audio_time_embed.linear.bias"),
    ("model.diffusion_model.prompt_adaln_single.linear.weight", "transformer", "prompt_adaln.linear.weight"),
    ("model.diffusion_model.audio_patchify_proj.weight", "transformer", "audio_proj_in.weight"),
    (
        "model.diffusion_model.av_ca_a2v_gate_adaln_single.emb.timestep_embedder.linear_1.weight",
        "transformer",
        "av_cross_attn_video_a2v_gate.emb.timestep_embedder.linear_1.weight",
    ),
    (
        "model.diffusion_model.transformer_blocks.47.scale_shift_table_a2v_ca_audio",
        "transformer",
        "transformer_blocks.47.audio_a2v_cross_attn_scale_shift_table",
    ),
    (
        "model.diffusion_model.transformer_blocks.3.audio_attn2.q_norm.weight",
        "transformer",
        "transformer_blocks.3.audio_attn2.norm_q.weight",
    ),
    (
        "model.diffusion_model.video_embeddings_connector.transformer_1d_blocks.1.attn1.k_norm.weight",
        "connectors",
        "video_connector.transformer_blocks.1.attn1.norm_k.weight",
    ),
    ("text_embedding_projection.aggregate_embed.weight", "connectors", "text_proj_in.weight"),
    (
        "model.diffusion_model.text_embedding_projection.audio_aggregate_embed.bias",
        "connectors",
        "audio_text_proj_in.bias",
    ),
    ("vae.encoder.down_blocks.0.res_blocks.2.norm.bias", "vae", "encoder.down_blocks.0.resnets.2.norm.bias"),
    ("vae.encoder.down_blocks.7.conv.conv.bias", "vae", "encoder.down_blocks.3.downsamplers.0.conv.conv.bias"),
    ("vae.encoder.down_blocks.8.res_blocks.1.conv2.conv.bias", "vae", "encoder.mid_block.resnets.1.conv2.conv.bias"),
    ("vae.decoder.up_blocks.0.res_blocks.4.conv1.conv.bias", "vae", "decoder.mid_block.resnets.4.conv1.conv.bias"),
    ("vae.decoder.up_blocks.5.conv.conv.weight", "vae", "decoder.up_blocks.2.upsamplers.0.conv.conv.weight"),
    ("vae.decoder.up_blocks.8.res_blocks.0.conv1.conv.bias", "vae", "decoder.up_blocks.3.resnets.0.conv1.conv.bias"),
    ("vae.per_channel_statistics.mean-of-means", "vae", "latents_mean"),
    ("audio_vae.per_channel_statistics.std-of-means", "audio_vae", "latents_std"),
    ("audio_vae.decoder.up.1.upsample.conv.conv.weight", "audio_vae", "decoder.up.1.upsample.conv.conv.weight"),
    ("vocoder.ups.2.weight", "vocoder", "upsamplers.2.weight"),
    ("vocoder.conv_pre.bias", "vocoder", "conv_in.bias"),
    ("vocoder.vocoder.resblocks.4.convs1.0.weight", "vocoder", "vocoder.resnets.4.convs1.0.weight"),
    ("vocoder.bwe_generator.act_post.downsample.lowpass.filter", "vocoder", "bwe_generator.act_out.downsample.filter"),
    # LTX-2.5's (assumed, see the module's docstring)
    ("model.diffusion_model.keyframes_abs_pos_embedding", "transformer", "keyframes_abs_pos_embedding"),
    ("duration_head.attention_pooler.to_q.weight", "duration_head", "attention_pooler.to_q.weight"),
    ("diffusion_decoder.decoder.conv_in.weight", "diffusion_decoder", "decoder.conv_in.weight"),
]


@pytest.mark.parametrize(("single", "component", "diffusers"), KNOWN)
def test_a_known_single_file_name_lands_where_diffusers_puts_it_and_goes_back(single, component, diffusers):
    assert keys.to_diffusers(single) == (component, diffusers)
    version = "2.0" if single.startswith("text_embedding_projection.") else "2.3"
    assert keys.to_single_file(component, diffusers, version) == single


def test_the_upsampler_file_keeps_its_names_and_is_told_by_its_convolutions():
    names = {"initial_conv.weight", "initial_norm.weight", "res_blocks.0.conv1.weight", "final_conv.weight"}
    assert keys.is_upsampler_file(names)
    assert keys.to_diffusers("res_blocks.0.conv1.weight", upsampler_file=True) == (
        "latent_upsampler",
        "res_blocks.0.conv1.weight",
    )
    assert not keys.is_upsampler_file({"model.diffusion_model.adaln_single.linear.weight"})


def test_the_version_comes_from_the_dits_tensors():
    common = {"model.diffusion_model.adaln_single.linear.weight", "vae.encoder.conv_in.conv.weight"}
    assert keys.version_of(common) == "2.0"
    ltx2_3 = common | {"model.diffusion_model.prompt_adaln_single.linear.weight"}
    assert keys.version_of(ltx2_3) == "2.3"
    assert keys.version_of(ltx2_3 | {"model.diffusion_model.keyframes_abs_pos_embedding"}) == "2.5"
    assert keys.version_of({"model.diffusion_model.double_blocks.0.img_attn.qkv.weight"}) is None


def test_the_vae_statistics_a_diffusers_directory_has_no_place_for_are_dropped_and_strangers_refused():
    assert keys.to_diffusers("vae.per_channel_statistics.mean-of-stds") is None
    assert keys.to_diffusers("vae.per_channel_statistics.channel") is None
    with pytest.raises(keys.UnknownTensor):
        keys.to_diffusers("first_stage_model.decoder.conv_in.weight")
