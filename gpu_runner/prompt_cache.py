"""An on-disk cache of encoded prompts, so a repeated prompt never loads the text encoder.

What is cached is what the denoiser consumes: the text connectors' outputs for the
[negative, positive] pair (a few MB), not the encoder's 49 stacked hidden states (~385 MB
a prompt at full size). The key covers everything that changes them: the model, both
prompts, the sequence length and the encoder+connector revision. Files are safetensors;
the cache is bounded (AVP_PROMPT_CACHE_MB, inside AVP_CACHE_GB: gpu_runner/cache_budget.py), the least
recently used entries removed first.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from contract.disk import is_disk_full
from gpu_runner import cache_budget
from gpu_runner.cache_budget import CacheBudget

log = logging.getLogger(__name__)

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
    def __init__(self, directory: Path, budget: CacheBudget) -> None:
        self.directory = directory
        self.budget = budget

    @staticmethod
    def key(model_id: str, revision: str, prompt: str, negative_prompt: str, sequence_length: int) -> str:
        fields = [model_id, revision, prompt, negative_prompt, sequence_length]
        return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}{cache_budget.ENTRY_SUFFIX}"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self._path(key)
        try:
            with cache_budget.using(path) as present:  # recorded as used; no sweep takes it while it is read
                return load_file(path) if present else None
        except (OSError, ValueError, SafetensorError):
            return None  # unreadable, or a torn file from a crash: encode again

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        path = self._path(key)
        tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        if self.budget.make_room(path, sum(t.numel() * t.element_size() for t in tensors.values())):
            try:
                with cache_budget.writing(path) as partial:  # atomic: a reader sees the whole file or none
                    save_file(tensors, partial)
            except Exception as error:
                if not is_disk_full(error):
                    raise
                # A cache is optional: the job goes on without the entry (its own files may still fit).
                log.warning("prompt cache: entry not kept, the disk is full (%s)", error)
