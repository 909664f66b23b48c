"""An on-disk cache of encoded prompts, so a repeated prompt never loads the text encoder.

What is cached is what the denoiser consumes: the text connectors' outputs for the
[negative, positive] pair (a few MB), not the encoder's 49 stacked hidden states (~385 MB
a prompt at full size). The key covers everything that changes them: the model, both
prompts, the sequence length and the encoder+connector revision. Files are safetensors;
the cache is bounded in bytes and evicts the least recently used entries.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

REVISION_FILES = ("text_encoder", "tokenizer", "connectors")


def model_revision(model_dir: Path, components: tuple[str, ...] = REVISION_FILES, modified_times: bool = False) -> str:
    """A fingerprint of some components of a model (by default its encoder side): their configs, and
    their weight files' names and sizes, and modification times with `modified_times`."""
    digest = hashlib.sha256()
    for sub in components:
        for path in sorted((model_dir / sub).glob("*")):
            if path.suffix == ".json":
                digest.update(path.name.encode() + path.read_bytes())
            elif path.is_file():
                stat = path.stat()
                digest.update(f"{path.name}:{stat.st_size}".encode())
                if modified_times:
                    digest.update(f":{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class PromptCache:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    @staticmethod
    def key(model_id: str, revision: str, prompt: str, negative_prompt: str, sequence_length: int) -> str:
        fields = [model_id, revision, prompt, negative_prompt, sequence_length]
        return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self._path(key)
        try:
            tensors = load_file(path)
        except (OSError, ValueError, SafetensorError):
            return None  # absent, or a torn file from a crash: encode again
        os.utime(path)  # recently used
        return tensors

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self._path(key).with_suffix(".partial")
        save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, partial)
        partial.replace(self._path(key))  # atomic: a reader sees the whole file or none
        self.evict()

    def evict(self) -> None:
        entries = sorted(self.directory.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
        total = 0
        for path in entries:
            total += path.stat().st_size
            if total > self.max_bytes:
                path.unlink(missing_ok=True)
