"""Lightricks' single-file LTX-2 tensor names and the Diffusers-format names they become: the one table.

A Lightricks release (`ltx-2-19b-dev.safetensors`, `ltx-2.3-22b-distilled.safetensors`, their FP8 variants, the
files ComfyUI loads) is one file holding the DiT and its text connectors under `model.diffusion_model.`, the video
VAE under `vae.`, the audio VAE under `audio_vae.` and the vocoder under `vocoder.`; the x2 spatial upsampler is a
file of its own with bare names. Each name maps to one (component, Diffusers name) by whole dot-separated segments,
in both directions: `to_diffusers` for the import, `to_single_file` for tests that write a tiny model in the
single-file layout. Torch-free.

Where the names come from: diffusers 0.42.1's own single-file converters (`convert_ltx2_transformer_to_diffusers`,
`convert_ltx2_vae_to_diffusers`, `convert_ltx2_audio_vae_to_diffusers` in diffusers/loaders/single_file_utils.py:
LTX-2.0's transformer, VAE and audio VAE; the import is checked against them in the tests) and diffusers' conversion
script for the rest (LTX-2.3's `prompt_adaln_single`, its four-block VAE decoder, the connectors, both vocoders).
NOT CHECKED against a real file (none can be downloaded here): where a 2.3 file keeps the connectors' projection
(`text_embedding_projection.*` with or without the `model.diffusion_model.` prefix: both are accepted), the BWE
vocoder's names, and the upsampler file's names (taken to be the Diffusers ones, as diffusers' LTX upsampler
conversion keeps them). A name this table does not know stops the import, naming it.

LTX-2.5: its DiT is 2.3's (same names) with one more tensor, `keyframes_abs_pos_embedding` (the learnt marker of
keyframe-slot tokens; the name is diffusers' and, by third-party ports' accounts, the file's too) and feed-forwards
without bias. diffusers 0.42.1 has no 2.5 single-file converter, so NOT CHECKED: everything 2.5 adds. Taken here to be
2.3's layout (the DiT file holding the connectors, VAEs and vocoder) with the diffusion decoder under
`diffusion_decoder.` and the duration head under `duration_head.`, Diffusers' own names inside (in the DiT file or a
file of their own). By third-party ports' accounts Lightricks' 2.5 release is split differently: the DiT (with its
connectors but not their text projection, which ships in the Gemma-4 file), a video VAE file with bare names, an
audio VAE file with the vocoder, and a duration-head file in the reference implementation's names
(`attention_pooler.cross_attn.in_proj_weight`: one packed projection, not Diffusers' three); where the diffusion
decoder ships is not known. Such files stop the import, naming their unknown tensors, until their names are
known here.
"""

from __future__ import annotations

import re

DIT_PREFIXES = ("model.diffusion_model.", "diffusion_model.")  # Lightricks' / some ComfyUI re-saves
# The rest are DiT or upsampler. LTX-2.5's diffusion decoder and duration head: prefixes assumed (see above).
PREFIX_OF = {
    "vae": "vae.",
    "audio_vae": "audio_vae.",
    "vocoder": "vocoder.",
    "diffusion_decoder": "diffusion_decoder.",
    "duration_head": "duration_head.",
}
CONNECTOR_ROOTS = ("video_embeddings_connector", "audio_embeddings_connector", "text_embedding_projection")
UPSAMPLER_MARKERS = ("initial_conv.weight", "final_conv.weight")  # what makes a bare-named file the upsampler
KEYFRAME_EMBEDDING = "keyframes_abs_pos_embedding"  # LTX-2.5's DiT only (Diffusers keeps the name)
# Tensors of the single file that have no place in a Diffusers directory (the VAE's extra statistics).
DROPPED = re.compile(r"vae\.per_channel_statistics\.(channel|mean-of-stds)")

