"""Provenance: what made a clip. The model (id, version, a revision hash of its files), each LoRA (name, scale,
the SHA-256 of its file) and the portal's version, recorded with the job (its job.json and the API's `provenance`)
and in the MP4's metadata; `changes` says what differs now, for "use these settings again". Torch-free.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path

import msgspec

from contract import library

# The MP4 metadata key the runner writes this struct under, as JSON (mux.py).
MP4_KEY = "comment"


def portal_version() -> str:
    try:
        return importlib.metadata.version("avportal")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class ModelUsed(msgspec.Struct, frozen=True):
    id: str
    kind: str
    version: str  # LTX-2.0 or 2.3
    variant: str  # dev or distilled
    revision: str  # `model_revision`: its files as they were


class LoraUsed(msgspec.Struct, frozen=True):
    name: str
    scale: float
    sha256: str
    size_bytes: int


class Provenance(msgspec.Struct, frozen=True):
    portal_version: str
    model: ModelUsed
    loras: tuple[LoraUsed, ...] = ()


# LTX-2.5's parts, absent elsewhere (so other versions' revisions are unchanged by them); a dev transformer under
# another name than its usual transformer_full/ is left out of the hash.
LTX2_5_PARTS = (library.FULL_TRANSFORMER, library.DIFFUSION_DECODER, library.DURATION_HEAD, library.PROMPT_ENHANCER)


def model_revision(model_dir: Path) -> str:
    """A hash of the model's files: every component's configs (their bytes) and weight files (name, size and
    modification time; hashing tens of GB at each submit would take minutes), optional parts included."""
    digest = hashlib.sha256()
    parts = (*library.COMPONENTS, library.UPSAMPLER, library.DISTILLED_TRANSFORMER, *LTX2_5_PARTS)
    for part in parts:
        folder = model_dir / part
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix == ".json":
                digest.update(f"{part}/{path.name}".encode() + path.read_bytes())
            elif path.is_file():
                stat = path.stat()
                digest.update(f"{part}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    for path in sorted(model_dir.glob("*.safetensors")):  # a dev model's distilled LoRA
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


_hashes: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, computed once per size and modification time."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(2**20):
                digest.update(chunk)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def changes(then: Provenance, now: Provenance) -> list[str]:
    """What differs between a job's provenance and the same settings now, in words (empty: nothing)."""
    found = []
    if then.model.revision != now.model.revision or then.model.version != now.model.version:
        found.append(
            f"model {then.model.id!r}'s files changed since (revision {then.model.revision} -> {now.model.revision})"
        )
    now_loras = {lora.name: lora for lora in now.loras}
    for lora in then.loras:
        current = now_loras.get(lora.name)
        if current is None:
            found.append(f"LoRA {lora.name!r} is no longer in the library")
        elif current.sha256 != lora.sha256:
            was, now_hash = lora.sha256[:12], current.sha256[:12]
            found.append(f"LoRA {lora.name!r}'s file changed since (sha256 {was} -> {now_hash})")
    if then.portal_version != now.portal_version:
        found.append(f"the portal was {then.portal_version}, now {now.portal_version}")
    return found


def to_json(provenance: Provenance) -> str:
    return json.dumps(msgspec.to_builtins(provenance), sort_keys=True)
