"""The model library: what a Diffusers-format LTX-2 directory is, read from its own config files.

A directory is recognised by what its components say about themselves, never by its name: the
version (2.0, 2.3 or 2.5) from transformer/config.json's feature switches, checked against the
connectors', VAE's, vocoder's and text encoder's configs; the variant (dev or distilled) of
transformer/ from the scheduler's config; and which optional parts are present (for 2.5 its second
transformer, found by its config, not its folder's name, and its duration head, diffusion decoder
and prompt enhancer). Whatever is missing or unknown becomes
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

Version = Literal["2.0", "2.3", "2.5"]
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

# LTX-2.5's own parts beside the 2.3 layout: fast mode decodes with the diffusion decoder (a small diffusion model of
# its own, after the upsample and refine); the duration head picks a clip's length from the prompt; the optional
# prompt enhancer (a Gemma-4 E2B) rewrites a prompt. The published repository also has transformer_full/, the dev
# transformer beside the distilled transformer/: found by its config (FULL_TRANSFORMER is only its usual name).
DIFFUSION_DECODER = "diffusion_decoder"
DURATION_HEAD = "duration_head"
PROMPT_ENHANCER = "prompt_enhancer"
FULL_TRANSFORMER = "transformer_full"

# transformer/config.json's switches, as each version sets them (a switch left out of the file
# takes the class's default, which is 2.0's: older 2.0 directories predate these keys). 2.5 is 2.3's
# transformer with keyframe slots (a learnt absolute position embedding marks their tokens) and
# feed-forwards without bias.
_LTX2_3_SWITCHES = {
    "gated_attn": True,
    "cross_attn_mod": True,
    "audio_gated_attn": True,
    "audio_cross_attn_mod": True,
    "use_prompt_embeddings": False,
    "perturbed_attn": True,
}
TRANSFORMER_SWITCHES: dict[str, dict[str, bool]] = {
    "2.0": {
        "gated_attn": False,
        "cross_attn_mod": False,
        "audio_gated_attn": False,
        "audio_cross_attn_mod": False,
        "use_prompt_embeddings": True,
        "perturbed_attn": False,
        "use_keyframes_abs_pos_embedding": False,
        "ff_bias": True,
    },
    "2.3": _LTX2_3_SWITCHES | {"use_keyframes_abs_pos_embedding": False, "ff_bias": True},
    "2.5": _LTX2_3_SWITCHES | {"use_keyframes_abs_pos_embedding": True, "ff_bias": False},
}
# What the other components of each version are: the connectors' projection, the number of VAE
# decoder blocks (2.0: three spatiotemporal; 2.3: four, one temporal and one spatial) and the vocoder.
CONNECTOR_PER_MODALITY = {"2.0": False, "2.3": True, "2.5": True}
VAE_DECODER_BLOCKS = {"2.0": 3, "2.3": 4, "2.5": 4}
VOCODER_CLASS = {"2.0": "LTX2Vocoder", "2.3": "LTX2VocoderWithBWE", "2.5": "LTX2VocoderWithBWE"}
COMPONENT_CLASS = {
    "transformer": "LTX2VideoTransformer3DModel",
    "connectors": "LTX2TextConnectors",
    "vae": "AutoencoderKLLTX2Video",
    "audio_vae": "AutoencoderKLLTX2Audio",
    "scheduler": "FlowMatchEulerDiscreteScheduler",
    UPSAMPLER: "LTX2LatentUpsamplerModel",
    DIFFUSION_DECODER: "LTX2VideoDiffusionDecoderModel",
    DURATION_HEAD: "LTX2DurationHead",
}
# The text encoder's config.json model_type: Gemma-3 up to 2.3, Gemma-4 (Gemma4UnifiedForConditionalGeneration) in 2.5.
TEXT_ENCODER_TYPE = {"2.0": "gemma3", "2.3": "gemma3", "2.5": "gemma4_unified"}
TEXT_ENCODER_NAME = {"gemma3": "Gemma-3", "gemma4_unified": "Gemma-4"}
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
    variant: Variant  # of transformer/
    upsampler: bool  # latent_upsampler/ present and complete
    distilled_lora: str | None = None  # a file name in the directory (dev models only)
    distilled_transformer: bool = False  # transformer_distilled/ present, complete, transformer/'s layout
    notes: tuple[str, ...] = ()  # optional parts present but unusable, and why
    text_parts: tuple[str, ...] = ()  # DURATION_HEAD and/or PROMPT_ENHANCER, present and usable (`text_parts`)
    # LTX-2.5 only:
    full_transformer: str | None = None  # beside a distilled transformer/: the subfolder of the dev one
    diffusion_decoder: bool = False  # diffusion_decoder/ present and complete

    @property
    def parts(self) -> tuple[str, ...]:
        """The optional parts present, by name."""
        return (
            ((UPSAMPLER,) if self.upsampler else ())
            + (("distilled_lora",) if self.distilled_lora else ())
            + ((DISTILLED_TRANSFORMER,) if self.distilled_transformer else ())
            + ((self.full_transformer,) if self.full_transformer else ())
            + ((DIFFUSION_DECODER,) if self.diffusion_decoder else ())
            + self.text_parts
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
    def quality_transformer(self) -> str | None:
        """The subfolder of the transformer quality mode runs: transformer/, but for LTX-2.5 a dev one (a distilled
        2.5's second transformer, `full_transformer`), None when there is none."""
        if self.version == "2.5" and self.variant == "distilled":
            return self.full_transformer
        return "transformer"

    @property
    def quality_distilled(self) -> bool:
        """Whether quality mode runs a distilled transformer (then it takes a distilled model's defaults)."""
        return self.variant == "distilled" and self.quality_transformer == "transformer"

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
        if self.version == "2.5" and not self.diffusion_decoder:
            missing.append(f"a {DIFFUSION_DECODER}/ (LTX-2.5's video decoder, {COMPONENT_CLASS[DIFFUSION_DECODER]})")
        return " and ".join(missing) or None

    def quality_missing(self) -> str | None:
        """What the model lacks for quality mode, None when it has everything."""
        if self.quality_transformer is None:
            return (
                f"the dev transformer ({FULL_TRANSFORMER}/ in LTX-2.5's published layout: a "
                f"{COMPONENT_CLASS['transformer']} laid out as transformer/, beside the distilled transformer/)"
            )
        return None


def recognise(directory: Path) -> Recognised:
    """What the model directory is; raises Unrecognised with the reason (the first problem found)."""
    directory = directory.resolve()
    if not directory.is_dir():
        raise Unrecognised(f"{directory} is not a directory")
    missing = [f"{name}/ {problem}" for name in COMPONENTS if (problem := component_problem(directory, name))]
    if missing:
        raise Unrecognised("incomplete: " + "; ".join(missing))
    for name, class_name in COMPONENT_CLASS.items():
        if name in COMPONENTS:  # the optional parts are checked where they are looked for
            _expect_class(directory, name, class_name)
    version = _version(directory)
    variant = _variant(_config(directory, "scheduler"))
    upsampler, notes = _optional_model(directory, UPSAMPLER)
    distilled, distilled_notes = _distilled_transformer(directory) if variant == "dev" else (False, ())
    lora = _distilled_lora(directory) if variant == "dev" else None
    extras, extra_notes = text_parts(directory)
    recognised = Recognised(
        family="ltx-2",
        version=version,
        variant=variant,
        upsampler=upsampler,
        distilled_lora=lora,
        distilled_transformer=distilled,
        notes=notes + distilled_notes + extra_notes,
        text_parts=extras,
    )
    return _with_ltx2_5_parts(directory, recognised) if version == "2.5" else recognised


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
    """2.0, 2.3 or 2.5 from the transformer's switches, then every other component must be of the same version."""
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
            f"transformer/config.json is not LTX-2.0's, 2.3's or 2.5's: its {found} match no version's "
            "(2.0: gated and modulated attention off, prompt embeddings on; 2.3: the other way round; 2.5: 2.3's "
            "with keyframe position embeddings on and feed-forward bias off)"
        )
    text = _config(directory, "text_encoder")
    expected = TEXT_ENCODER_TYPE[version]
    if text.get("model_type") != expected:
        raise Unrecognised(
            f"text_encoder/config.json has model_type {text.get('model_type')!r}; LTX-{version} uses "
            f"{expected!r} ({TEXT_ENCODER_NAME[expected]})"
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


def _optional_model(directory: Path, name: str) -> tuple[bool, tuple[str, ...]]:
    """An optional component (the latent upsampler, 2.5's diffusion decoder or duration head): usable when complete
    and of its class; present but unusable is a note saying why it is left out."""
    if not (directory / name).exists():
        return False, ()
    problem = component_problem(directory, name)
    if problem is None:
        found = _config(directory, name).get("_class_name")
        if found != COMPONENT_CLASS[name]:
            problem = f"has _class_name {found!r}, not {COMPONENT_CLASS[name]!r}"
    return (True, ()) if problem is None else (False, (f"{name}/ {problem}, so it is left out",))


def decoder_minimum(directory: Path) -> tuple[int, int]:
    """The smallest sides (pixels) and clip (frames) LTX-2.5's diffusion decoder can decode: each of its stages
    attends within a window (`decoder_stage_kernels`, then `decoder_stage5_kernel` on the 4x4-pixel patches), which
    must fit the stage's grid (diffusers refuses a smaller grid): 224 px and 11 frames as published."""
    config = _config(directory, DIFFUSION_DECODER)
    try:
        kernels = [*config["decoder_stage_kernels"], config["decoder_stage5_kernel"]]
        strides = config["decoder_upsample_strides"]
        spatial = int(config["spatial_compression_ratio"])
        patch = int(config["patch_size"])
    except (KeyError, TypeError, ValueError) as error:
        raise Unrecognised(f"{DIFFUSION_DECODER}/config.json lacks or garbles {error}") from None
    # A stage's grid, in latent cells, has grown by the strides of the upsamples before it; the last stage works on
    # patches of `patch` pixels. The first stage's window on the latent grid is what binds.
    cells = 1
    for axis in (1, 2):
        growth = 1
        for stage, kernel in enumerate(kernels):
            scale = spatial // patch if stage == len(kernels) - 1 else growth
            cells = max(cells, -(-int(kernel[axis]) // scale))
            if stage < len(strides):
                growth *= int(strides[stage][axis])
    return cells * spatial, int(kernels[-1][0])


def _with_ltx2_5_parts(directory: Path, recognised: Recognised) -> Recognised:
    """LTX-2.5's own parts: the dev transformer beside a distilled transformer/ and the diffusion decoder (its
    duration head and prompt enhancer are `text_parts`, which any version may have)."""
    decoder, decoder_notes = _optional_model(directory, DIFFUSION_DECODER)
    full, full_notes = _second_transformer(directory) if recognised.variant == "distilled" else (None, ())
    return msgspec.structs.replace(
        recognised,
        full_transformer=full,
        diffusion_decoder=decoder,
        notes=recognised.notes + full_notes + decoder_notes,
    )


def _second_transformer(directory: Path) -> tuple[str | None, tuple[str, ...]]:
    """Beside a distilled transformer/, the first other subfolder whose config.json is an LTX-2 transformer's (the
    published LTX-2.5 repository calls it transformer_full/; the name is its convention, so the configs decide):
    usable when complete and laid out as transformer/ (a distilled and a dev transformer share their config, so
    the scheduler's config says which transformer/ is, and the second one is the other)."""
    candidates = []
    for entry in sorted(directory.iterdir(), key=lambda entry: entry.name):
        if entry.name == "transformer" or entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            config = json.loads((entry / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config.get("_class_name") == COMPONENT_CLASS["transformer"]:
            candidates.append(entry.name)
    notes = []
    for name in candidates:
        problem = _transformer_layout_problem(directory, name)
        if problem is None:
            return name, tuple(notes)
        notes.append(f"{name}/ {problem}, so it is left out")
    return None, tuple(notes)


def _transformer_layout_problem(directory: Path, name: str) -> str | None:
    """What keeps a second transformer's weights from loading into transformer/'s layout, None when nothing does."""
    problem = component_problem(directory, name)
    if problem is not None:
        return problem
    layout, reference = (
        {key: value for key, value in _config(directory, folder).items() if not key.startswith("_")}
        for folder in (name, "transformer")
    )
    if _config(directory, name).get("_class_name") != COMPONENT_CLASS["transformer"]:
        return f"is not a {COMPONENT_CLASS['transformer']}"
    if layout != reference:
        differing = sorted(key for key in layout.keys() | reference.keys() if layout.get(key) != reference.get(key))
        return "is laid out unlike transformer/ (config.json differs in " + ", ".join(differing[:5]) + ")"
    return None


def _distilled_transformer(directory: Path) -> tuple[bool, tuple[str, ...]]:
    """transformer_distilled/: usable when complete and laid out as transformer/ (its weights load into it)."""
    if not (directory / DISTILLED_TRANSFORMER).exists():
        return False, ()
    problem = _transformer_layout_problem(directory, DISTILLED_TRANSFORMER)
    if problem is None:
        return True, ()
    return False, (f"{DISTILLED_TRANSFORMER}/ {problem}, so it is left out",)


def _distilled_lora(directory: Path) -> str | None:
    names = sorted(
        entry.name for entry in directory.iterdir() if entry.is_file() and DISTILLED_LORA.fullmatch(entry.name)
    )
    return names[0] if names else None


# ---- LTX-2.5's optional text-side parts (issue 16, points 4-5): the duration head and the prompt enhancer -------
# Each is a capability of the model that has it, shown in `Recognised.parts`: `num_frames: "auto"` needs the first,
# `enhance_prompt: true` the second (contract/models.py refuses a job asking a model without).
TEXT_PART_CLASS = {DURATION_HEAD: "LTX2DurationHead"}  # the enhancer is a transformers model: its config has none
# Where the enhancer's tokenizer (with its chat template) may be: its own folder, else the Diffusers layout's
# processor/ (diffusers' LTX-2.5 pipeline templates the enhancer's chat with it).
ENHANCER_TOKENIZER_DIRS = (PROMPT_ENHANCER, "processor")
TOKENIZER_CONFIG = "tokenizer_config.json"


def enhancer_tokenizer_dir(enhancer_dir: Path) -> Path:
    """The folder holding the enhancer's tokenizer: prompt_enhancer/ itself, else its model's processor/."""
    for name in ENHANCER_TOKENIZER_DIRS:
        candidate = enhancer_dir.parent / name
        if (candidate / TOKENIZER_CONFIG).is_file():
            return candidate
    return enhancer_dir


def connector_widths(connectors_config: dict[str, Any]) -> tuple[int, int]:
    """The widths of the text connectors' video and audio outputs, which the duration head reads: each modality's
    own projection (2.3, 2.5: video_hidden_dim, audio_hidden_dim), else the caption width both share (2.0)."""
    if connectors_config.get("per_modality_projections"):
        return int(connectors_config.get("video_hidden_dim", 4096)), int(
            connectors_config.get("audio_hidden_dim", 2048)
        )
    width = int(connectors_config.get("caption_channels", 3840))
    return width, width


def _duration_head_problem(directory: Path) -> str | None:
    """What keeps duration_head/ from reading this model's connector outputs (None: nothing)."""
    head = _config(directory, DURATION_HEAD)
    if head.get("_class_name") != TEXT_PART_CLASS[DURATION_HEAD]:
        return f"has _class_name {head.get('_class_name')!r}, not {TEXT_PART_CLASS[DURATION_HEAD]!r}"
    reads = head.get("video_cross_attention_dim", 4096), head.get("audio_cross_attention_dim", 2048)  # its defaults
    given = connector_widths(_config(directory, "connectors"))
    if reads != given:
        return f"reads connector outputs {reads[0]} and {reads[1]} wide, but this model's connectors give {given}"
    return None


def text_parts(directory: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The duration head and prompt enhancer present and usable, and notes on those present but not."""
    parts: list[str] = []
    notes: list[str] = []
    for name in (DURATION_HEAD, PROMPT_ENHANCER):
        if not (directory / name).exists():
            continue
        problem = component_problem(directory, name)
        if problem is None and name == DURATION_HEAD:
            problem = _duration_head_problem(directory)
        tokenizer = enhancer_tokenizer_dir(directory / name) / TOKENIZER_CONFIG
        if problem is None and name == PROMPT_ENHANCER and not tokenizer.is_file():
            problem = f"has no tokenizer ({TOKENIZER_CONFIG} in {name}/ or processor/)"
        if problem is None:
            parts.append(name)
        else:
            notes.append(f"{name}/ {problem}, so it is left out")
    return tuple(parts), tuple(notes)


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
