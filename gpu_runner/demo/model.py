"""The demo model: LTX-2's architecture at a tiny size, trained on a synthetic world.

Every component is the class the real model uses, saved in the Diffusers layout, so the
runner loads and drives the demo exactly as it would a real LTX-2 directory. What makes it
tiny is width and depth only; the video VAE keeps the real compression (32x in space, 8x
in time with a causal first frame), so the real size and frame-count rules apply unchanged.

The trained weights ship with the project in `gpu_runner/demo/weights` (see MODEL_CARD.md
there; `gpu_runner/demo/train.py` made them), installed by `python -m gpu_runner demo-model`,
with fast mode's parts beside the pipeline's: a x2 spatial `latent_upsampler/` and a
`transformer_distilled/` for the distilled 8 + 3 sigmas. The same architecture with random
weights is kept for tests that need only shapes, and is what training starts from.

`build_version_model` makes the same tiny sizes in the layout of one LTX-2 version (2.0, 2.3 or 2.5:
the same component classes and config keys as the full-size model, see `VERSION_LAYOUTS`), dev or
distilled, with a x2 spatial latent upsampler: random weights, for checking the model library's
recognition and the runner on a CPU. 2.5's is laid out as its published repository: a Gemma-4 text
encoder, a distilled transformer/ and scheduler, the dev transformer_full/, a diffusion_decoder/, a
duration_head/ (fixed to choose TINY_DURATION_S) and the optional prompt_enhancer/ (gpu_runner/demo/text_extras.py).
"""

from __future__ import annotations

import json
import os
import shutil
import string
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from contract import library
from contract import models as specs
from contract.library import TRANSFORMER_SWITCHES

FORMAT_VERSION = 5  # 3: fast mode's latent_upsampler/ and transformer_distilled/; 4: preview_colours.json; 5: loras/
SEED = 0
TINY_DURATION_S = 0.375  # what the tiny 2.5 model's duration head always picks: 9 frames at 24 fps
TRAINED_WEIGHTS = Path(__file__).resolve().parent / "weights"
Weights = Literal["trained", "random"]
Version = Literal["2.0", "2.3", "2.5"]
Variant = Literal["dev", "distilled"]

# Widths that must agree across components (the real model's values in comments).
TEXT_WIDTH = 64  # Gemma-3 hidden size = connector heads x head dim (3840 = 30 x 128)
TEXT_LAYERS = 2  # the connectors read every hidden state: layers + embeddings (48 + 1)
PROMPT_TOKENS = 128  # tokenizer length; a multiple of the connectors' registers (1024, 128)
CONNECTOR_REGISTERS = 32
VIDEO_LATENT_CHANNELS = 32  # 128
AUDIO_LATENT_CHANNELS = 4  # 8
MEL_BINS = 64  # 64; the audio VAE compresses mel bins 4x
AUDIO_RATE = 24000  # the vocoder's output rate (LTX-2.0: 24 kHz from 16 kHz mel, hop 160)
VOCODER_UPSAMPLING = (6, 5, 2, 2, 2)  # 240 samples per mel frame: 16000 / 160 * 240 = 24000

# Words the demo tokenizer learns whole; anything else falls back to pieces, letters and bytes.
_PROMPT_WORDS = """
a an the of in on at to from with and or but by over under through into across around behind
between near far above below up down left right front back inside outside while as is are was
camera shot close wide slow fast pan tilt zoom tracking aerial handheld static cinematic angle
view scene frame light lighting shadow sun sunset sunrise night day morning evening golden hour
warm cold soft hard bright dark dim glow neon color colour red orange yellow green blue purple
pink white black grey gray brown silver gold clear foggy misty rain snow storm wind cloud clouds
sky sea ocean wave waves river lake water beach sand desert forest tree trees leaf leaves grass
flower flowers field mountain mountains hill rock stone city street road car cars train bridge
building house room window door table chair kitchen garden park market crowd people person man
woman child children girl boy friend dog cat bird birds horse fish animal robot face eyes hair
hand hands smile smiles laughs talks speaks sings walks runs jumps dances dancing walking running
flying swimming sitting standing looking turns moves falls rises holds opens closes plays
playing music song voice sound sounds quiet loud noise footsteps birdsong engine guitar piano
drum drums rain falling crackling fire flames smoke steam coffee cup glass paper book phone
screen old young small large big tiny huge long short tall beautiful calm busy empty full
gentle quick smooth detailed realistic photorealistic film documentary style vintage modern
"""


