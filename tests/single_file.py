"""Write a Diffusers-format LTX-2 model directory as Lightricks' single files (the DiT file with its connectors, VAEs
and vocoder, and LTX-2.5's diffusion decoder and duration head; the upsampler file), through the import's own name
table run backwards (gpu_runner/single_file_keys.py `to_single_file`), for tests of `avportal import-model` on tiny
models.

The metadata carries a `config` JSON with the attention heads (which no shape tells), as Lightricks' files do
(their exact key set is not known here: these are the names the import reads). `fp8="comfy"` stores the DiT's
block linears as ComfyUI's scaled FP8 (an e4m3 weight and a per-tensor `scale_weight`, plus the `scaled_fp8`
marker).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gpu_runner import single_file_keys as keys

DIT_COMPONENTS = ("transformer", "connectors", "vae", "audio_vae", "vocoder")
LTX2_5_PARTS = ("diffusion_decoder", "duration_head")  # in the DiT file, where the import takes them to be (assumed)


def component_tensors(model_dir: Path, component: str) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted((model_dir / component).glob("*.safetensors")):
        tensors |= load_file(path)
    return tensors


def heads_metadata(model_dir: Path) -> dict[str, str]:
    transformer = json.loads((model_dir / "transformer" / "config.json").read_text())
    connectors = json.loads((model_dir / "connectors" / "config.json").read_text())
    section = {
        "num_attention_heads": transformer["num_attention_heads"],
        "audio_num_attention_heads": transformer["audio_num_attention_heads"],
        "connector_num_attention_heads": connectors["video_connector_num_attention_heads"],
        "audio_connector_num_attention_heads": connectors["audio_connector_num_attention_heads"],
    }
    described = {"transformer": section}
    for part in LTX2_5_PARTS:  # the decoder's windows are no shape's: its config rides in the metadata (assumed)
        if (model_dir / part).is_dir():
            config = json.loads((model_dir / part / "config.json").read_text())
            described[part] = {key: value for key, value in config.items() if not key.startswith("_")}
    return {"config": json.dumps(described)}


def write_single_files(model_dir: Path, dit_file: Path, upsampler_file: Path | None = None, fp8: str | None = None):
    """The model's DiT file (and, when asked, its upsampler file), as Lightricks lays them out."""
    transformer = json.loads((model_dir / "transformer" / "config.json").read_text())
    version = "2.3" if transformer["gated_attn"] else "2.0"
    version = "2.5" if transformer.get("use_keyframes_abs_pos_embedding") else version
    vae_blocks = len(json.loads((model_dir / "vae" / "config.json").read_text())["block_out_channels"])
    single: dict[str, torch.Tensor] = {}
    parts = [part for part in LTX2_5_PARTS if (model_dir / part).is_dir()]
    for component in (*DIT_COMPONENTS, *parts):
        for name, tensor in component_tensors(model_dir, component).items():
            single[keys.to_single_file(component, name, version, vae_blocks)] = tensor.contiguous()
    if fp8 == "comfy":
        single = _comfy_fp8(single)
    save_file(single, str(dit_file), metadata=heads_metadata(model_dir))
    if upsampler_file is not None:
        upsampler = component_tensors(model_dir, "latent_upsampler")
        named = {keys.to_single_file("latent_upsampler", name, version): t for name, t in upsampler.items()}
        save_file(named, str(upsampler_file))


def _comfy_fp8(single: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    for name, tensor in single.items():
        if ".transformer_blocks." in name and name.endswith(".weight") and tensor.ndim == 2 and "connector" not in name:
            scale = tensor.float().abs().max().clamp(min=1e-12) / torch.finfo(torch.float8_e4m3fn).max
            out[name] = (tensor.float() / scale).to(torch.float8_e4m3fn)
            out[name.removesuffix(".weight") + ".scale_weight"] = scale.reshape(())
        else:
            out[name] = tensor
    return out