# (single-file segment(s), Diffusers segment(s)), matched on whole segments, in this order; per component.
_TRANSFORMER = (
    ("patchify_proj", "proj_in"),
    ("audio_patchify_proj", "audio_proj_in"),
    ("adaln_single", "time_embed"),
    ("audio_adaln_single", "audio_time_embed"),
    ("prompt_adaln_single", "prompt_adaln"),  # 2.3
    ("audio_prompt_adaln_single", "audio_prompt_adaln"),  # 2.3
    ("av_ca_video_scale_shift_adaln_single", "av_cross_attn_video_scale_shift"),
    ("av_ca_a2v_gate_adaln_single", "av_cross_attn_video_a2v_gate"),
    ("av_ca_audio_scale_shift_adaln_single", "av_cross_attn_audio_scale_shift"),
    ("av_ca_v2a_gate_adaln_single", "av_cross_attn_audio_v2a_gate"),
    ("scale_shift_table_a2v_ca_video", "video_a2v_cross_attn_scale_shift_table"),
    ("scale_shift_table_a2v_ca_audio", "audio_a2v_cross_attn_scale_shift_table"),
    ("q_norm", "norm_q"),
    ("k_norm", "norm_k"),
)
_CONNECTORS = (
    ("video_embeddings_connector", "video_connector"),
    ("audio_embeddings_connector", "audio_connector"),
    ("transformer_1d_blocks", "transformer_blocks"),
    ("text_embedding_projection.aggregate_embed", "text_proj_in"),  # 2.0: one projection
    ("text_embedding_projection.video_aggregate_embed", "video_text_proj_in"),  # 2.3: one per modality
    ("text_embedding_projection.audio_aggregate_embed", "audio_text_proj_in"),
    ("q_norm", "norm_q"),
    ("k_norm", "norm_k"),
)
_VAE_COMMON = (
    ("res_blocks", "resnets"),
    ("per_channel_statistics.mean-of-means", "latents_mean"),
    ("per_channel_statistics.std-of-means", "latents_std"),
)
_AUDIO_VAE = _VAE_COMMON[1:]
_VOCODER = (
    ("ups", "upsamplers"),
    ("resblocks", "resnets"),
    ("conv_pre", "conv_in"),
    ("conv_post", "conv_out"),
    ("act_post", "act_out"),  # 2.3's anti-aliased activations
    ("downsample.lowpass", "downsample"),
)
RENAMES = {
    "transformer": _TRANSFORMER,
    "connectors": _CONNECTORS,
    "vae": _VAE_COMMON,
    "audio_vae": _AUDIO_VAE,
    "vocoder": _VOCODER,
    "latent_upsampler": (),
    "diffusion_decoder": (),
    "duration_head": (),
}


class UnknownTensor(ValueError):
    """A tensor name that belongs to no LTX-2 component."""


def _segments(text: str, old: str, new: str) -> str:
    return re.sub(rf"(?<![^.]){re.escape(old)}(?![^.])", new, text)


def _rename(name: str, pairs: tuple[tuple[str, str], ...], forward: bool) -> str:
    for old, new in pairs if forward else tuple((new, old) for old, new in reversed(pairs)):
        name = _segments(name, old, new)
    return name


# The video VAE's blocks: the single file numbers blocks and their resamplers in one sequence (encoder: block,
# downsampler, block, ..., mid; decoder: mid, upsampler, block, upsampler, block, ...); Diffusers nests them.
def _vae_blocks_to_diffusers(name: str, encoder_blocks: int) -> str:
    def down(match: re.Match[str]) -> str:
        index = int(match[1])
        if index == 2 * encoder_blocks:
            return "encoder.mid_block"
        return f"encoder.down_blocks.{index // 2}" + (".downsamplers.0" if index % 2 else "")

    def up(match: re.Match[str]) -> str:
        index = int(match[1])
        if index == 0:
            return "decoder.mid_block"
        return f"decoder.up_blocks.{(index - 1) // 2}" + (".upsamplers.0" if index % 2 else "")

    name = re.sub(r"^encoder\.down_blocks\.(\d+)", down, name)
    return re.sub(r"^decoder\.up_blocks\.(\d+)", up, name)