def build_demo_model(target: Path, weights: Weights = "trained") -> Path:
    """Install the demo model into `target` (a Diffusers-format directory) unless it is there."""
    return _build(target, {"weights": weights}, lambda staging: _write_demo(staging, weights))


def build_version_model(target: Path, version: Version, variant: Variant = "dev") -> Path:
    """A tiny random-weight model directory of LTX-`version`'s layout, with a x2 latent upsampler."""
    identity = {"weights": "random", "version": version, "variant": variant}
    return _build(target, identity, lambda staging: _write_version(staging, version, variant))


def is_complete(
    path: Path, weights: Weights = "trained", version: Version | None = None, variant: Variant | None = None
) -> bool:
    """True when `path` holds a finished build of the current format with these weights (and layout)."""
    try:
        manifest = json.loads((path / specs.DEMO_MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    wanted = {"format_version": FORMAT_VERSION, "weights": weights, "version": version, "variant": variant}
    return isinstance(manifest, dict) and all(manifest.get(key) == value for key, value in wanted.items())


def _build(target: Path, identity: dict[str, str], write: Callable[[Path], str]) -> Path:
    """Build into `target` unless a build of this identity is there; `write` fills a directory and returns its note.

    The model is assembled in a temporary sibling directory and renamed into place, with the
    manifest written last inside it, so `target` is either absent or complete.
    """
    target = target.resolve()
    if is_complete(target, **identity):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        note = write(staging)
        manifest = {"format_version": FORMAT_VERSION, **identity, "seed": SEED, "note": note}
        (staging / specs.DEMO_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _install(staging, target, identity)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _install(staging: Path, target: Path, identity: dict[str, str]) -> None:
    """Move a finished build into place, replacing an incomplete or outdated one."""
    if target.exists():
        if is_complete(target, **identity):  # another process finished first
            return
        stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
        target.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    staging.rename(target)


def _write_demo(directory: Path, weights: Weights) -> str:
    if weights == "trained":
        shutil.copytree(TRAINED_WEIGHTS, directory, ignore=shutil.ignore_patterns("training_log.json"))
        return "LTX-2 architecture at a tiny size, trained on a synthetic world (see MODEL_CARD.md)."
    from diffusers import LTX2Pipeline

    LTX2Pipeline(**build_components()).save_pretrained(directory)
    torch.manual_seed(SEED)
    latent_upsampler("2.0").eval().save_pretrained(directory / "latent_upsampler")
    shutil.copytree(directory / "transformer", directory / "transformer_distilled")  # the student's starting point
    return "LTX-2 architecture at a tiny size with random weights; video and sound are noise."


def _write_version(directory: Path, version: Version, variant: Variant) -> str:
    from diffusers import LTX2Pipeline

    LTX2Pipeline(**build_components(version, variant)).save_pretrained(directory)
    torch.manual_seed(SEED)
    latent_upsampler(version).eval().save_pretrained(directory / "latent_upsampler")
    if version == "2.5":
        _write_ltx2_5_parts(directory)
    return f"LTX-{version} {variant} layout at a tiny size with random weights; video and sound are noise."


def _write_ltx2_5_parts(directory: Path) -> None:
    """LTX-2.5's parts beside the pipeline's: the dev transformer_full/ (its own random weights), the diffusion
    decoder, the duration head (one that always picks TINY_DURATION_S, so `num_frames: "auto"` stays short on a
    CPU) and the optional prompt enhancer; the decoder and head listed in model_index.json as the published
    repository lists them."""
    from diffusers import LTX2VideoDiffusionDecoderModel
    from diffusers.pipelines.ltx2 import LTX2DurationHead

    from gpu_runner.demo.text_extras import write_text_extras

    torch.manual_seed(SEED + 1)
    transformer("2.5").eval().save_pretrained(directory / "transformer_full")
    diffusion_decoder().eval().save_pretrained(directory / "diffusion_decoder")
    connectors_config = json.loads((directory / "connectors" / "config.json").read_text())
    widths = library.connector_widths(connectors_config)
    write_text_extras(directory, build_tokenizer(), *widths, seconds=TINY_DURATION_S)
    index_file = directory / "model_index.json"
    index = json.loads(index_file.read_text())
    index["duration_head"] = ["diffusers", LTX2DurationHead.__name__]
    index["diffusion_decoder"] = ["diffusers", LTX2VideoDiffusionDecoderModel.__name__]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def build_components(version: Version = "2.0", variant: Variant = "dev") -> dict[str, object]:
    """The pipeline's components, each seeded on its own so that one's size leaves the others alone.

    Version 2.0 at these sizes is the demo's architecture."""
    tokenizer = build_tokenizer()
    components: dict[str, object] = {"tokenizer": tokenizer}
    for name, factory in (
        ("text_encoder", lambda: text_encoder(len(tokenizer), version)),
        ("connectors", lambda: connectors(version)),
        ("transformer", lambda: transformer(version)),
        ("vae", lambda: video_vae(version)),
        ("audio_vae", audio_vae),
        ("vocoder", lambda: vocoder(version)),
    ):
        torch.manual_seed(SEED)
        components[name] = factory().eval()
    components["scheduler"] = ltx2_scheduler(variant)
    return components


def ltx2_scheduler(variant: Variant = "dev"):
    """LTX-2's schedulers. Dev: a resolution-dependent shift over the token count, stretched to end at
    shift_terminal. Distilled: no shift at all (its few sigmas are fixed by the pipeline)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    dev = variant == "dev"
    return FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=dev,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1 if dev else None,
    )


def build_tokenizer():
    """A Gemma tokenizer (BPE with byte fallback) whose merges are learned from a small word list."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    byte_tokens = [f"<0x{value:02X}>" for value in range(256)]
    learner = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # The same text handling as GemmaTokenizer, so the learned merges apply to its input.
    learner.normalizer = normalizers.Replace(" ", "▁")
    learner.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(
        vocab_size=len(specials) + len(byte_tokens) + 600,
        special_tokens=specials + byte_tokens,
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
        show_progress=False,
    )
    from gpu_runner.demo.world import VOCABULARY

    words = sorted(set(_PROMPT_WORDS.split()) | set(VOCABULARY))
    learner.train_from_iterator([" " + word for word in words], trainer=trainer)
    learned = json.loads(learner.to_str())["model"]
    merges = [tuple(merge) for merge in learned["merges"]]
    tokenizer = GemmaTokenizer(vocab=learned["vocab"], merges=merges, add_bos_token=True)  # Gemma starts with <bos>
    tokenizer.model_max_length = PROMPT_TOKENS
    tokenizer.padding_side = "left"
    return tokenizer


def text_encoder(vocab_size: int, version: Version = "2.0"):
    if version == "2.5":
        return _gemma4_text_encoder(vocab_size)
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        max_position_embeddings=PROMPT_TOKENS,
        sliding_window=PROMPT_TOKENS,
    )
    # Gemma-3 12B carries a SigLIP vision tower; a token-sized one keeps the class and layout.
    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=vocab_size - 3,
        eoi_token_index=vocab_size - 2,
        image_token_index=vocab_size - 1,
    )
    return Gemma3ForConditionalGeneration(config)


def _gemma4_text_encoder(vocab_size: int):
    """LTX-2.5's Gemma-4 (Gemma4UnifiedForConditionalGeneration) at the demo's text width: its sliding and full
    attention layers (full ones with their own head width, keys doubling as values, partial proportional RoPE),
    and token-sized vision and audio embedders, which keep the class and layout (full size: 48 layers, 3840 wide)."""
    from transformers import Gemma4UnifiedConfig, Gemma4UnifiedForConditionalGeneration

    text = {
        "vocab_size": vocab_size,
        "hidden_size": TEXT_WIDTH,
        "intermediate_size": 2 * TEXT_WIDTH,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "global_head_dim": 32,
        "num_global_key_value_heads": 1,
        "attention_k_eq_v": True,
        "max_position_embeddings": PROMPT_TOKENS,
        "sliding_window": PROMPT_TOKENS,
        "layer_types": ["sliding_attention", "full_attention"],
        "final_logit_softcapping": 30.0,
        "rope_parameters": {
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    }
    vision = {"patch_size": 16, "pooling_kernel_size": 3, "mm_embed_dim": TEXT_WIDTH, "mm_posemb_size": 16}
    special = ("boi_token_id", "eoi_token_id", "image_token_id", "video_token_id", "boa_token_id")
    ids = {name: vocab_size - 7 + offset for offset, name in enumerate(special)}
    config = Gemma4UnifiedConfig(
        text_config=text,
        vision_config=vision | {"output_proj_dims": TEXT_WIDTH},
        audio_config={"audio_embed_dim": 16},
        eoa_token_index=vocab_size - 2,
        audio_token_id=vocab_size - 1,
        **ids,
    )
    return Gemma4UnifiedForConditionalGeneration(config)


def diffusion_decoder():
    """LTX-2.5's diffusion decoder at a tiny size: the real strides (x8 in time, x8 in space then 4x4 patches), one
    block a stage, 1x1x1 windows in the deterministic stages and 1x3x3 in the pixel stage (full size: 2048 to 256
    wide, 3x7x7 to 11x11x11 windows). Its neighbourhood attention runs through torch's FlexAttention, which a CPU
    runs unfused: each stage costs about a second of tracing, so the stages stay one block deep."""
    from diffusers import LTX2VideoDiffusionDecoderModel

    torch.manual_seed(SEED)
    return LTX2VideoDiffusionDecoderModel(
        latent_channels=VIDEO_LATENT_CHANNELS,
        decoder_head_dim=8,
        decoder_stage_channels=(64, 32, 16, 16, 8),
        decoder_stage_depths=(1, 1, 1, 1, 1),
        decoder_stage_kernels=((1, 1, 1),) * 4,
        decoder_stage5_kernel=(1, 3, 3),
        decoder_t_emb_dim=32,
    )


# What LTX-2.3 changes against 2.0, at the demo's sizes (the full-size values in comments). The keys
# are those of the full-size configs; contract/library.py recognises a version by the same keys.
VERSION_LAYOUTS: dict[str, dict[str, dict[str, object]]] = {
    "2.0": {"connectors": {}, "transformer": {}, "vae": {}},
    "2.3": {
        # Each modality's connector projects to its own width, the transformer's cross-attention width
        # (4096 = 32 x 128 for video, 2048 = 32 x 64 for audio); 8 gated layers each in full size.
        "connectors": {
            "video_connector_num_attention_heads": 6,
            "video_connector_attention_head_dim": 32,
            "audio_connector_num_attention_heads": 6,
            "audio_connector_attention_head_dim": 16,
            "video_gated_attn": True,
            "audio_gated_attn": True,
            "per_modality_projections": True,
            "video_hidden_dim": 192,
            "audio_hidden_dim": 96,
            "proj_bias": True,
        },
        # Gated attention, cross-attention modulation, STG's perturbed attention; the connectors
        # hand over prompt embeddings already at the cross-attention widths.
        "transformer": dict(TRANSFORMER_SWITCHES["2.3"]),
        # Four up blocks (spatiotemporal, spatiotemporal, temporal, spatial) without residual
        # upsampling, widths 256, 512, 512, 1024 in full size; encoder widths end 1024, 1024.
        "vae": {
            "decoder_block_out_channels": (16, 32, 32, 64),
            "decoder_layers_per_block": (1, 1, 1, 1, 1),
            "decoder_spatio_temporal_scaling": (True, True, True, True),
            "decoder_inject_noise": (False, False, False, False, False),
            "upsample_type": ("spatiotemporal", "spatiotemporal", "temporal", "spatial"),
            "upsample_residual": (False, False, False, False),
            "upsample_factor": (2, 2, 1, 2),
            "decoder_spatial_padding_mode": "zeros",
        },
    },
}
# LTX-2.5 is 2.3's layout with keyframe slots and feed-forwards without bias in its transformer.
VERSION_LAYOUTS["2.5"] = VERSION_LAYOUTS["2.3"] | {"transformer": dict(TRANSFORMER_SWITCHES["2.5"])}


def connectors(version: Version = "2.0"):
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    config: dict[str, object] = {
        "caption_channels": TEXT_WIDTH,
        "text_proj_in_factor": TEXT_LAYERS + 1,
        "video_connector_num_attention_heads": 4,
        "video_connector_attention_head_dim": TEXT_WIDTH // 4,
        "video_connector_num_layers": 2,
        "video_connector_num_learnable_registers": CONNECTOR_REGISTERS,
        "audio_connector_num_attention_heads": 4,
        "audio_connector_attention_head_dim": TEXT_WIDTH // 4,
        "audio_connector_num_layers": 2,
        "audio_connector_num_learnable_registers": CONNECTOR_REGISTERS,
        "connector_rope_base_seq_len": PROMPT_TOKENS,
        "rope_type": "split",
    }
    return LTX2TextConnectors(**config | VERSION_LAYOUTS[version]["connectors"])


def transformer(version: Version = "2.0"):
    from diffusers import LTX2VideoTransformer3DModel

    config: dict[str, object] = {
        "in_channels": VIDEO_LATENT_CHANNELS,
        "out_channels": VIDEO_LATENT_CHANNELS,
        "num_attention_heads": 6,
        "attention_head_dim": 32,
        "cross_attention_dim": 192,
        "vae_scale_factors": (8, 32, 32),
        "audio_in_channels": AUDIO_LATENT_CHANNELS * MEL_BINS // 4,
        "audio_out_channels": AUDIO_LATENT_CHANNELS * MEL_BINS // 4,
        "audio_num_attention_heads": 6,  # as many heads as video: the cross-modal RoPE splits over both
        "audio_attention_head_dim": 16,
        "audio_cross_attention_dim": 96,
        "num_layers": 6,
        "caption_channels": TEXT_WIDTH,
        "rope_type": "split",
    }
    return LTX2VideoTransformer3DModel(**config | VERSION_LAYOUTS[version]["transformer"])


def video_vae(version: Version = "2.0"):
    from diffusers import AutoencoderKLLTX2Video

    # The real block pattern: patchify 4x, then spatial, temporal and two spatiotemporal 2x
    # steps down (32x, 8x) and (2.0) three spatiotemporal 2x steps up after a 4x unpatchify.
    config: dict[str, object] = {
        "latent_channels": VIDEO_LATENT_CHANNELS,
        "block_out_channels": (16, 32, 64, 64),
        "decoder_block_out_channels": (32, 64, 128),
        "layers_per_block": (1, 1, 1, 1, 1),
        "decoder_layers_per_block": (1, 1, 1, 1),
        "spatio_temporal_scaling": (True, True, True, True),
        "decoder_spatio_temporal_scaling": (True, True, True),
        "decoder_inject_noise": (False, False, False, False),
        "downsample_type": ("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        "upsample_type": ("spatiotemporal", "spatiotemporal", "spatiotemporal"),
        "upsample_residual": (True, True, True),
        "upsample_factor": (2, 2, 2),
        "patch_size": 4,
        "patch_size_t": 1,
        "decoder_causal": False,
        "spatial_compression_ratio": 32,
        "temporal_compression_ratio": 8,
    }
    return AutoencoderKLLTX2Video(**config | VERSION_LAYOUTS[version]["vae"])


def audio_vae():
    from diffusers import AutoencoderKLLTX2Audio

    # Two 2x upsampling levels give the 4x in time the pipeline assumes; the latent statistics
    # are per packed feature, so base_channels = latent channels x latent mel bins.
    return AutoencoderKLLTX2Audio(
        base_channels=AUDIO_LATENT_CHANNELS * MEL_BINS // 4,
        output_channels=2,
        ch_mult=(1, 1, 2),
        num_res_blocks=1,
        latent_channels=AUDIO_LATENT_CHANNELS,
        mel_bins=MEL_BINS,
        sample_rate=16000,
        mel_hop_length=160,
    )


def vocoder(version: Version = "2.0"):
    if version != "2.0":
        return _vocoder_with_bandwidth_extension()
    from diffusers.pipelines.ltx2 import LTX2Vocoder

    model = LTX2Vocoder(
        in_channels=2 * MEL_BINS,
        hidden_channels=128,
        out_channels=2,
        upsample_kernel_sizes=[16, 15, 8, 4, 4],  # LTX-2.0's: each layer's output is exactly factor x input
        upsample_factors=list(VOCODER_UPSAMPLING),
        resnet_kernel_sizes=[3],
        resnet_dilations=[[1, 3, 5]],
        output_sampling_rate=AUDIO_RATE,
    )
    # The log-mel it hears runs from -11.5 (silence) to about +4 (a tone): its first layer starts
    # out seeing that centred and scaled to about +-1, (mel - centre) / scale, folded into its weights.
    centre, scale = -6.0, 5.0
    with torch.no_grad():
        model.conv_in.weight /= scale
        model.conv_in.bias -= centre * model.conv_in.weight.sum(dim=(1, 2))
    return model


def _vocoder_with_bandwidth_extension():
    """LTX-2.3's vocoder: 16 kHz mel to 16 kHz audio, then a second vocoder extends it to 48 kHz (from its own
    mel of that audio, hop 80). The real upsampling kernels and rates; widths 1536 and 512 cut to 64 and 32 and
    one resnet kernel instead of three, as the demo's 2.0 vocoder has."""
    from diffusers.pipelines.ltx2 import LTX2VocoderWithBWE

    return LTX2VocoderWithBWE(
        in_channels=2 * MEL_BINS,
        hidden_channels=64,
        resnet_kernel_sizes=[3],
        resnet_dilations=[[1, 3, 5]],
        bwe_hidden_channels=32,
        bwe_resnet_kernel_sizes=[3],
        bwe_resnet_dilations=[[1, 3, 5]],
        num_mel_channels=MEL_BINS,
    )


def latent_upsampler(version: Version):
    """The x2 spatial latent upsampler of stage 2 (full size: 1024 channels, 4 blocks a stage); 2.0's
    resamples with a rational (blurring) resampler, 2.3's with a plain pixel shuffle."""
    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel

    return LTX2LatentUpsamplerModel(
        in_channels=VIDEO_LATENT_CHANNELS,
        mid_channels=2 * VIDEO_LATENT_CHANNELS,  # a multiple of 32: its group norms have 32 groups
        num_blocks_per_stage=1,
        dims=3,
        spatial_upsample=True,
        temporal_upsample=False,
        rational_spatial_scale=2.0,
        use_rational_resampler=version == "2.0",
    )
