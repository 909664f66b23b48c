"""Where an LTX-2 job's models come from: a Diffusers-format directory on disk.

The family asks a source for its two halves, so the same staged code runs on a user's
LTX-2 directory, the demo model, or (in bench/gpu_smoke.py) full-size random weights
built in memory.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    FlowMatchEulerDiscreteScheduler,
    LTX2ConditionPipeline,
    LTX2Pipeline,
    LTX2VideoDiffusionDecoderModel,
    LTX2VideoTransformer3DModel,
)
from diffusers.pipelines.ltx2 import (
    LTX2DFRPipeline,
    LTX2LatentUpsamplePipeline,
    LTX2VideoDiffusionDecodePipeline,
    LTX2Vocoder,
    LTX2VocoderWithBWE,
)
from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel
from torch import nn

from contract import library
from contract.cost import component_gib
from contract.jobdir import DEFAULT_ATTENTION
from gpu_runner import fp8, memory
from gpu_runner.attention import use_attention_backend
from gpu_runner.compiling import COMPILE_RECOMPILE_LIMIT, compiles
from gpu_runner.families.ltx2.guidance import unshare_stg_prefix
from gpu_runner.families.ltx2.text import MAX_PROMPT_TOKENS, PrecomputedConnectors, prepare_text_encoder
from gpu_runner.prompt_cache import model_revision
from gpu_runner.resident import RESIDENT, compiled
from gpu_runner.weight_cache import WeightCache

DENOISING_COMPONENTS = ("transformer", "vae", "audio_vae", "vocoder", "scheduler")
VOCODERS = {vocoder.__name__: vocoder for vocoder in (LTX2Vocoder, LTX2VocoderWithBWE)}
# How every model is read, said outright. Diffusers' default, low_cpu_mem_usage=True, needs `accelerate`, which
# the runner does without (memory.empty_weights stands in where it needs meta tensors); without it Diffusers falls
# back to this anyway, warning once per component (five times a job). It builds each module with initialisation
# skipped, then copies the weights in: no random init either way.
WITHOUT_ACCELERATE = {"low_cpu_mem_usage": False}
# The linears stored in FP8: attention projections and feed-forwards inside the blocks, video, audio and
# cross-modal alike. They hold ~95% of the DiT's weights; everything else (embeddings, norms, adaLN,
# proj_out) stays in the compute dtype, where a low-precision copy would cost quality for little memory.
FP8_LAYER = re.compile(r"transformer_blocks\.\d+\.(?:.+\.)?(?:to_q|to_k|to_v|to_out\.0|net\.0\.proj|net\.2)")


def is_fp8_layer(name: str) -> bool:
    return FP8_LAYER.fullmatch(name) is not None


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


def keyframe_frame(pipe, first_frame: int) -> int:
    """The output frame a keyframe condition stands at, from the first output frame of its latent frame (where
    diffusers places one, 8k - 7): that latent frame's last, 8k (contract/request.py's keyframe frames: the clip's
    last frame is one), as the original LTX-2 code places a keyframe at the output frame asked for; diffusers' place
    would leave a last-frame keyframe 7 frames before the end."""
    return first_frame + pipe.vae_temporal_compression_ratio - 1


class _EncodesOnTheTransformersDevice(_DevicedByTransformer):
    """A pipeline that VAE-encodes its conditions when it prepares its latents: the VAE comes to the GPU for that
    alone and goes back before the denoising loop, which would otherwise hold LTX-2's 1.22B-parameter VAE beside the
    transformer (2.28 GiB in bf16: a first+last-frame job peaked at 21.31 GiB against a text-only job's 19.02 on an
    H100, bench/results/2026-12-07-h100-keyframes.md; 20.51 with this, bench/results/2026-12-07-h100-conditioned.md).
    Each stage encodes again, at its own size. The VAE is lent (`memory.lent_to`): its CPU weights are put back
    afterwards rather than copied back (moved both ways with `to`, a stage took ~1.4 s longer on an H100
    than an earlier run on another H100 that kept the VAE there)."""

    def prepare_latents(self, *args, **kwargs):
        with memory.lent_to(self.vae, self._execution_device):
            return super().prepare_latents(*args, **kwargs)


class ConditionedDenoisingPipeline(_EncodesOnTheTransformersDevice, LTX2ConditionPipeline):
    """Image-to-video, keyframes, extension: it encodes its conditions with the VAE (on the GPU while it prepares its
    latents only). Its step callback may also take the audio latents (an extension's audio hold changes them in
    place)."""

    _callback_tensor_inputs = [*LTX2ConditionPipeline._callback_tensor_inputs, "audio_latents"]

    def _prepare_keyframe_coords(self, *args, pixel_frame_idx: int, **kwargs):
        """A keyframe at latent index k >= 1 stands at output frame 8k (`keyframe_frame`)."""
        return super()._prepare_keyframe_coords(*args, pixel_frame_idx=keyframe_frame(self, pixel_frame_idx), **kwargs)


class SlotDenoisingPipeline(_EncodesOnTheTransformersDevice, LTX2DFRPipeline):
    """LTX-2.5's fast mode: diffusers' keyframe-slot (DFR) pass, each call one stage (families/ltx2/slots.py). It takes
    the same conditions as the condition pipeline (its `conditions`, by latent index, encoded as that one encodes
    them), and its step callback may take the audio latents (an extension's audio hold)."""

    _callback_tensor_inputs = [*LTX2DFRPipeline._callback_tensor_inputs, "audio_latents"]

    def encode_conditions(self, *args, **kwargs) -> list[tuple[int, torch.Tensor, float, int]]:
        """Each condition at its pixel frame, a keyframe at latent index k >= 1 at output frame 8k (`keyframe_frame`).
        Here, not in `_prepare_keyframe_coords` as the condition pipeline does: that also places the slots, whose
        positions are output frames already."""
        return [
            (keyframe_frame(self, pixel) if pixel else 0, latent, strength, frames)
            for pixel, latent, strength, frames in super().encode_conditions(*args, **kwargs)
        ]


class DiffusionDecodingPipeline(LTX2VideoDiffusionDecodePipeline):
    """LTX-2.5's diffusion decode on the decoder's device (its scheduler is unused: the decoder steps itself)."""

    @property
    def _execution_device(self) -> torch.device:
        return self.diffusion_decoder.device


class UpsamplingPipeline(LTX2LatentUpsamplePipeline):
    """Fast mode's x2 spatial latent upsample, on the upsampler's device (the VAE, whose latent statistics it
    would read, waits on the CPU: the latents it gets are already denormalised)."""

    @property
    def _execution_device(self) -> torch.device:
        return self.latent_upsampler.device


def place_denoiser(
    pipe: LTX2Pipeline | LTX2ConditionPipeline | LTX2DFRPipeline,
    device: torch.device,
    tokens: int,
    compile_cache: Path | None = None,
    attention: str = DEFAULT_ATTENTION,
    compile_dynamic: bool = False,
) -> None:
    """The transformer goes to the GPU, set up to keep long clips' activations small (the VAE waits on the CPU: a
    conditioned pipeline brings it over only to encode its conditions). On a CUDA GPU its mask-free attentions run
    on the `attention` backend (AVP_ATTENTION, gpu_runner/attention.py); a CPU job keeps torch's own choice.

    Where the GPU has FP8 tensor cores, FP8-stored layers multiply in FP8 (5.5% instead of 4.7% relative
    error against bf16). Uncompiled, that is launch-bound and no faster than bf16; with `compile_cache`
    the blocks are compiled, which is where the speed comes from (bench/results/2026-11-26-h200-compiled.md):
    a graph per clip size, or with `compile_dynamic` (AVP_COMPILE=dynamic) one graph with dynamic shapes for
    every size up to LONG_CLIP_TOKENS (longer clips' sliced feed-forwards unroll per length: a graph per size).
    """
    memory.fit_long_clips(pipe.transformer, tokens)
    if fp8.fp8_matmul_available(device):
        fp8.use_fp8_matmul(pipe.transformer)
    if device.type == "cuda":  # before compiling: the compiled blocks' graphs hold the backend
        use_attention_backend(pipe.transformer, attention)
    if compiles(device, compile_cache) and not compiled(pipe.transformer):  # a resident one keeps its graphs
        # Regional compilation: the 48 blocks share one graph, compiled on the first step (26-45 s the
        # first time a shape is seen, 5-12 s once torch's cache in `compile_cache` holds its kernels).
        # It fuses the small kernels around each matmul, the FP8 quantisation above all, which
        # otherwise leave the GPU waiting for launches: a step 0.34x as long at 49 frames, 0.64x at 481
        # (bench/results/2026-11-26-h200-compiled.md). A block's graph differs per guidance pass and
        # for long clips' sliced feed-forwards: more versions than dynamo's default limit of 8.
        # Always there, whatever the environment says: AVP_CACHE_GB counts that directory (gpu_runner/cache_budget.py),
        # and ~/.triton is read-only under the shipped systemd unit.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache)
        os.environ["TRITON_CACHE_DIR"] = str(compile_cache / "triton")
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, COMPILE_RECOMPILE_LIMIT)
        # dynamic=None is torch.compile's default: static shapes until one changes (that dimension then turns dynamic)
        pipe.transformer.compile_repeated_blocks(dynamic=True if compile_dynamic else None)
    pipe.transformer.to(device)
    pipe.set_progress_bar_config(disable=True)


