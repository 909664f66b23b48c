"""An on-disk cache of encoded prompts, so a repeated prompt never loads the text encoder.

What is cached is what the denoiser consumes: the text connectors' outputs for the
[negative, positive] pair (a few MB), not the encoder's 49 stacked hidden states (~385 MB
a prompt at full size). The key covers everything that changes them: the model, both
prompts, the sequence length and the encoder+connector revision. Files are safetensors;
LTX-2.5's prompt enhancer's rewrites live here too (`enhanced_key`, `get_text`, `put_text`: the rewrite's UTF-8 bytes,
keyed by the model, its enhancer's files, the prompt, the seed and the token bound), so a repeat never loads the
enhancer either. The cache is bounded (AVP_PROMPT_CACHE_MB, inside AVP_CACHE_GB: gpu_runner/cache_budget.py), the least
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
TEXT = "utf8"  # a text entry's one tensor: its UTF-8 bytes


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

    @staticmethod
    def enhanced_key(model_id: str, revision: str, prompt: str, seed: int, max_new_tokens: int) -> str:
        """The key of `prompt` as a model's prompt enhancer (its files: `revision`) rewrites it for this seed, writing
        at most `max_new_tokens` (AVP_ENHANCE_MAX_TOKENS cuts a rewrite short)."""
        fields = ["enhanced_prompt", model_id, revision, prompt, seed, max_new_tokens]
        return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()

    def get_text(self, key: str) -> str | None:
        """A text entry (`put_text`); None when there is none (or it is not one)."""
        tensors = self.get(key)
        if tensors is None or TEXT not in tensors:
            return None
        return tensors[TEXT].numpy().tobytes().decode("utf-8", errors="replace")

    def put_text(self, key: str, text: str) -> None:
        self.put(key, {TEXT: torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)})

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
