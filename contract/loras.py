"""The LoRA library: .safetensors LoRAs, read from their headers (names, shapes, metadata), never their tensors.

Where they are: `AVP_LORA_DIR` (default `<data dir>/loras`), then the `loras/` folder of each offered model directory
(the demo model ships one there). A LoRA's name is its file name without `.safetensors`; a name is looked up among
the files found, never joined into a path, and a file whose real path leaves its folder (a symlink out) is
listed as unusable. What the portal says of a LoRA comes from its header: the layers it changes (with their
rank and widths), the family and version its keys and metadata show, the trigger words its metadata holds.

Whether a LoRA fits a model is decided by the model's own transformer weights' headers: every layer the LoRA
changes must be a linear layer there, of the LoRA's widths. Torch-free: the web process lists and checks with it.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

SUFFIX = ".safetensors"
# Files that look like LoRAs but are not safetensors: listed, so people learn why they are not offered.
OTHER_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
FOLDER = "loras"  # inside a model directory: LoRAs that come with the model
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
MAX_LORAS = 4
MIN_SCALE, MAX_SCALE = -2.0, 2.0
DEFAULT_MAX_MB = 4096.0  # AVP_LORA_MAX_MB: a rank-128 LoRA of the 19B model is about 1.3 GB
MAX_HEADER_BYTES = 64 * 2**20
DOWN = (".lora_A.weight", ".lora_down.weight")
UP = (".lora_B.weight", ".lora_up.weight")
# The original LTX-2 trainer's prefix and its names for the transformer's top-level linears (diffusers' converter,
# LTX2LoraLoaderMixin, renames these; block names are the same either side).
ORIGINAL_PREFIX = "diffusion_model."
DIFFUSERS_PREFIX = "transformer."
RENAMES = (
    ("audio_patchify_proj", "audio_proj_in"),
    ("patchify_proj", "proj_in"),
    ("audio_adaln_single.", "audio_time_embed."),
    ("adaln_single.", "time_embed."),
)
TEXT_PREFIXES = ("text_embedding_projection.", "connectors.")
# Layers only one LTX-2 version has: 2.3's gated attention and prompt modulation; 2.0's caption projection.
VERSION_MARKERS = {"2.3": ("to_gate_logits", "prompt_adaln"), "2.0": ("caption_projection",)}
TRIGGER_KEYS = ("trigger_words", "trigger_word", "trigger_phrase", "modelspec.trigger_phrase", "ss_trigger_words")
VERSION_KEYS = ("base_model_version", "ss_base_model_version", "modelspec.architecture", "base_model")


class LoraLayer(msgspec.Struct, frozen=True, array_like=True):
    rank: int
    width_in: int
    width_out: int


class LoraFile(msgspec.Struct, frozen=True):
    """One LoRA as its header describes it; `problem` set when it cannot be used (and why)."""

    name: str
    path: str
    size_bytes: int
    modified_ns: int = 0
    family: str | None = None  # "ltx-2" where its layer names are LTX-2's
    version: str | None = None  # "2.0" or "2.3" where its metadata or its layers say; None: either
    rank: int | None = None  # the largest of its layers'
    trigger_words: tuple[str, ...] = ()
    layers: dict[str, LoraLayer] = {}
    problem: str | None = None


class Library(msgspec.Struct, frozen=True):
    loras: dict[str, LoraFile]  # by name, usable or not

    def get(self, name: str) -> LoraFile | None:
        return self.loras.get(name)


def scan(directories: Sequence[Path], max_bytes: int) -> Library:
    """The LoRAs in `directories`, by name: the first directory's first, later ones' only under names not taken."""
    found: dict[str, LoraFile] = {}
    for directory in directories:
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError:
            continue
        for entry in entries:
            path = Path(entry.path)
            stem, suffix = _split(entry.name)
            if suffix is None or stem in found or entry.name.startswith("."):
                continue
            found[stem] = (
                read(path, directory, max_bytes)
                if suffix == SUFFIX
                else _unusable(
                    stem, path, f"is a {suffix} file, not .safetensors: only safetensors LoRAs are loaded (convert it)"
                )
            )
    return Library(found)


def _split(file_name: str) -> tuple[str, str | None]:
    for suffix in (SUFFIX, *OTHER_SUFFIXES):
        if file_name.lower().endswith(suffix):
            return file_name[: -len(suffix)], suffix
    return file_name, None


_headers: dict[tuple[str, int, int], LoraFile] = {}


def read(path: Path, folder: Path, max_bytes: int) -> LoraFile:
    """A LoRA file as its header says (read once per size and modification time)."""
    stem = path.name[: -len(SUFFIX)]
    if not NAME.fullmatch(stem):
        return _unusable(stem, path, "has a name other than letters, digits, '.', '_', '+' and '-': rename the file")
    try:
        real = path.resolve(strict=True)
        stat = real.stat()
    except OSError as error:
        return _unusable(stem, path, f"cannot be read ({error.strerror})")
    if not real.is_relative_to(folder.resolve()) or not real.is_file():
        return _unusable(stem, path, "is not a regular file inside its LoRA folder")
    if stat.st_size > max_bytes:
        return _unusable(
            stem, path, f"is {stat.st_size / 2**20:.0f} MB, over the {max_bytes / 2**20:.0f} MB limit (AVP_LORA_MAX_MB)"
        )
    key = (str(real), stat.st_size, stat.st_mtime_ns)
    if key not in _headers:
        _headers[key] = _from_header(stem, path, stat.st_size, stat.st_mtime_ns)
    return _headers[key]


def _unusable(name: str, path: Path, problem: str) -> LoraFile:
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    return LoraFile(name=name, path=str(path), size_bytes=size, problem=problem)


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file; ValueError when it is not one."""
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        prefix = file.read(8)
        if len(prefix) < 8:
            raise ValueError("is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if not 2 <= length <= min(size - 8, MAX_HEADER_BYTES):
            raise ValueError("has no safetensors header")
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError("has a safetensors header that is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("has a safetensors header that is not a JSON object")
    return header


def _from_header(name: str, path: Path, size: int, modified_ns: int) -> LoraFile:
    try:
        header = safetensors_header(path)
    except (OSError, ValueError) as error:
        return _unusable(name, path, f"{error}: it is not a safetensors file")
    metadata = header.pop("__metadata__", None) or {}
    metadata = {k: v for k, v in metadata.items() if isinstance(k, str) and isinstance(v, str)}
    shapes = {key: entry.get("shape") for key, entry in header.items() if isinstance(entry, dict)}
    layers, problem = _layers(shapes)
    text_keys = [key for key in shapes if key.startswith(TEXT_PREFIXES)]
    if problem is None and text_keys:
        problem = "changes the text connectors too, which the portal does not load LoRAs into"
    if problem is None and not layers:
        problem = "holds no LoRA layers (no lora_A/lora_B or lora_down/lora_up weights)"
    names = " ".join(layers)
    family = "ltx-2" if "transformer_blocks." in names and ("audio_attn" in names or "audio_ff" in names) else None
    if family is None and _metadata_says(metadata, "ltx"):
        family = "ltx-2"
    return LoraFile(
        name=name,
        path=str(path),
        size_bytes=size,
        modified_ns=modified_ns,
        family=family,
        version=_version(metadata, names),
        rank=max((layer.rank for layer in layers.values()), default=None),
        trigger_words=_trigger_words(metadata),
        layers=layers,
        problem=problem,
    )


def module_name(key: str) -> str:
    """A LoRA key's module as the diffusers transformer names it (the original trainer's names converted)."""
    if key.startswith(DIFFUSERS_PREFIX):
        return key[len(DIFFUSERS_PREFIX) :]
    key = key.removeprefix(ORIGINAL_PREFIX)
    for old, new in RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def _layers(shapes: dict[str, object]) -> tuple[dict[str, LoraLayer], str | None]:
    layers = {}
    for key, down in shapes.items():
        suffix = next((s for s in DOWN if key.endswith(s)), None)
        if suffix is None:
            continue
        stem = key[: -len(suffix)]
        up = next((shapes[stem + u] for u in UP if stem + u in shapes), None)
        if not _matrix(down) or not _matrix(up) or down[0] != up[1]:
            return {}, f"has a malformed LoRA layer {stem!r} (down {down}, up {up})"
        layers[module_name(stem)] = LoraLayer(rank=down[0], width_in=down[1], width_out=up[0])
    return layers, None


def _matrix(shape: object) -> bool:
    return isinstance(shape, list) and len(shape) == 2 and all(isinstance(n, int) and n > 0 for n in shape)


def _metadata_says(metadata: dict[str, str], word: str) -> bool:
    return any(word in metadata.get(key, "").lower() for key in VERSION_KEYS)


def _version(metadata: dict[str, str], names: str) -> str | None:
    for key in VERSION_KEYS:
        value = metadata.get(key, "").lower()
        for version in ("2.3", "2.0"):
            if "ltx" in value and version in value:
                return version
    for version, markers in VERSION_MARKERS.items():
        if any(marker in names for marker in markers):
            return version
    return None


def _trigger_words(metadata: dict[str, str]) -> tuple[str, ...]:
    for key in TRIGGER_KEYS:
        value = metadata.get(key, "").strip()
        if not value:
            continue
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        words = parsed if isinstance(parsed, list) else str(parsed).split(",")
        return tuple(str(word).strip() for word in words if str(word).strip())[:20]
    return ()


# ---- a model's side ----------------------------------------------------------------------

_model_linears: dict[tuple, dict[str, tuple[int, int]]] = {}


def model_linears(model_dir: Path, subfolder: str = "transformer") -> dict[str, tuple[int, int]]:
    """Every 2-D weight of the model's transformer, by module name, as (in, out): from its files' headers."""
    directory = model_dir / subfolder
    files = sorted(directory.glob("*.safetensors"))
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _model_linears:
        linears = {}
        for file in files:
            header = safetensors_header(file)
            for name, entry in header.items():
                shape = entry.get("shape") if isinstance(entry, dict) else None
                if name.endswith(".weight") and _matrix(shape):
                    linears[name[: -len(".weight")]] = (shape[1], shape[0])
        _model_linears[key] = linears
    return _model_linears[key]


def fit_problem(lora: LoraFile, model_dir: Path, model_version: str, model_id: str) -> str | None:
    """Why `lora` cannot be applied to the model in `model_dir`, None when every layer it changes is there."""
    if lora.version is not None and lora.version != model_version:
        return f"LoRA {lora.name!r} is for LTX-{lora.version}, but model {model_id!r} is LTX-{model_version}"
    try:
        linears = model_linears(model_dir)
    except (OSError, ValueError) as error:
        return f"model {model_id!r}'s transformer weights cannot be read ({error})"
    missing = [name for name in lora.layers if name not in linears]
    if missing:
        return (
            f"LoRA {lora.name!r} changes {len(missing)} layer(s) model {model_id!r} does not have "
            f"(e.g. {missing[0]}): it was trained for another model"
        )
    for name, layer in lora.layers.items():
        if linears[name] != (layer.width_in, layer.width_out):
            width_in, width_out = linears[name]
            return (
                f"LoRA {lora.name!r} changes {name} as {layer.width_in}->{layer.width_out} wide, but model "
                f"{model_id!r} has it {width_in}->{width_out}: it was trained for a model of another size"
            )
    return None


def fitting(lora: LoraFile, models: Iterable) -> list[str]:
    """The ids of the `models` (ModelSpecs) `lora` fits."""
    if lora.problem is not None:
        return []
    return [spec.id for spec in models if fit_problem(lora, Path(spec.path), spec.version, spec.id) is None]


def problems(choices: Sequence, spec, library: Library) -> list[tuple[str, str]]:
    """(field, message) for each of a resolved request's LoRA choices (contract.request.LoraChoice) that is not in
    the library, cannot be used, or does not fit the model `spec` (a ModelSpec)."""
    found = []
    for index, choice in enumerate(choices or ()):
        where = f"loras[{index}].name"
        lora = library.get(choice.name)
        if lora is None:
            names = ", ".join(name for name, entry in library.loras.items() if entry.problem is None) or "none"
            found.append((where, f"no LoRA is called {choice.name!r}; the library has: {names} (GET /api/loras)"))
        elif lora.problem is not None:
            found.append((where, f"LoRA {choice.name!r} cannot be used: its file {lora.problem}"))
        elif problem := fit_problem(lora, Path(spec.path), spec.version, spec.id):
            found.append((where, f"{problem}; choose a LoRA made for it (GET /api/loras lists the models each fits)"))
    return found