def without_job_wrappers(transformer: nn.Module) -> nn.Module:
    """A resident transformer as loaded: the last job's wrappers undone, the last one set first (`place_denoiser`
    fits it for long clips, then the family shares its STG prefix: each job adds its own)."""
    unshare_stg_prefix(transformer)
    memory.unfit_long_clips(transformer)
    return transformer


class DiffusersDirectory:
    """One job's model directory: `families.family_for` builds one per job, so what it reads once (`recognised`,
    `fingerprint`) a warm runner's next job reads again, and sees a model changed on disk in between."""

    def __init__(self, model_dir: Path, weight_cache: WeightCache | None = None) -> None:
        self.model_dir = model_dir
        self.weight_cache = weight_cache  # where FP8 transformers are kept between jobs
        self._fingerprints: dict[tuple[str, ...], str] = {}

    def revision(self) -> str:
        return model_revision(self.model_dir)

    def latent_revision(self) -> str:
        """The VAE's fingerprint, modification times included, as the weight cache's: a VAE of the same size and
        config with other weights (the demo's random build) is another latent space."""
        return self.fingerprint(("vae",))

    def fingerprint(self, files: tuple[str, ...]) -> str:
        """These folders' files' fingerprint, modification times included, read once for the job: the loading
        stages' notes and their loaders ask for the same keys, and each would stat every file again."""
        if files not in self._fingerprints:
            self._fingerprints[files] = model_revision(self.model_dir, files, modified_times=True)
        return self._fingerprints[files]

    def sequence_length(self) -> int:
        """Tokens per prompt: the tokenizer's declared maximum, at most LTX-2's 1024."""
        config = json.loads((self.model_dir / "tokenizer" / "tokenizer_config.json").read_text())
        return min(int(config.get("model_max_length", MAX_PROMPT_TOKENS)), MAX_PROMPT_TOKENS)

    def weights_gib(self, component: str) -> float:
        """Size of a component's weight files as stored (bf16 for LTX-2's transformer)."""
        return component_gib(self.model_dir, component)

    def transformer_config(self) -> dict:
        return json.loads((self.model_dir / "transformer" / "config.json").read_text())

    def vae_config(self) -> dict:
        return json.loads((self.model_dir / "vae" / "config.json").read_text())

    @functools.cached_property
    def recognised(self) -> library.Recognised:
        """The directory as contract/library.py recognises it from its configs (the job's checks did), read once."""
        return library.recognise(self.model_dir)

    def fast_lora(self) -> Path | None:
        """A dev model's distilled LoRA that fast mode applies to stage 2 (library.Recognised.fast_lora), if any."""
        name = self.recognised.fast_lora
        return None if name is None else self.model_dir / name

    @property
    def version(self) -> library.Version:
        return self.recognised.version

    def is_ltx2_0(self) -> bool:
        return self.version == "2.0"

    def resident_key(self, component: str, *how: object, files: tuple[str, ...] | None = None) -> tuple:
        """What a component loaded from this directory is kept under in warm mode (gpu_runner/resident.py): its
        name, the directory, its files' fingerprint (sizes and modification times) and how it was loaded."""
        return (component, str(self.model_dir), self.fingerprint(files or (component,)), *how)

    def text_key(self, dtype: torch.dtype, device: torch.device) -> tuple:
        """The text side's resident key (`load_text_side`)."""
        return self.resident_key("text", dtype, device.type, files=("text_encoder", "tokenizer", "connectors"))

    def denoiser_keys(self, dtype: torch.dtype, precision: str, device: torch.device, fast: bool) -> tuple[tuple, ...]:
        """The resident keys of what `load_denoiser` keeping its transformer, and in fast mode `load_upsampler`, load:
        the keys those loaders use, so that a loading stage says its weights are resident exactly where they are."""
        transformer = self.transformer_key(dtype, precision, device, fast)
        decoders = (self.resident_key("vae", dtype), self.resident_key("audio_vae", torch.float32))
        vocoder = self.resident_key("vocoder", torch.float32)
        upsampler = (self.resident_key(library.UPSAMPLER, dtype),) if fast else ()
        return (transformer, *decoders, vocoder, *upsampler)

    def transformer_key(self, dtype: torch.dtype, precision: str, device: torch.device, fast: bool) -> tuple:
        """The resident key of the mode's transformer: its folder (`transformer_folder`), dtype, precision, device."""
        subfolder = self.transformer_folder(fast)
        return self.resident_key("transformer", subfolder, dtype, precision, device.type, files=(subfolder,))

    def transformer_folder(self, fast: bool) -> str:
        """Fast mode's distilled transformer or quality mode's (library.Recognised), else transformer/."""
        recognised = self.recognised
        return (recognised.fast_transformer if fast else recognised.quality_transformer) or "transformer"

    def load_text_side(self, dtype: torch.dtype, device: torch.device) -> LTX2Pipeline:
        """Text encoder (Gemma-3, or 2.5's Gemma-4: the pipeline reads either's hidden states alike), tokenizer and
        connectors (left on the CPU until the encoder is done). The duration head and the prompt enhancer are
        never loaded here: each has a stage of its own (Ltx2.predict_num_frames, Ltx2.enhance_prompt)."""
        return RESIDENT.load(self.text_key(dtype, device), lambda: self._read_text_side(dtype, device))

    def _read_text_side(self, dtype: torch.dtype, device: torch.device) -> LTX2Pipeline:
        text = LTX2Pipeline.from_pretrained(
            self.model_dir,
            dtype=dtype,
            **WITHOUT_ACCELERATE,
            **dict.fromkeys((*DENOISING_COMPONENTS, "prompt_enhancer", "processor", library.DURATION_HEAD)),
        )
        text.text_encoder = prepare_text_encoder(text.text_encoder, device)
        return text

    @property
    def slot_pipeline(self) -> bool:
        """Whether fast mode runs LTX-2.5's keyframe-slot pipeline with the diffusion decoder (else LTX2Pipeline)."""
        return self.version == "2.5"

    def load_denoiser(
        self,
        dtype: torch.dtype,
        precision: str,
        connectors: PrecomputedConnectors,
        device: torch.device,
        conditioned: bool = False,
        fast: bool = False,
        keep_transformer: bool = True,
    ) -> LTX2Pipeline | LTX2ConditionPipeline | LTX2DFRPipeline:
        """The denoising half: the transformer as `load_transformer` gives it, the decoders on the CPU.

        Fast mode takes the distilled transformer (library.Recognised.fast_transformer) and a scheduler that
        steps through the fixed distilled sigmas as given (no shift: a dev scheduler's config, shift switched off);
        for LTX-2.5, in diffusers' keyframe-slot pipeline. Quality mode takes library.Recognised.quality_transformer
        (LTX-2.5's dev transformer_full/).

        In warm mode each component may come from the runner's resident ones (gpu_runner/resident.py); a transformer
        that will carry LoRAs (`keep_transformer` False) is loaded fresh, and the resident one dropped.
        """
        model_dir = self.model_dir
        transformer = self._transformer(dtype, precision, device, fast, keep_transformer)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(model_dir, subfolder="scheduler")
        if fast:
            scheduler = FlowMatchEulerDiscreteScheduler.from_config(
                scheduler.config, use_dynamic_shifting=False, shift_terminal=None
            )
        pipeline_class = ConditionedDenoisingPipeline if conditioned else DenoisingPipeline
        if fast and self.slot_pipeline:
            pipeline_class = SlotDenoisingPipeline
        return pipeline_class(
            scheduler=scheduler,
            vae=self._component("vae", AutoencoderKLLTX2Video, dtype),
            audio_vae=self._component("audio_vae", AutoencoderKLLTX2Audio, torch.float32),
            text_encoder=None,
            tokenizer=None,
            connectors=connectors,
            transformer=transformer,
            vocoder=self._component("vocoder", VOCODERS[library.VOCODER_CLASS[self.version]], torch.float32),
        )

    def _component(self, subfolder: str, kind: type, dtype: torch.dtype) -> nn.Module:
        """A decoder read from `subfolder` (kept resident in warm mode), in `dtype` whatever its files hold: without
        accelerate, diffusers takes the files' tensors as they are where their first entry has the model's dtype, so
        an audio VAE's bf16 weights behind its float32 latent statistics stayed bf16 (and its decode failed)."""
        read = lambda: kind.from_pretrained(  # noqa: E731
            self.model_dir, subfolder=subfolder, dtype=dtype, **WITHOUT_ACCELERATE
        ).to(dtype)
        return RESIDENT.load(self.resident_key(subfolder, dtype), read)  # as `denoiser_keys` names it

    def _transformer(
        self, dtype: torch.dtype, precision: str, device: torch.device, fast: bool, keep: bool
    ) -> nn.Module:
        """`load_transformer`'s, or in warm mode the resident one without the last job's wrappers."""
        subfolder = self.transformer_folder(fast)
        if not keep:
            RESIDENT.drop("transformer")
            return self.load_transformer(dtype, precision, device, subfolder)
        load = lambda: self.load_transformer(dtype, precision, device, subfolder)  # noqa: E731
        return without_job_wrappers(RESIDENT.load(self.transformer_key(dtype, precision, device, fast), load))

    def load_upsampler(self, dtype: torch.dtype) -> LTX2LatentUpsamplerModel:
        """Fast mode's x2 spatial latent upsampler, on the CPU until its stage."""
        return self._component(library.UPSAMPLER, LTX2LatentUpsamplerModel, dtype).eval()

    def load_diffusion_decoder(self, dtype: torch.dtype) -> LTX2VideoDiffusionDecoderModel:
        """LTX-2.5's diffusion decoder, read when its stage comes (the transformer is gone by then)."""
        return LTX2VideoDiffusionDecoderModel.from_pretrained(
            self.model_dir, subfolder=library.DIFFUSION_DECODER, dtype=dtype, **WITHOUT_ACCELERATE
        ).eval()

    def load_transformer(
        self, dtype: torch.dtype, precision: str, device: torch.device, subfolder: str = "transformer"
    ) -> nn.Module:
        """The transformer, its big linears stored in FP8 when `precision` is "fp8".

        With a weight cache, FP8 comes from there when it can: the cached tensors go straight onto
        `device`. Otherwise the weights are read as stored and cast on the CPU, so the GPU never holds
        the bf16 transformer, and the cast is written to the cache for the next job.
        """
        cached = None
        if precision == "fp8" and self.weight_cache is not None:
            cached = self.weight_cache.entry(self.model_dir / subfolder, dtype)
            transformer = cached.load(lambda: self.fp8_skeleton(dtype, subfolder), device)
            if transformer is not None:
                return transformer
        transformer = LTX2VideoTransformer3DModel.from_pretrained(
            self.model_dir, subfolder=subfolder, dtype=dtype, **WITHOUT_ACCELERATE
        )
        if precision == "fp8":
            fp8.store_in_fp8(transformer, is_fp8_layer)
        if cached is not None:
            cached.save(transformer)
        return transformer

    def fp8_skeleton(self, dtype: torch.dtype, subfolder: str = "transformer") -> nn.Module:
        """The transformer with no weights (meta tensors), laid out as FP8 storage leaves it: what the cache fills."""
        config = LTX2VideoTransformer3DModel.load_config(self.model_dir, subfolder=subfolder)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # as from_pretrained(dtype=...) builds it
        try:
            with memory.empty_weights():
                transformer = LTX2VideoTransformer3DModel.from_config(config)
        finally:
            torch.set_default_dtype(default_dtype)
        fp8.store_in_fp8(transformer, is_fp8_layer)
        return transformer.eval()