def _vae_blocks_to_single_file(name: str, encoder_blocks: int) -> str:
    def down(match: re.Match[str]) -> str:
        if match[1] is None:
            return f"encoder.down_blocks.{2 * encoder_blocks}"
        return f"encoder.down_blocks.{2 * int(match[1]) + (1 if match[2] else 0)}"

    def up(match: re.Match[str]) -> str:
        if match[1] is None:
            return "decoder.up_blocks.0"
        return f"decoder.up_blocks.{2 * int(match[1]) + (1 if match[2] else 2)}"

    name = re.sub(r"^encoder\.(?:mid_block|down_blocks\.(\d+)(\.downsamplers\.0)?)", down, name)
    return re.sub(r"^decoder\.(?:mid_block|up_blocks\.(\d+)(\.upsamplers\.0)?)", up, name)


def encoder_blocks(names: list[str] | tuple[str, ...] | set[str]) -> int:
    """How many down blocks a single file's video VAE has: its last encoder entry is the mid block (2 x blocks)."""
    indices = [int(m[1]) for name in names if (m := re.match(r"vae\.encoder\.down_blocks\.(\d+)\.", name))]
    return max(indices, default=0) // 2


def component_of(name: str, upsampler_file: bool) -> tuple[str, str]:
    """(component, the name inside it with its single-file prefix removed) of one tensor of a single file."""
    if upsampler_file:
        return "latent_upsampler", name
    for prefix in DIT_PREFIXES:
        if name.startswith(prefix):
            inner = name.removeprefix(prefix)
            return ("connectors" if inner.startswith(CONNECTOR_ROOTS) else "transformer"), inner
    if name.startswith("text_embedding_projection."):  # 2.0 keeps the connectors' projection outside the DiT
        return "connectors", name
    for component, prefix in PREFIX_OF.items():
        if name.startswith(prefix):
            return component, name.removeprefix(prefix)
    raise UnknownTensor(name)


def to_diffusers(name: str, upsampler_file: bool = False, vae_encoder_blocks: int = 4) -> tuple[str, str] | None:
    """(component, Diffusers name) of a single-file tensor name; None for a tensor a Diffusers directory drops."""
    if DROPPED.fullmatch(name):
        return None
    component, inner = component_of(name, upsampler_file)
    if component == "vae":
        inner = _vae_blocks_to_diffusers(inner, vae_encoder_blocks)
    return component, _rename(inner, RENAMES[component], forward=True)


def to_single_file(component: str, name: str, version: str, vae_encoder_blocks: int = 4) -> str:
    """The single-file name of a Diffusers component's tensor (for writing test files in Lightricks' layout)."""
    inner = _rename(name, RENAMES[component], forward=False)
    if component == "vae":
        inner = _vae_blocks_to_single_file(inner, vae_encoder_blocks)
    if component == "latent_upsampler":
        return inner
    if component in ("transformer", "connectors"):
        # 2.0's projection sits outside the DiT's prefix (as diffusers' conversion script reads it); 2.3's inside.
        if version == "2.0" and inner.startswith("text_embedding_projection."):
            return inner
        return DIT_PREFIXES[0] + inner
    return PREFIX_OF[component] + inner


def is_upsampler_file(names: list[str] | set[str]) -> bool:
    return all(marker in names for marker in UPSAMPLER_MARKERS)


def version_of(names: set[str]) -> str | None:
    """2.5, 2.3 or 2.0 from which tensors a single file holds (2.3: gated attention and prompt modulation; 2.5:
    2.3's with the keyframe slots' learnt position embedding); None when it holds no LTX-2 DiT. (2.5's other change,
    feed-forwards without bias, is read from the shapes with the rest of its config.)"""
    dit = {name.removeprefix(prefix) for name in names for prefix in DIT_PREFIXES if name.startswith(prefix)}
    if not any(name.startswith(("adaln_single.", "patchify_proj.")) for name in dit):
        return None
    if KEYFRAME_EMBEDDING in dit:
        return "2.5"
    gated = any(".to_gate_logits." in name or name.startswith("prompt_adaln_single.") for name in dit)
    return "2.3" if gated else "2.0"
