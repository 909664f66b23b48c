"""`avportal import-model FILE...`: Lightricks' single-file LTX-2 releases (and ComfyUI's) into the model library.

The files a person has (the DiT with its connectors, VAEs and vocoder in one `.safetensors`; the x2 spatial upsampler
in another; a distilled LoRA; LTX-2.5's diffusion decoder and duration head, where the names are assumed: see
gpu_runner/single_file_keys.py) become one Diffusers-format directory in AVP_MODELS_DIR, which contract/library.py
then recognises like any other. A single file holds one transformer, so an imported distilled 2.5 has no dev
transformer_full/ (quality mode). Step by step:

1. Each file's header is read (never its tensors): a file too short for what its header promises is truncated; a
   file whose tensors are no LTX-2 DiT's is another model's. The version (2.0, 2.3, 2.5) comes from which tensors the
   DiT has (gpu_runner/single_file_keys.py, the one name table); dev or distilled from --variant, else the file's
   name (Lightricks and ComfyUI name them `...-dev` / `...-distilled`).
2. Every name is mapped to (component, Diffusers name). Each component's config is the full-size one of that
   version (bench/configs/ltx2-family-configs.json) with every width, depth and count read from the tensors' shapes
   (so a shrunk model gets its own), then checked: the component is built on the meta device and every tensor of
   the file must have exactly the shape of the parameter it fills, and every parameter a tensor. What shapes cannot
   say (attention heads) comes from the file's metadata `config` JSON, else the full-size value where the widths
   are the full-size ones; otherwise the import stops and says so.
3. The tensors are streamed one at a time into each component's safetensors file (a 40 GB file on a 24 GB machine):
   FP8 weights (Lightricks' FP8, ComfyUI's scaled FP8 with `scale_weight` / `weight_scale`) are upcast, their scale
   applied, to the precision of the file's other tensors (bf16 in Lightricks' files), which every precision the
   runner offers can load. Where the installation has a weight cache (`avportal import-model` passes its runner
   options), the transformer's FP8 weights that the runner's FP8 layout takes as they are (e4m3 in one of its FP8
   layers, with one scale per tensor or per row: gpu_runner/fp8.py keeps a float32 scale per row, so a per-tensor
   scale becomes every row's, exactly) are also written, unchanged, into the entry the model's first FP8 job would
   otherwise cast and write (gpu_runner/weight_cache.py; the rest of the entry as the runner casts and loads it,
   in the dtype this machine's runner computes FP8 jobs in). The output and source.json say, per component, which
   FP8 tensors were kept and which upcast.
4. The text encoder and tokenizer (Gemma-3; Gemma-4 for 2.5; not in the single file) are hard-linked, else copied,
   from the folder --text-encoder names; without it the model is written but listed unusable, naming what it lacks.
5. All of it is written into a hidden temporary directory inside AVP_MODELS_DIR (the library skips hidden entries),
   `source.json` (where it came from) last, then renamed into place: a half-written model is never listed. Any
   failure (a full disk included) removes the temporary directory and says what to do.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import json
import os
import re
import shutil
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from contract import library
from contract.models import model_id
from gpu_runner import single_file_keys as keys

FAMILY_CONFIGS = Path(__file__).resolve().parent.parent / "bench" / "configs" / "ltx2-family-configs.json"
SOURCE_FILE = library.IMPORT_SOURCE
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit
FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
# Side tensors of FP8 checkpoints: the weight's scale (applied on upcast) and what a Diffusers directory drops.
WEIGHT_SCALES = (".scale_weight", ".weight_scale")
FP8_EXTRAS = re.compile(r".*(\.scale_input|\.input_scale|\.weight_scale_2|\.pre_quant_scale)|scaled_fp8")
COMPONENT_ORDER = (
    "transformer",
    "connectors",
    "vae",
    "audio_vae",
    "vocoder",
    "latent_upsampler",
    library.DIFFUSION_DECODER,  # LTX-2.5's
    library.DURATION_HEAD,  # LTX-2.5's
)
REQUIRED = COMPONENT_ORDER[:5]  # what every LTX-2 single file holds
LTX2_5_PARTS = (library.DIFFUSION_DECODER, library.DURATION_HEAD)
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
# Text-encoder and tokenizer files taken from --text-encoder (a Gemma folder, or a Diffusers model's).
TOKENIZER_FILES = re.compile(r"(tokenizer.*|special_tokens_map\.json|added_tokens\.json|chat_template.*)")
TEXT_ENCODER_FILES = re.compile(r"(config\.json|generation_config\.json|.*\.safetensors(\.index\.json)?)")
DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}
DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "U8": 1}


class ImportFailed(Exception):
    """The import cannot go on; the message says why and what to do. Nothing is left in the library."""


@dataclass
class Tensor:
    file: Path
    name: str  # in the file
    dtype: str  # safetensors' name: BF16, F8_E4M3, ...
    shape: tuple[int, ...]
    scale: str | None = None  # the FP8 weight's scale tensor in the same file
    upcast: str | None = None  # what an FP8 tensor is written as: the file's other tensors' dtype
    scale_shape: tuple[int, ...] = ()

    def keeps_fp8(self) -> bool:
        """Whether the runner's FP8 layout (gpu_runner/fp8.py: e4m3, one float32 scale per output row) takes this
        weight as it is: e4m3, and its scale one per tensor (then every row's) or one per row."""
        if self.dtype != "F8_E4M3" or len(self.shape) != 2:
            return False
        count = 1
        for dim in self.scale_shape:
            count *= dim
        return self.scale is None or count in (1, self.shape[0])


@dataclass
class Plan:
    version: str
    variant: str
    components: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # component -> Diffusers name -> tensor
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    loras: list[Path] = field(default_factory=list)
    fp8: int = 0  # FP8 tensors, upcast in the model directory
    upcast: str = "BF16"  # to this dtype
    kept: int = 0  # of them, the transformer's written as they are into the weight cache
    sources: list[str] = field(default_factory=list)

    @property
    def bytes_out(self) -> int:
        return sum(_out_bytes(t) for tensors in self.components.values() for t in tensors.values())


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A safetensors file's tensor entries and metadata, checked against the file's size (torch-free)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            head = file.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
                raise ImportFailed(f"{path.name} is not a safetensors file (its first 8 bytes give no header length)")
            header = json.loads(file.read(length))
    except OSError as error:
        raise ImportFailed(f"{path} cannot be read: {error.strerror or error}") from None
    except (UnicodeDecodeError, ValueError):
        raise ImportFailed(f"{path.name} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ImportFailed(f"{path.name} is not a safetensors file (its header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    fields = {"dtype", "shape", "data_offsets"}
    if not all(isinstance(entry, dict) and fields <= entry.keys() for entry in header.values()):
        raise ImportFailed(f"{path.name} is not a safetensors file (a header entry lacks its dtype, shape or offsets)")
    ends = [entry["data_offsets"][1] for entry in header.values()]
    needed = 8 + length + max(ends, default=0)
    if size < needed:
        raise ImportFailed(
            f"{path.name} is truncated: {size:,} bytes of the {needed:,} its header promises (an unfinished "
            "download?); download it again"
        )
    return header, metadata if isinstance(metadata, dict) else {}


def plan(files: list[Path], variant: str | None, text_encoder: Path | None) -> Plan:
    """What the files hold and where each tensor goes, each component's config checked against the tensors."""
    main: tuple[Path, dict[str, Any], dict[str, str]] | None = None
    extra: list[tuple[Path, dict[str, Any], bool]] = []  # (file, header, is the upsampler)
    loras: list[Path] = []
    for path in files:
        header, metadata = read_header(path)
        names = set(header)
        if library.DISTILLED_LORA.fullmatch(path.name) or any(".lora_" in name for name in names):
            if not library.DISTILLED_LORA.fullmatch(path.name):
                raise ImportFailed(
                    f"{path.name} is a LoRA: only a distilled LoRA (a name like *distill*lora*.safetensors) belongs "
                    "in a model; put other LoRAs in AVP_LORA_DIR"
                )
            loras.append(path)
        elif keys.is_upsampler_file(names):
            extra.append((path, header, True))
        elif names and all(name.startswith(tuple(keys.PREFIX_OF[part] for part in LTX2_5_PARTS)) for name in names):
            extra.append((path, header, False))  # LTX-2.5's diffusion decoder or duration head in a file of its own
        elif keys.version_of(names) is not None:
            if main is not None:
                both = f"{main[0].name} and {path.name}"
                raise ImportFailed(f"{both} are both LTX-2 DiT files: import them one at a time")
            main = (path, header, metadata)
        else:
            sample = ", ".join(sorted(names)[:3])
            raise ImportFailed(
                f"{path.name} is not an LTX-2 single file: none of its {len(names)} tensors is an LTX-2 DiT's "
                f"(model.diffusion_model.adaln_single..., .patchify_proj...); it has {sample}"
            )
    if main is None:
        raise ImportFailed("none of the files is an LTX-2 DiT file (ltx-2-19b-dev.safetensors, ltx-2.3-22b-...)")
    path, header, metadata = main
    version = keys.version_of(set(header))
    assert version is not None
    result = Plan(version=version, variant=variant or _variant_from_name(path), loras=loras)
    result.sources = [p.name for p in files]
    vae_blocks = keys.encoder_blocks(set(header))
    for source, entries, upsampler in [(path, header, False), *extra]:
        _map_file(result, source, entries, upsampler, vae_blocks)
    result.upcast = _precision(header)
    for tensors in result.components.values():
        for tensor in tensors.values():
            tensor.upcast = result.upcast if tensor.dtype in FP8_DTYPES else None
    missing = [name for name in REQUIRED if name not in result.components]
    if missing:
        raise ImportFailed(f"{path.name} lacks the {', '.join(missing)} tensors a Lightricks single file holds")
    family = json.loads(FAMILY_CONFIGS.read_text())[version]
    if version != "2.5" and (parts := [part for part in LTX2_5_PARTS if part in result.components]):
        raise ImportFailed(f"the files hold an LTX-2.5 {' and '.join(parts)}, but {path.name} is LTX-{version}'s DiT")
    described = _metadata_config(metadata)
    text = _text_widths(text_encoder, version)
    for component in COMPONENT_ORDER:
        if component in result.components:
            shapes = {name: tensor.shape for name, tensor in result.components[component].items()}
            entry = family[component]
            # The heads no shape tells: the DiT's and connectors' in the metadata's transformer section (Lightricks'),
            # the 2.5 parts' in sections of their own (assumed).
            hints = described.get("transformer" if component in REQUIRED else component, {})
            try:
                config = INFER[component](dict(entry["config"]), shapes, hints, text)
            except (KeyError, IndexError) as error:
                raise ImportFailed(f"the {component} tensors lack {error}: not an LTX-{version} {component}") from None
            result.configs[component] = _checked(component, entry["class"], config, shapes)
    return result


def _variant_from_name(path: Path) -> str:
    name = path.name.lower()
    if "distill" in name:
        return "distilled"
    if re.search(r"(^|[^a-z])dev([^a-z]|$)", name):
        return "dev"
    raise ImportFailed(f"{path.name}'s name says neither dev nor distilled: give --variant dev or --variant distilled")


def _map_file(result: Plan, path: Path, header: dict[str, Any], upsampler: bool, vae_blocks: int) -> None:
    unknown: list[str] = []
    for name, entry in header.items():
        if any(name.endswith(suffix) for suffix in WEIGHT_SCALES) or FP8_EXTRAS.fullmatch(name):
            continue
        try:
            mapped = keys.to_diffusers(name, upsampler, vae_blocks)
        except keys.UnknownTensor:
            unknown.append(name)
            continue
        if mapped is None:
            continue
        component, target = mapped
        stem = name.removesuffix(".weight")
        scale = next((stem + suffix for suffix in WEIGHT_SCALES if stem + suffix in header), None)
        scale = scale if name.endswith(".weight") else None
        tensor = Tensor(path, name, entry["dtype"], tuple(entry["shape"]), scale)
        tensor.scale_shape = tuple(header[scale]["shape"]) if scale else ()
        tensors = result.components.setdefault(component, {})
        if target in tensors:
            raise ImportFailed(f"{path.name} and {tensors[target].file.name} both hold {component}'s {target}")
        tensors[target] = tensor
        result.fp8 += tensor.dtype in FP8_DTYPES
    if unknown:
        raise ImportFailed(
            f"{path.name} has {len(unknown)} tensors of no LTX-2 component (e.g. {', '.join(unknown[:3])}): "
            "it is not a Lightricks LTX-2 single file this version of the portal knows"
        )


def _precision(header: dict[str, Any]) -> str:
    """The dtype most of a file's tensors that are not FP8 have (their scales aside): what FP8 is upcast to."""
    found = Counter(
        entry["dtype"] for entry in header.values() if entry.get("shape") and entry.get("dtype") in DTYPE_NAMES
    )
    return found.most_common(1)[0][0] if found else "BF16"


def _metadata_config(metadata: dict[str, str]) -> dict[str, Any]:
    """The `config` JSON Lightricks' files carry in their metadata (section per component); {} when absent."""
    with contextlib.suppress(ValueError, TypeError):
        config = json.loads(metadata.get("config", ""))
        if isinstance(config, dict):
            return {k: v for k, v in config.items() if isinstance(v, dict)}
    return {}


def _text_widths(text_encoder: Path | None, version: str) -> tuple[int, int] | None:
    """(hidden size, hidden states = layers + 1) of the Gemma the person names (Gemma-3; 2.5's Gemma-4): the
    connectors read them."""
    if text_encoder is None:
        return None
    folder = _text_encoder_folder(text_encoder)
    expected = library.TEXT_ENCODER_TYPE[version]
    gemma = library.TEXT_ENCODER_NAME[expected]
    try:
        config = json.loads((folder / "config.json").read_text())
        text = config.get("text_config", config)
        widths = int(text["hidden_size"]), int(text["num_hidden_layers"]) + 1
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ImportFailed(f"--text-encoder: {folder / 'config.json'} is not a {gemma} config") from None
    if config.get("model_type") != expected:
        raise ImportFailed(
            f"--text-encoder: {folder / 'config.json'} has model_type {config.get('model_type')!r}; LTX-{version} "
            f"reads {gemma} ({expected!r}): give its folder"
        )
    return widths


def _count(shapes: dict[str, tuple[int, ...]], pattern: str) -> int:
    found = {int(m[1]) for name in shapes if (m := re.fullmatch(pattern, name))}
    return max(found) + 1 if found else 0


def _heads(config: dict[str, Any], width: int, hints: dict[str, Any], heads_key: str, dim_key: str, hint: str) -> int:
    """Attention heads, which no shape tells: the file's metadata, else the full-size value at the full width."""
    if isinstance(hints.get(hint), int) and hints[hint] > 0 and width % hints[hint] == 0:
        return hints[hint]
    if config[heads_key] * config[dim_key] == width:
        return config[heads_key]
    raise ImportFailed(
        f"the attention heads of a {width}-wide layer cannot be read from its shapes and the file's metadata "
        f"config does not give transformer.{hint}: this is not a full-size LTX-2 file"
    )


def _transformer(config: dict[str, Any], s: dict[str, tuple[int, ...]], hints: dict[str, Any], text: Any) -> dict:
    width, audio_width = s["proj_in.weight"][0], s["audio_proj_in.weight"][0]
    heads = _heads(config, width, hints, "num_attention_heads", "attention_head_dim", "num_attention_heads")
    audio_heads = _heads(
        config, audio_width, hints, "audio_num_attention_heads", "audio_attention_head_dim", "audio_num_attention_heads"
    )
    config |= {
        "in_channels": s["proj_in.weight"][1],
        "out_channels": s["proj_out.weight"][0],
        "audio_in_channels": s["audio_proj_in.weight"][1],
        "audio_out_channels": s["audio_proj_out.weight"][0],
        "num_attention_heads": heads,
        "attention_head_dim": width // heads,
        "audio_num_attention_heads": audio_heads,
        "audio_attention_head_dim": audio_width // audio_heads,
        "cross_attention_dim": s["transformer_blocks.0.attn2.to_k.weight"][1],
        "audio_cross_attention_dim": s["transformer_blocks.0.audio_attn2.to_k.weight"][1],
        "num_layers": _count(s, r"transformer_blocks\.(\d+)\..*"),
        "ff_bias": "transformer_blocks.0.ff.net.0.proj.bias" in s,  # LTX-2.5's video feed-forwards have none
        "audio_ff_bias": "transformer_blocks.0.audio_ff.net.0.proj.bias" in s,
        "use_keyframes_abs_pos_embedding": keys.KEYFRAME_EMBEDDING in s,  # LTX-2.5's
    }
    if "caption_projection.linear_1.weight" in s:  # 2.0 projects the prompt in the DiT; 2.3's connectors do
        config["caption_channels"] = s["caption_projection.linear_1.weight"][1]
    elif text is not None:
        config["caption_channels"] = text[0]
    return config


def _connectors(config: dict[str, Any], s: dict[str, tuple[int, ...]], hints: dict[str, Any], text: Any) -> dict:
    per_modality = "video_text_proj_in.weight" in s
    projection = "video_text_proj_in" if per_modality else "text_proj_in"
    caption, factor = text or (config["caption_channels"], config["text_proj_in_factor"])
    if caption * factor != s[f"{projection}.weight"][1]:
        raise ImportFailed(
            f"the connectors read {s[projection + '.weight'][1]} text features, not the {caption} x {factor} of "
            + ("the --text-encoder given" if text else "Gemma 12B: give its text encoder with --text-encoder")
        )
    video_width = s["video_connector.transformer_blocks.0.attn1.to_q.weight"][0]
    audio_width = s["audio_connector.transformer_blocks.0.attn1.to_q.weight"][0]
    heads_keys = ("video_connector_num_attention_heads", "video_connector_attention_head_dim")
    heads = _heads(config, video_width, hints, *heads_keys, "connector_num_attention_heads")
    audio_hint = "audio_connector_num_attention_heads"
    audio_heads = hints.get(audio_hint) if isinstance(hints.get(audio_hint), int) else heads
    config |= {
        "caption_channels": caption,
        "text_proj_in_factor": factor,
        "video_connector_num_attention_heads": heads,
        "video_connector_attention_head_dim": video_width // heads,
        "video_connector_num_layers": _count(s, r"video_connector\.transformer_blocks\.(\d+)\..*"),
        "video_connector_num_learnable_registers": s["video_connector.learnable_registers"][0],
        "video_gated_attn": "video_connector.transformer_blocks.0.attn1.to_gate_logits.weight" in s,
        "audio_connector_num_attention_heads": audio_heads,
        "audio_connector_attention_head_dim": audio_width // audio_heads,
        "audio_connector_num_layers": _count(s, r"audio_connector\.transformer_blocks\.(\d+)\..*"),
        "audio_connector_num_learnable_registers": s["audio_connector.learnable_registers"][0],
        "audio_gated_attn": "audio_connector.transformer_blocks.0.attn1.to_gate_logits.weight" in s,
        "per_modality_projections": per_modality,
        "proj_bias": f"{projection}.bias" in s,
    }
    if per_modality:
        config["video_hidden_dim"] = s["video_text_proj_in.weight"][0]
        config["audio_hidden_dim"] = s["audio_text_proj_in.weight"][0]
    return config


def _vae(config: dict[str, Any], s: dict[str, tuple[int, ...]], hints: dict[str, Any], text: Any) -> dict:
    """The encoder's blocks run at the previous block's width and downsample to their own (block_out_channels[i]);
    the decoder's, in reverse, at block_out // upsample_factor (see diffusers' LTX2VideoEncoder3d / Decoder3d)."""
    down, up = _count(s, r"encoder\.down_blocks\.(\d+)\..*"), _count(s, r"decoder\.up_blocks\.(\d+)\..*")
    resnet = "{}.resnets.0.conv1.conv.weight"
    encoder_widths = [s[resnet.format(f"encoder.down_blocks.{i}")][0] for i in range(1, down)]
    factors = list(reversed(config["upsample_factor"]))
    if len(factors) != up:
        raise ImportFailed(f"the video VAE's decoder has {up} blocks; LTX-2 {len(factors)}")
    decoder_widths = [s[resnet.format(f"decoder.up_blocks.{i}")][0] * factors[i] for i in range(up)]
    layers = [_count(s, rf"encoder\.down_blocks\.{i}\.resnets\.(\d+)\..*") for i in range(down)]
    layers.append(_count(s, r"encoder\.mid_block\.resnets\.(\d+)\..*"))
    decoder_layers = [_count(s, r"decoder\.mid_block\.resnets\.(\d+)\..*")]
    decoder_layers += [_count(s, rf"decoder\.up_blocks\.{i}\.resnets\.(\d+)\..*") for i in range(up)]
    config |= {
        "latent_channels": s["decoder.conv_in.conv.weight"][1],
        "block_out_channels": encoder_widths + [s[resnet.format("encoder.mid_block")][0]],
        "decoder_block_out_channels": list(reversed(decoder_widths)),
        "layers_per_block": layers,
        "decoder_layers_per_block": list(reversed(decoder_layers)),
    }
    return config


def _audio_vae(config: dict[str, Any], s: dict[str, tuple[int, ...]], hints: dict[str, Any], text: Any) -> dict:
    base = s["encoder.conv_in.conv.weight"][0]
    levels = _count(s, r"encoder\.down\.(\d+)\..*")
    config |= {
        "base_channels": base,
        "in_channels": s["encoder.conv_in.conv.weight"][1],
        "output_channels": s["decoder.conv_out.conv.weight"][0],
        "ch_mult": [s[f"encoder.down.{i}.block.0.conv1.conv.weight"][0] // base for i in range(levels)],
        "num_res_blocks": _count(s, r"encoder\.down\.0\.block\.(\d+)\..*"),
        "latent_channels": s["decoder.conv_in.conv.weight"][1],
    }
    config["double_z"] = s["encoder.conv_out.conv.weight"][0] == 2 * config["latent_channels"]
    return config


def _generator(config: dict[str, Any], s: dict[str, tuple[int, ...]], prefix: str, key: str) -> dict[str, Any]:
    """One HiFi-GAN-style generator's widths and kernels (LTX-2.0's vocoder; each half of 2.3's)."""
    ups = _count(s, rf"{prefix}upsamplers\.(\d+)\..*")
    per_level = _count(s, rf"{prefix}resnets\.(\d+)\..*") // max(ups, 1)
    dilations = config[f"{key}resnet_dilations"]
    return {
        f"{key}in_channels": s[f"{prefix}conv_in.weight"][1],
        f"{key}hidden_channels": s[f"{prefix}conv_in.weight"][0],
        f"{key}out_channels": s[f"{prefix}conv_out.weight"][0],
        f"{key}upsample_kernel_sizes": [s[f"{prefix}upsamplers.{i}.weight"][2] for i in range(ups)],
        f"{key}resnet_kernel_sizes": [s[f"{prefix}resnets.{j}.convs1.0.weight"][2] for j in range(per_level)],
        f"{key}resnet_dilations": [dilations[j % len(dilations)] for j in range(per_level)],
        f"{key}final_bias": f"{prefix}conv_out.bias" in s,
    }


def _vocoder(config: dict[str, Any], s: dict[str, tuple[int, ...]], hints: dict[str, Any], text: Any) -> dict:
    if "bwe_in_channels" not in config:
        return config | _generator(config, s, "", "")
    return config | _generator(config, s, "vocoder.", "") | _generator(config, s, "bwe_generator.", "bwe_")


def _upsampler(config: dict[str, Any], s: dict[str, tuple[int, ...]], hints: dict[str, Any], text: Any) -> dict:
    return config | {
        "in_channels": s["initial_conv.weight"][1],
        "mid_channels": s["initial_conv.weight"][0],
        "num_blocks_per_stage": _count(s, r"res_blocks\.(\d+)\..*"),
        "dims": len(s["initial_conv.weight"]) - 2,
        "use_rational_resampler": "upsampler.conv.weight" in s,
    }


def _described(config: dict[str, Any], s: dict[str, tuple[int, ...]], hints: dict[str, Any], text: Any) -> dict:
    """LTX-2.5's diffusion decoder: its attention windows and strides are no shape's, so its config is the file's
    metadata section `diffusion_decoder` (assumed; see gpu_runner/single_file_keys.py), else the full-size one;
    _checked then holds it against every tensor's shape."""
    return config | {key: value for key, value in hints.items() if key in config}


def _duration_head(config: dict[str, Any], s: dict[str, tuple[int, ...]], hints: dict[str, Any], text: Any) -> dict:
    width = s["video_input_proj.weight"][0]
    heads = hints.get("num_pooler_heads")
    if not (isinstance(heads, int) and heads > 0 and width % heads == 0):
        heads = config["num_pooler_heads"] if width == config["pooler_hidden_dim"] else None
    if heads is None:
        raise ImportFailed(
            f"the duration head's pooler heads of a {width}-wide pooler cannot be read from its shapes and the file's "
            "metadata config does not give duration_head.num_pooler_heads"
        )
    return config | {
        "video_cross_attention_dim": s["video_input_proj.weight"][1],
        "audio_cross_attention_dim": s["audio_input_proj.weight"][1],
        "pooler_hidden_dim": width,
        "num_queries": s["attention_pooler.query_tokens"][0],
        "num_pooler_heads": heads,
        "mlp_hidden_dim": s["mlp_hidden.weight"][0],
    }


INFER = {
    "transformer": _transformer,
    "connectors": _connectors,
    "vae": _vae,
    "audio_vae": _audio_vae,
    "vocoder": _vocoder,
    "latent_upsampler": _upsampler,
    library.DIFFUSION_DECODER: _described,
    library.DURATION_HEAD: _duration_head,
}


def _model_class(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _checked(component: str, dotted: str, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> dict:
    """`config` once the component built from it on the meta device has exactly the file's tensors' shapes; the
    parameters and persistent buffers no tensor fills are an error, unless they are buffers the build computes."""
    import torch

    with torch.device("meta"):
        model = _model_class(dotted).from_config(config)
    expected = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    parameters = dict(model.named_parameters())
    wrong = [f"{n} {got} (the config gives {expected[n]})" for n, got in shapes.items() if expected.get(n, got) != got]
    extra = sorted(set(shapes) - set(expected))
    missing = sorted(name for name in set(expected) - set(shapes) if name in parameters)
    problems = (
        [f"shapes differ: {', '.join(wrong[:3])}"] * bool(wrong)
        + [f"tensors of no parameter: {', '.join(extra[:3])}"] * bool(extra)
        + [f"parameters no tensor fills: {', '.join(missing[:3])}"] * bool(missing)
    )
    if problems:
        raise ImportFailed(f"the {component} tensors do not make a {dotted.rpartition('.')[2]}: " + "; ".join(problems))
    return {"_class_name": dotted.rpartition(".")[2], **dict(model.config)} | {"_dotted": dotted}


# -- writing ----------------------------------------------------------------------------------------------------


def _out_dtype(tensor: Tensor) -> str:
    return tensor.upcast or tensor.dtype


def _out_bytes(tensor: Tensor) -> int:
    size = DTYPE_BYTES.get(_out_dtype(tensor), 1)
    count = 1
    for dim in tensor.shape:
        count *= dim
    return count * size


@dataclass
class Item:
    """One tensor of a file being written: what its header says, and how to make it when its turn comes."""

    name: str
    dtype: str  # safetensors' name
    shape: tuple[int, ...]
    make: Callable[[], Any]  # the tensor, of that dtype and shape, on the CPU

    @property
    def size(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * DTYPE_BYTES[self.dtype]


def _component_items(tensors: dict[str, Tensor], buffers: dict[str, Any], handles: dict[Path, Any]) -> list[Item]:
    """A component's tensors as the model directory stores them (FP8 upcast with its scale), then the buffers."""
    items = [
        Item(name, _out_dtype(tensor), tensor.shape, lambda tensor=tensor: _read(tensor, handles))
        for name, tensor in sorted(tensors.items())
    ]
    for name, value in sorted(buffers.items()):
        items.append(Item(name, _safetensors_dtype(value.dtype), tuple(value.shape), value.contiguous))
    return items


def _stream(target: Path, items: list[Item], advance: Any) -> None:
    """One safetensors file written tensor by tensor: the header from the shapes first, then each tensor's bytes
    as it is made, so at most one tensor is in memory."""
    import torch

    entries: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for item in items:
        entries[item.name] = {
            "dtype": item.dtype,
            "shape": list(item.shape),
            "data_offsets": [offset, offset + item.size],
        }
        offset += item.size
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    with open(target, "wb") as out:
        out.write(struct.pack("<Q", len(header)) + header)
        for item in items:
            value = item.make().contiguous()
            assert (_safetensors_dtype(value.dtype), tuple(value.shape)) == (item.dtype, item.shape), item.name
            out.write(value.reshape(-1).view(torch.uint8).numpy().data)  # the tensor's own bytes, not a copy
            advance(item.size)
        out.flush()
        os.fsync(out.fileno())


def _safetensors_dtype(dtype: Any) -> str:
    from gpu_runner.weight_cache import SAFETENSORS_DTYPES

    return next(name for name, known in SAFETENSORS_DTYPES.items() if known == dtype)


def _read(tensor: Tensor, handles: dict[Path, Any]) -> Any:
    import torch

    handle = handles[tensor.file]
    value = handle.get_tensor(tensor.name)
    if tensor.dtype in FP8_DTYPES:
        if tensor.scale is not None:
            value = value.float() * handle.get_tensor(tensor.scale).float()
        value = value.to(getattr(torch, DTYPE_NAMES[tensor.upcast or "BF16"]))
    return value.contiguous()


def _missing_buffers(config: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    """Persistent buffers the file does not carry (a vocoder's filters, the upsampler's blur kernel): computed by
    building the component on the CPU, which only small components need."""
    import torch

    with torch.device("meta"):
        probe = _model_class(config["_dotted"]).from_config(_plain(config))
    names = [name for name, _ in probe.named_buffers() if name in probe.state_dict() and name not in tensors]
    if not names:
        return {}
    built = _model_class(config["_dotted"]).from_config(_plain(config)).state_dict()
    return {name: built[name] for name in names}


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _text_encoder_folder(given: Path) -> Path:
    """A Gemma folder, or a Diffusers model directory's text_encoder/ (its tokenizer/ beside it)."""
    return given / "text_encoder" if (given / "text_encoder" / "config.json").is_file() else given


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        shutil.copy2(source, target)


def _take_text_encoder(given: Path, staging: Path) -> list[str]:
    """Hard-link (else copy) the text encoder's and tokenizer's files; what could not be found."""
    encoder = _text_encoder_folder(given)
    tokenizer = given / "tokenizer" if (given / "tokenizer").is_dir() else encoder
    lacking = []
    parts = (("text_encoder", encoder, TEXT_ENCODER_FILES), ("tokenizer", tokenizer, TOKENIZER_FILES))
    for part, folder, wanted in parts:
        chosen = [entry for entry in sorted(folder.iterdir()) if entry.is_file() and wanted.fullmatch(entry.name)]
        (staging / part).mkdir()
        for entry in chosen:
            _link_or_copy(entry, staging / part / entry.name)
        if problem := library.component_problem(staging, part):
            lacking.append(f"{part}/ {problem} (from {folder})")
    return lacking


def _fp8_entry_items(result: Plan, staging: Path, dtype: Any, handles: dict[Path, Any]) -> list[Item]:
    """The transformer as the runner's weight cache holds it (gpu_runner/weight_cache.py), laid out by the runner's
    own FP8 skeleton: the FP8 weights `Tensor.keeps_fp8` takes written as they are, their per-tensor scale as every
    row's (q * s either way: exact); the other FP8 layers cast as the runner casts them (fp8.quantise_weight of the
    weight in the compute dtype); everything else in the compute dtype."""
    from gpu_runner import fp8
    from gpu_runner.families.ltx2.loading import DiffusersDirectory

    tensors = result.components["transformer"]
    buffers = _missing_buffers(result.configs["transformer"], tensors)
    skeleton = DiffusersDirectory(staging).fp8_skeleton(dtype).state_dict()

    def raw(tensor: Tensor) -> Any:
        return handles[tensor.file].get_tensor(tensor.name)

    def scale(tensor: Tensor) -> Any:
        import torch

        rows = tensor.shape[0]
        if tensor.scale is None:
            return torch.ones(rows, 1)
        return handles[tensor.file].get_tensor(tensor.scale).float().reshape(-1, 1).expand(rows, 1)

    def cast(tensor: Tensor, part: int) -> Any:
        return fp8.quantise_weight(_read(tensor, handles).to(dtype))[part]

    def converted(tensor: Tensor, to: Any) -> Any:
        return _read(tensor, handles).to(to)

    items = []
    for name, meta in skeleton.items():
        layer, _, leaf = name.rpartition(".")
        weight = tensors.get(f"{layer}.weight")
        if f"{layer}.weight_scale" in skeleton and leaf in ("weight", "weight_scale") and weight is not None:
            part = 0 if leaf == "weight" else 1
            if weight.keeps_fp8():
                make = partial(raw, weight) if part == 0 else partial(scale, weight)
            else:
                make = partial(cast, weight, part)
        elif name in tensors:
            make = partial(converted, tensors[name], meta.dtype)
        else:
            make = partial(buffers[name].to, meta.dtype)
        items.append(Item(name, _safetensors_dtype(meta.dtype), tuple(meta.shape), make))
    return items


def keeps_fp8(result: Plan) -> int:
    """How many of the transformer's FP8 weights the runner's FP8 layout takes as they are (its FP8 layers only)."""
    from gpu_runner.families.ltx2.loading import is_fp8_layer

    tensors = result.components.get("transformer", {})
    return sum(t.keeps_fp8() and is_fp8_layer(n.removesuffix(".weight")) for n, t in tensors.items())


def write_model(
    result: Plan,
    models_dir: Path,
    name: str,
    text_encoder: Path | None,
    quiet: bool = False,
    weight_cache: Any = None,
) -> list[str]:
    """Write the model into models_dir/name through a hidden temporary directory; what it lacks (empty: nothing).
    With a weight cache (gpu_runner/weight_cache.py), a file's FP8 transformer weights the runner's layout takes are
    also written there as they are, as the entry the model's first FP8 job would have cast and written."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
    from safetensors import safe_open

    target = models_dir / name
    if target.exists() or target.is_symlink():
        raise ImportFailed(f"{target} already exists: choose another --name, or remove it first")
    staging = models_dir / f".importing-{name}-{os.getpid()}"  # library.IMPORTING: listed unusable, never offered
    shutil.rmtree(staging, ignore_errors=True)
    lacking: list[str] = []
    entry = None
    try:
        staging.mkdir(parents=True)
        with contextlib.ExitStack() as stack:
            handles = {
                path: stack.enter_context(safe_open(str(path), framework="pt"))
                for path in {t.file for tensors in result.components.values() for t in tensors.values()}
            }
            progress = stack.enter_context(
                Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TimeRemainingColumn(),
                    disable=quiet,
                    transient=False,
                )
            )
            task = progress.add_task("importing", total=result.bytes_out)
            for component in COMPONENT_ORDER:
                if component not in result.components:
                    continue
                progress.update(task, description=component)
                config = result.configs[component]
                folder = staging / component
                folder.mkdir()
                (folder / "config.json").write_text(json.dumps(_saved(config), indent=2) + "\n")
                buffers = _missing_buffers(config, result.components[component])
                items = _component_items(result.components[component], buffers, handles)
                _stream(folder / WEIGHTS_FILE, items, lambda n: progress.advance(task, n))
            if weight_cache is not None and keeps_fp8(result):
                from gpu_runner import memory

                # The dtype this machine's runner computes an FP8 job in (bf16 on a GPU): the entry's key has it.
                dtype = memory.compute_dtype(memory.pick_device(), "fp8")
                entry = weight_cache.entry(target / "transformer", dtype, files_in=staging / "transformer")
                items = _fp8_entry_items(result, staging, dtype, handles)
                size = sum(item.size for item in items)
                progress.update(task, description="weight cache", total=result.bytes_out + size)
                if entry.write(size, lambda path: _stream(path, items, lambda n: progress.advance(task, n))):
                    result.kept = keeps_fp8(result)
        scheduler = json.loads(FAMILY_CONFIGS.read_text())[result.version][f"scheduler_{result.variant}"]
        (staging / "scheduler").mkdir()
        (staging / "scheduler" / "scheduler_config.json").write_text(
            json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler", **scheduler["config"]}, indent=2) + "\n"
        )
        for lora in result.loras:
            _link_or_copy(lora, staging / lora.name)
        if text_encoder is not None:
            lacking = _take_text_encoder(text_encoder, staging)
        else:
            gemma = library.TEXT_ENCODER_NAME[library.TEXT_ENCODER_TYPE[result.version]]
            lacking = [f"text_encoder/ and tokenizer/ ({gemma}, not in the single file): give --text-encoder DIR"]
        (staging / "model_index.json").write_text(json.dumps(_model_index(result, staging), indent=2) + "\n")
        source = {
            "imported_from": result.sources,
            "version": result.version,
            "variant": result.variant,
            "fp8": fp8_said(result) or None,
            "text_encoder": str(text_encoder) if text_encoder else None,
            "lacking": lacking,
            "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if entry is not None:
            from gpu_runner import cache_budget

            cache_budget.remove(entry.path, "its import failed")
        raise
    return lacking


def fp8_said(result: Plan) -> str:
    """What became of the files' FP8 tensors, per component ("" when there were none)."""
    counts = Counter(
        component
        for component, tensors in result.components.items()
        for tensor in tensors.values()
        if tensor.dtype in FP8_DTYPES
    )
    upcast = DTYPE_NAMES[result.upcast]
    said = []
    for component in COMPONENT_ORDER:
        total = counts.get(component, 0)
        kept = result.kept if component == "transformer" else 0
        if kept:
            said.append(
                f"{component}: {kept} FP8 tensors kept as they are in the weight cache (upcast to {upcast} in the "
                "model directory, for other precisions)" + (f", {total - kept} upcast" if total > kept else "")
            )
        elif total:
            said.append(f"{component}: {total} FP8 tensors upcast to {upcast}")
    return "; ".join(said)


def _model_index(result: Plan, staging: Path) -> dict[str, Any]:
    """The pipeline's model_index.json, as LTX2Pipeline.save_pretrained writes it (the upsampler is not in it; 2.5's
    duration head and diffusion decoder are, as its published repository lists them)."""
    index: dict[str, Any] = {"_class_name": "LTX2Pipeline", "_diffusers_version": _diffusers_version()}
    for component in REQUIRED + LTX2_5_PARTS:
        if component in result.configs:
            dotted = result.configs[component]["_dotted"]
            index[component] = ["ltx2" if ".pipelines.ltx2" in dotted else "diffusers", dotted.rpartition(".")[2]]
    index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    text_class = json.loads(FAMILY_CONFIGS.read_text())[result.version]["text_encoder"]["class"]
    index["text_encoder"] = ["transformers", text_class.rpartition(".")[2]]
    tokenizer = "GemmaTokenizer"
    with contextlib.suppress(OSError, ValueError, AttributeError):
        tokenizer = json.loads((staging / "tokenizer" / "tokenizer_config.json").read_text()).get("tokenizer_class")
    index["tokenizer"] = ["transformers", tokenizer or "GemmaTokenizer"]
    return dict.fromkeys(("duration_head", "processor", "prompt_enhancer"), [None, None]) | index


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def _saved(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "_dotted" and not k.startswith("_use_default")}


def _weight_cache(options_json: str | None) -> Any:
    """The installation's FP8 weight cache under its budget, None where it has none (AVP_WEIGHT_CACHE_DIR=off, or
    the import run without the portal's options)."""
    import msgspec

    from contract.jobdir import RunnerOptions
    from gpu_runner.pipeline import budget_of
    from gpu_runner.weight_cache import WeightCache

    if not options_json:
        return None
    try:
        options = msgspec.json.decode(options_json, type=RunnerOptions)
    except msgspec.ValidationError as error:
        raise ImportFailed(f"--runner-options: {error}") from None
    if options.weight_cache_dir is None:
        return None
    return WeightCache(Path(options.weight_cache_dir), budget_of(options))


def default_name(files: list[Path]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", files[0].name.removesuffix(".safetensors")).strip("-.")
    return stem[:64] or "imported"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="avportal import-model",
        description="Import Lightricks' single-file LTX-2 checkpoints (and ComfyUI's) into the model library as a "
        "Diffusers-format directory.",
    )
    parser.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="the DiT file (with its VAEs and vocoder), optionally the spatial upsampler file and a distilled LoRA",
    )
    parser.add_argument("--name", help="the model's directory name in the library (default: the DiT file's name)")
    parser.add_argument("--variant", choices=("dev", "distilled"), help="default: from the file's name")
    parser.add_argument(
        "--text-encoder",
        type=Path,
        metavar="DIR",
        help="a Gemma-3 folder (Gemma-4 for LTX-2.5; or a Diffusers LTX-2 model directory) to take text_encoder/ and "
        "tokenizer/ from",
    )
    parser.add_argument(
        "--models-dir", type=Path, required=True, help="the model library (avportal import-model sets AVP_MODELS_DIR's)"
    )
    parser.add_argument(
        "--runner-options",
        help="the installation's runner options (JSON, as avportal import-model passes them): their weight cache "
        "takes the file's FP8 transformer weights as they are",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    name = args.name or default_name(args.files)
    # A stop (systemd, kill) unwinds like Ctrl-C: the temporary directory is removed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        if not NAME.fullmatch(name) or model_id(name) is None:
            raise ImportFailed(f"--name {name!r}: use letters, digits, '.', '_' and '-' (up to 64), e.g. ltx-2-19b-dev")
        for path in args.files:
            if not path.is_file():
                raise ImportFailed(f"{path}: no such file")
        if args.text_encoder is not None and not args.text_encoder.is_dir():
            raise ImportFailed(f"--text-encoder {args.text_encoder}: no such folder")
        result = plan(args.files, args.variant, args.text_encoder)
        print(
            f"LTX-{result.version} {result.variant}: {', '.join(c for c in COMPONENT_ORDER if c in result.components)}"
            f" ({result.bytes_out / 2**30:.2f} GiB to write)",
            file=sys.stderr,
        )
        if "latent_upsampler" not in result.components:
            print(
                "no spatial upsampler file given (ltx-2-spatial-upscaler-x2-*.safetensors): fast mode needs it",
                file=sys.stderr,
            )
        weight_cache = _weight_cache(args.runner_options) if result.fp8 else None
        lacking = write_model(result, args.models_dir, name, args.text_encoder, args.quiet, weight_cache)
        if result.fp8:
            print(f"FP8: {fp8_said(result)}", file=sys.stderr)
    except ImportFailed as error:
        print(f"avportal import-model: {error}; nothing was added to the library", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(args.models_dir).free
            print(
                f"avportal import-model: the disk of {args.models_dir} is full ({free / 2**20:.1f} MiB free; the model"
                f" needs about {result.bytes_out / 2**30:.2f} GiB): free space and import again; nothing was added "
                "to the library",
                file=sys.stderr,
            )
            return 3
        raise
    where = args.models_dir / name
    if lacking:
        print(f"imported into {where}, but it cannot be used yet: it lacks " + "; ".join(lacking), file=sys.stderr)
        return 0
    print(f"imported into {where}: LTX-{result.version} {result.variant}")
    return 0
