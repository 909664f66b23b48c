"""The model library: what a Diffusers-format LTX-2 directory is, read from its own config files.

A directory is recognised by what its components say about themselves, never by its name: the
version (2.0 or 2.3) from transformer/config.json's feature switches, checked against the
connectors', VAE's, vocoder's and text encoder's configs; the variant (dev or distilled) from the
scheduler's config; and which optional parts are present. Whatever is missing or unknown becomes
an `Unrecognised` naming the file or key and what it should be, so a broken directory is listed
with its reason instead of breaking start-up. Torch-free: the web process lists models with it,
the runner re-checks a job's model directory with it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import msgspec

Version = Literal["2.0", "2.3"]
Variant = Literal["dev", "distilled"]

# What each component directory must hold for the runner to load it.
COMPONENTS: dict[str, str] = {
    "text_encoder": "config.json",
    "tokenizer": "tokenizer_config.json",
    "connectors": "config.json",
    "transformer": "config.json",
    "vae": "config.json",
    "audio_vae": "config.json",
    "vocoder": "config.json",
    "scheduler": "scheduler_config.json",
}
WEIGHTLESS_COMPONENTS = {"tokenizer", "scheduler"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
UPSAMPLER = "latent_upsampler"  # optional: the x2 spatial latent upsampler of two-stage generation
# Optional beside a dev transformer/: the distilled transformer of the same model (the demo ships one), which
# gives a dev model fast mode without a LoRA (with one, DISTILLED_LORA below, stage 2 applies it).
DISTILLED_TRANSFORMER = "transformer_distilled"

# transformer/config.json's switches, as each version sets them (a switch left out of the file
# takes the class's default, which is 2.0's: older 2.0 directories predate these keys).
TRANSFORMER_SWITCHES: dict[str, dict[str, bool]] = {
    "2.0": {
        "gated_attn": False,
        "cross_attn_mod": False,
        "audio_gated_attn": False,
        "audio_cross_attn_mod": False,
        "use_prompt_embeddings": True,
        "perturbed_attn": False,
    },
    "2.3": {
        "gated_attn": True,
        "cross_attn_mod": True,
        "audio_gated_attn": True,
        "audio_cross_attn_mod": True,
        "use_prompt_embeddings": False,
        "perturbed_attn": True,
    },
}
# What the other components of each version are: the connectors' projection, the number of VAE
# decoder blocks (2.0: three spatiotemporal; 2.3: four, one temporal and one spatial) and the vocoder.
CONNECTOR_PER_MODALITY = {"2.0": False, "2.3": True}
VAE_DECODER_BLOCKS = {"2.0": 3, "2.3": 4}
VOCODER_CLASS = {"2.0": "LTX2Vocoder", "2.3": "LTX2VocoderWithBWE"}
COMPONENT_CLASS = {
    "transformer": "LTX2VideoTransformer3DModel",
    "connectors": "LTX2TextConnectors",
    "vae": "AutoencoderKLLTX2Video",
    "audio_vae": "AutoencoderKLLTX2Audio",
    "scheduler": "FlowMatchEulerDiscreteScheduler",
    UPSAMPLER: "LTX2LatentUpsamplerModel",
}
TEXT_ENCODER_TYPE = "gemma3"  # Gemma-3 for both versions (2.5 moved to Gemma-4, which the runner cannot run)
DEV_SHIFT_TERMINAL = 0.1
# A dev model's LoRA that makes it behave as the distilled one (e.g. ltx-2-19b-distilled-lora-384.safetensors).
DISTILLED_LORA = re.compile(r".*distill.*lora.*\.safetensors", re.IGNORECASE)
# Written last by `avportal import-model` (gpu_runner/import_model.py): the files a model was imported from.
IMPORT_SOURCE = "source.json"
# Where an import writes before it renames the model into place: `.importing-<name>-<pid>` in AVP_MODELS_DIR.
IMPORTING = re.compile(r"\.importing-(?P<name>.+)-(?P<pid>\d+)")


class Unrecognised(Exception):
    """A directory that is not a usable LTX-2 model; the message names what is missing or unknown."""


class Recognised(msgspec.Struct, frozen=True):
    family: Literal["ltx-2"]
    version: Version
    variant: Variant
    upsampler: bool  # latent_upsampler/ present and complete
    distilled_lora: str | None = None  # a file name in the directory (dev models only)
    distilled_transformer: bool = False  # transformer_distilled/ present, complete, transformer/'s layout
    notes: tuple[str, ...] = ()  # optional parts present but unusable, and why

    @property
    def parts(self) -> tuple[str, ...]:
        """The optional parts present, by name."""
        return (
            ((UPSAMPLER,) if self.upsampler else ())
            + (("distilled_lora",) if self.distilled_lora else ())
            + ((DISTILLED_TRANSFORMER,) if self.distilled_transformer else ())
        )

    @property
    def fast_transformer(self) -> str | None:
        """The subfolder of the transformer fast mode runs (a distilled one; a dev model's own with its distilled
        LoRA, `fast_lora`, applied to stage 2), None when there is none."""
        if self.variant == "distilled":
            return "transformer"
        if self.distilled_transformer:
            return DISTILLED_TRANSFORMER
        return "transformer" if self.distilled_lora else None

    @property
    def fast_lora(self) -> str | None:
        """A dev model's distilled LoRA file (in the model directory) that fast mode applies to its stage 2 alone,
        where the model has no distilled transformer of its own."""
        if self.variant == "dev" and not self.distilled_transformer:
            return self.distilled_lora
        return None

    def fast_missing(self) -> str | None:
        """What the model lacks for fast mode (the distilled two-stage path), None when it has everything."""
        missing = []
        if self.fast_transformer is None:
            missing.append(
                "a distilled transformer (this is a dev model: use its distilled variant, or add "
                f"{DISTILLED_TRANSFORMER}/ or its distilled LoRA file, e.g. ltx-2-19b-distilled-lora-384.safetensors)"
            )
        if not self.upsampler:
            missing.append(f"a {UPSAMPLER}/ (the x2 spatial latent upsampler, LTX2LatentUpsamplerModel)")
        return " and ".join(missing) or None


def recognise(directory: Path) -> Recognised:
    """What the model directory is; raises Unrecognised with the reason (the first problem found)."""
    directory = directory.resolve()
    if not directory.is_dir():
        raise Unrecognised(f"{directory} is not a directory")
    missing = [f"{name}/ {problem}" for name in COMPONENTS if (problem := component_problem(directory, name))]
    if missing:
        raise Unrecognised("incomplete: " + "; ".join(missing))
    for name, class_name in COMPONENT_CLASS.items():
        if name != UPSAMPLER:
            _expect_class(directory, name, class_name)
    version = _version(directory)
    variant = _variant(_config(directory, "scheduler"))
    upsampler, notes = _upsampler(directory)
    distilled, distilled_notes = _distilled_transformer(directory) if variant == "dev" else (False, ())
    lora = _distilled_lora(directory) if variant == "dev" else None
    return Recognised(
        family="ltx-2",
        version=version,
        variant=variant,
        upsampler=upsampler,
        distilled_lora=lora,
        distilled_transformer=distilled,
        notes=notes + distilled_notes,
    )


def component_problem(model_dir: Path, name: str) -> str | None:
    """What is wrong with one component directory (None: present, readable, with weights), torch-free."""
    config_name = COMPONENTS.get(name, "config.json")
    directory = (model_dir / name).resolve()
    if not directory.is_relative_to(model_dir.resolve()):
        return "resolves outside the model directory"
    if not directory.is_dir():
        return "is missing"
    try:
        json.loads((directory / config_name).read_text())
    except FileNotFoundError:
        return f"has no {config_name}"
    except (OSError, ValueError):
        return f"has an unreadable {config_name}"
    if name not in WEIGHTLESS_COMPONENTS and not any(
        entry.name.endswith(WEIGHT_SUFFIXES) for entry in directory.iterdir()
    ):
        return "has no weights"
    return None


def _config(directory: Path, name: str) -> dict[str, Any]:
    path = f"{name}/{COMPONENTS.get(name, 'config.json')}"
    try:
        config = json.loads((directory / path).read_text())
    except (OSError, ValueError) as error:
        raise Unrecognised(f"{path} cannot be read: {error}") from None
    if not isinstance(config, dict):
        raise Unrecognised(f"{path} is not a JSON object")
    return config


def _expect_class(directory: Path, name: str, class_name: str) -> None:
    found = _config(directory, name).get("_class_name")
    if found != class_name:
        raise Unrecognised(
            f"{name}/{COMPONENTS.get(name, 'config.json')} has _class_name {found!r}, not {class_name!r}"
        )


def _version(directory: Path) -> Version:
    """2.0 or 2.3 from the transformer's switches, then every other component must be of the same version."""
    transformer = _config(directory, "transformer")
    version = next(
        (
            version
            for version, switches in TRANSFORMER_SWITCHES.items()
            if all(transformer.get(key, TRANSFORMER_SWITCHES["2.0"][key]) == value for key, value in switches.items())
        ),
        None,
    )
    if version is None:
        found = ", ".join(f"{key}={transformer.get(key)!r}" for key in TRANSFORMER_SWITCHES["2.0"])
        raise Unrecognised(
            f"transformer/config.json is neither LTX-2.0 nor LTX-2.3: its {found} match neither version's "
            "(2.0: gated and modulated attention off, prompt embeddings on; 2.3: the other way round)"
        )
    text = _config(directory, "text_encoder")
    if text.get("model_type") != TEXT_ENCODER_TYPE:
        raise Unrecognised(
            f"text_encoder/config.json has model_type {text.get('model_type')!r}; LTX-{version} uses "
            f"{TEXT_ENCODER_TYPE!r} (Gemma-3)"
        )
    per_modality = _config(directory, "connectors").get("per_modality_projections", False)
    if per_modality != CONNECTOR_PER_MODALITY[version]:
        raise Unrecognised(
            f"connectors/config.json has per_modality_projections={per_modality!r}, but the transformer is "
            f"LTX-{version}'s, whose connectors have {CONNECTOR_PER_MODALITY[version]}"
        )
    blocks = _config(directory, "vae").get("decoder_block_out_channels")
    if not isinstance(blocks, list) or len(blocks) != VAE_DECODER_BLOCKS[version]:
        raise Unrecognised(
            f"vae/config.json has decoder_block_out_channels={blocks!r}, but the transformer is LTX-{version}'s, "
            f"whose VAE decoder has {VAE_DECODER_BLOCKS[version]} blocks"
        )
    vocoder = _config(directory, "vocoder").get("_class_name")
    if vocoder != VOCODER_CLASS[version]:
        raise Unrecognised(
            f"vocoder/config.json has _class_name {vocoder!r}, but the transformer is LTX-{version}'s, "
            f"whose vocoder is {VOCODER_CLASS[version]!r}"
        )
    return version


