"""Where a job's models come from: a Diffusers-format directory on disk.

The pipeline asks a source for its two halves, so the same staged code runs on a user's
LTX-2 directory, the demo model, or (in bench/gpu_smoke.py) full-size random weights
built in memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    FlowMatchEulerDiscreteScheduler,
    LTX2ConditionPipeline,
    LTX2Pipeline,
    LTX2VideoTransformer3DModel,
)
from diffusers.pipelines.ltx2 import LTX2Vocoder

from gpu_runner import fp8, memory
from gpu_runner.prompt_cache import model_revision
from gpu_runner.text import MAX_PROMPT_TOKENS, PrecomputedConnectors, prepare_text_encoder

DENOISING_COMPONENTS = ("transformer", "vae", "audio_vae", "vocoder", "scheduler")


class _DevicedByTransformer:
    """A pipeline whose decoders wait on the CPU while it denoises.

    The stock pipelines take their device from their first component, the VAE; ours decode in
    later stages, after the transformer is gone, so the transformer's device is the one that
    counts. While denoising, a text-only pipeline reads only the decoders' latent statistics.
    """

    @property
    def _execution_device(self) -> torch.device:
        return self.transformer.device


class DenoisingPipeline(_DevicedByTransformer, LTX2Pipeline):
    pass


class ConditionedDenoisingPipeline(_DevicedByTransformer, LTX2ConditionPipeline):
    """Image-to-video: it encodes its condition image with the VAE, so the VAE comes along to the GPU."""


def place_denoiser(pipe: LTX2Pipeline | LTX2ConditionPipeline, device: torch.device, tokens: int) -> None:
    """The transformer goes to the GPU, set up to keep long clips' activations small; the VAE only if it encodes.

    Where the GPU has FP8 tensor cores, FP8-stored layers multiply in FP8 (bench/results: 5-8% faster per
    forward than upcasting them, at 5.5% instead of 4.7% relative error against bf16).
    """
    memory.fit_long_clips(pipe.transformer, tokens)
    if fp8.fp8_matmul_available(device):
        fp8.use_fp8_matmul(pipe.transformer)
    pipe.transformer.to(device)
    if isinstance(pipe, ConditionedDenoisingPipeline):
        pipe.vae.to(device)
    pipe.set_progress_bar_config(disable=True)


class DiffusersDirectory:
    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir

    def revision(self) -> str:
        return model_revision(self.model_dir)

    def sequence_length(self) -> int:
        """Tokens per prompt: the tokenizer's declared maximum, at most LTX-2's 1024."""
        config = json.loads((self.model_dir / "tokenizer" / "tokenizer_config.json").read_text())
        return min(int(config.get("model_max_length", MAX_PROMPT_TOKENS)), MAX_PROMPT_TOKENS)

    def weights_gib(self, component: str) -> float:
        """Size of a component's weight files as stored (bf16 for LTX-2's transformer)."""
        files = (self.model_dir / component).glob("*")
        return sum(f.stat().st_size for f in files if f.name.endswith((".safetensors", ".bin"))) / 2**30

    def inner_width(self) -> int:
        config = json.loads((self.model_dir / "transformer" / "config.json").read_text())
        return int(config["num_attention_heads"]) * int(config["attention_head_dim"])

    def is_ltx2_0(self) -> bool:
        """LTX-2.0's connectors share one projection between video and audio; 2.3's have one each."""
        config = json.loads((self.model_dir / "connectors" / "config.json").read_text())
        return not config.get("per_modality_projections", True)

    def load_text_side(self, dtype: torch.dtype, device: torch.device) -> LTX2Pipeline:
        """Text encoder, tokenizer and connectors (left on the CPU until the encoder is done)."""
        text = LTX2Pipeline.from_pretrained(self.model_dir, dtype=dtype, **dict.fromkeys(DENOISING_COMPONENTS))
        text.text_encoder = prepare_text_encoder(text.text_encoder, device)
        return text

    def load_denoiser(
        self, dtype: torch.dtype, precision: str, connectors: PrecomputedConnectors, conditioned: bool = False
    ) -> LTX2Pipeline | LTX2ConditionPipeline:
        """The denoising half, on the CPU. FP8 storage is applied there, so the GPU never holds the bf16 transformer."""
        model_dir = self.model_dir
        transformer = LTX2VideoTransformer3DModel.from_pretrained(model_dir, subfolder="transformer", dtype=dtype)
        if precision == "fp8":
            fp8.store_in_fp8(transformer)
        pipeline_class = ConditionedDenoisingPipeline if conditioned else DenoisingPipeline
        return pipeline_class(
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(model_dir, subfolder="scheduler"),
            vae=AutoencoderKLLTX2Video.from_pretrained(model_dir, subfolder="vae", dtype=dtype),
            audio_vae=AutoencoderKLLTX2Audio.from_pretrained(model_dir, subfolder="audio_vae", dtype=torch.float32),
            text_encoder=None,
            tokenizer=None,
            connectors=connectors,
            transformer=transformer,
            vocoder=LTX2Vocoder.from_pretrained(model_dir, subfolder="vocoder", dtype=torch.float32),
        )
