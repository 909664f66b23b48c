"""The demo model: LTX-2's architecture at a tiny size, trained on a synthetic world.

Every component is the class the real model uses, saved in the Diffusers layout, so the
runner loads and drives the demo exactly as it would a real LTX-2 directory. What makes it
tiny is width and depth only; the video VAE keeps the real compression (32x in space, 8x
in time with a causal first frame), so the real size and frame-count rules apply unchanged.

The trained weights ship with the project in `gpu_runner/demo/weights` (see MODEL_CARD.md
there; `gpu_runner/demo/train.py` made them), installed by `python -m gpu_runner demo-model`. The
same architecture with random weights is kept for tests that need only shapes, and is what
training starts from.
"""

from __future__ import annotations

import json
import os
import shutil
import string
from pathlib import Path
from typing import Literal

import torch

from contract import models as specs

FORMAT_VERSION = 2
SEED = 0
TRAINED_WEIGHTS = Path(__file__).resolve().parent / "weights"
Weights = Literal["trained", "random"]

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
    """Install the demo model into `target` (a Diffusers-format directory) unless it is there.

    The model is assembled in a temporary sibling directory and renamed into place, with the
    manifest written last inside it, so `target` is either absent or complete.
    """
    target = target.resolve()
    if is_complete(target, weights):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_pipeline(staging, weights)
        _install(staging, target, weights)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def is_complete(path: Path, weights: Weights = "trained") -> bool:
    """True when `path` holds a finished demo model of the current format with these weights."""
    try:
        manifest = json.loads((path / specs.DEMO_MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("format_version") == FORMAT_VERSION
        and manifest.get("weights") == weights
    )


def _install(staging: Path, target: Path, weights: Weights) -> None:
    """Move a finished build into place, replacing an incomplete or outdated one."""
    if target.exists():
        if is_complete(target, weights):  # another process finished first
            return
        stale = target.with_name(f".{target.name}.stale-{os.getpid()}")
        target.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    staging.rename(target)


def _write_pipeline(directory: Path, weights: Weights) -> None:
    if weights == "trained":
        shutil.copytree(TRAINED_WEIGHTS, directory, ignore=shutil.ignore_patterns("training_log.json"))
        note = "LTX-2 architecture at a tiny size, trained on a synthetic world (see MODEL_CARD.md)."
    else:
        from diffusers import LTX2Pipeline

        LTX2Pipeline(**build_components()).save_pretrained(directory)
        note = "LTX-2 architecture at a tiny size with random weights; video and sound are noise."
    manifest = {"format_version": FORMAT_VERSION, "weights": weights, "seed": SEED, "note": note}
    (directory / specs.DEMO_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def build_components() -> dict[str, object]:
    """The pipeline's components, each seeded on its own so that one's size leaves the others alone."""
    tokenizer = build_tokenizer()
    components: dict[str, object] = {"tokenizer": tokenizer}
    for name, factory in (
        ("text_encoder", lambda: text_encoder(len(tokenizer))),
        ("connectors", connectors),
        ("transformer", transformer),
        ("vae", video_vae),
        ("audio_vae", audio_vae),
        ("vocoder", vocoder),
    ):
        torch.manual_seed(SEED)
        components[name] = factory().eval()
    components["scheduler"] = ltx2_scheduler()
    return components


def ltx2_scheduler():
    """LTX-2's scheduler: resolution-dependent shift over the token count, ending at zero noise."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
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


def text_encoder(vocab_size: int):
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


def connectors():
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    return LTX2TextConnectors(
        caption_channels=TEXT_WIDTH,
        text_proj_in_factor=TEXT_LAYERS + 1,
        video_connector_num_attention_heads=4,
        video_connector_attention_head_dim=TEXT_WIDTH // 4,
        video_connector_num_layers=2,
        video_connector_num_learnable_registers=CONNECTOR_REGISTERS,
        audio_connector_num_attention_heads=4,
        audio_connector_attention_head_dim=TEXT_WIDTH // 4,
        audio_connector_num_layers=2,
        audio_connector_num_learnable_registers=CONNECTOR_REGISTERS,
        connector_rope_base_seq_len=PROMPT_TOKENS,
        rope_type="split",
    )


def transformer():
    from diffusers import LTX2VideoTransformer3DModel

    return LTX2VideoTransformer3DModel(
        in_channels=VIDEO_LATENT_CHANNELS,
        out_channels=VIDEO_LATENT_CHANNELS,
        num_attention_heads=6,
        attention_head_dim=32,
        cross_attention_dim=192,
        vae_scale_factors=(8, 32, 32),
        audio_in_channels=AUDIO_LATENT_CHANNELS * MEL_BINS // 4,
        audio_out_channels=AUDIO_LATENT_CHANNELS * MEL_BINS // 4,
        audio_num_attention_heads=6,  # as many heads as video: the cross-modal RoPE splits over both
        audio_attention_head_dim=16,
        audio_cross_attention_dim=96,
        num_layers=6,
        caption_channels=TEXT_WIDTH,
        rope_type="split",
    )


def video_vae():
    from diffusers import AutoencoderKLLTX2Video

    # The real block pattern: patchify 4x, then spatial, temporal and two spatiotemporal 2x
    # steps down (32x, 8x) and three spatiotemporal 2x steps up after a 4x unpatchify.
    return AutoencoderKLLTX2Video(
        latent_channels=VIDEO_LATENT_CHANNELS,
        block_out_channels=(16, 32, 64, 64),
        decoder_block_out_channels=(32, 64, 128),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True),
        decoder_inject_noise=(False, False, False, False),
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        upsample_type=("spatiotemporal", "spatiotemporal", "spatiotemporal"),
        upsample_residual=(True, True, True),
        upsample_factor=(2, 2, 2),
        patch_size=4,
        patch_size_t=1,
        decoder_causal=False,
        spatial_compression_ratio=32,
        temporal_compression_ratio=8,
    )


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


def vocoder():
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