def _variant(scheduler: dict[str, Any]) -> Variant:
    """Dev: dynamic shifting stretched to shift_terminal; distilled: neither (its sigmas are fixed)."""
    shifting, terminal = scheduler.get("use_dynamic_shifting"), scheduler.get("shift_terminal")
    if shifting is True and terminal is not None:
        return "dev"
    if shifting is False and terminal is None:
        return "distilled"
    raise Unrecognised(
        f"scheduler/scheduler_config.json has use_dynamic_shifting={shifting!r} and shift_terminal={terminal!r}: "
        f"neither LTX-2's dev scheduler (true, {DEV_SHIFT_TERMINAL}) nor its distilled one (false, null)"
    )


def _upsampler(directory: Path) -> tuple[bool, tuple[str, ...]]:
    if not (directory / UPSAMPLER).exists():
        return False, ()
    problem = component_problem(directory, UPSAMPLER)
    if problem is None:
        found = _config(directory, UPSAMPLER).get("_class_name")
        if found != COMPONENT_CLASS[UPSAMPLER]:
            problem = f"has _class_name {found!r}, not {COMPONENT_CLASS[UPSAMPLER]!r}"
    return (True, ()) if problem is None else (False, (f"{UPSAMPLER}/ {problem}, so it is left out",))


def _distilled_transformer(directory: Path) -> tuple[bool, tuple[str, ...]]:
    """transformer_distilled/: usable when complete and laid out as transformer/ (its weights load into it)."""
    if not (directory / DISTILLED_TRANSFORMER).exists():
        return False, ()
    problem = component_problem(directory, DISTILLED_TRANSFORMER)
    if problem is None:
        layout, dev = (
            {key: value for key, value in _config(directory, name).items() if not key.startswith("_")}
            for name in (DISTILLED_TRANSFORMER, "transformer")
        )
        if _config(directory, DISTILLED_TRANSFORMER).get("_class_name") != COMPONENT_CLASS["transformer"]:
            problem = f"is not a {COMPONENT_CLASS['transformer']}"
        elif layout != dev:
            differing = sorted(key for key in layout.keys() | dev.keys() if layout.get(key) != dev.get(key))
            problem = "is laid out unlike transformer/ (config.json differs in " + ", ".join(differing[:5]) + ")"
    if problem is None:
        return True, ()
    return False, (f"{DISTILLED_TRANSFORMER}/ {problem}, so it is left out",)


def _distilled_lora(directory: Path) -> str | None:
    names = sorted(
        entry.name for entry in directory.iterdir() if entry.is_file() and DISTILLED_LORA.fullmatch(entry.name)
    )
    return names[0] if names else None


def import_source(directory: Path) -> str:
    """Where an imported model came from, in words ("imported from ltx-2-19b-dev.safetensors, ..."); "" for a
    directory that was not imported (or whose source.json cannot be read)."""
    try:
        source = json.loads((directory / IMPORT_SOURCE).read_text())
        files = [name for name in source["imported_from"] if isinstance(name, str)]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    text = "imported from " + ", ".join(files)
    if isinstance(source.get("fp8"), str):
        text += f" ({source['fp8']})"
    return text


def unfinished_import(entry_name: str) -> str | None:
    """Why a hidden `.importing-<name>-<pid>` directory is no model (yet); None for any other name."""
    match = IMPORTING.fullmatch(entry_name)
    if match is None:
        return None
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return (
            f"an import of {match['name']!r} that did not finish (avportal import-model was stopped): delete this "
            "directory and import again"
        )
    except (PermissionError, OverflowError, ValueError):
        pass
    return f"{match['name']!r} is being imported (avportal import-model, process {match['pid']}); offered once it ends"
