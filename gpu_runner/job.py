"""Reading a job directory: job.json, re-validated, and every path confined to where it belongs.

Torch-free, so a bad job is refused before the diffusion stack is imported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import msgspec

from contract import jobdir, library, protocol
from contract import models as specs
from contract.request import Request


class JobError(Exception):
    """A failure the supervisor can explain to the user: an error code and a readable message."""

    def __init__(self, code: protocol.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: protocol.ErrorCode = code
        self.message = message


@dataclass(frozen=True)
class Job:
    directory: Path
    file: jobdir.JobFile
    spec: specs.ModelSpec
    model_dir: Path

    @property
    def request(self) -> Request:
        return self.file.request

    def with_request(self, **changes: object) -> Job:
        """This job with its request's fields changed: what the text phase chose (LTX-2.5's enhanced prompt, the
        length its duration head picked) for the stages after it."""
        request = msgspec.structs.replace(self.file.request, **changes)
        return dataclasses.replace(self, file=msgspec.structs.replace(self.file, request=request))

    def path(self, name: str) -> Path:
        """A file in the job directory, refused if it resolves anywhere else."""
        return confined(self.directory / name, self.directory, what=name)


def load_job(directory: Path) -> Job:
    """Read and re-check job.json; raises JobError(invalid_input) or JobError(model_missing)."""
    directory = directory.resolve()
    job_path = confined(directory / jobdir.JOB_FILE, directory, what=jobdir.JOB_FILE)
    try:
        job_file = msgspec.json.decode(job_path.read_bytes(), type=jobdir.JobFile)
    except FileNotFoundError:
        raise JobError("invalid_input", f"{jobdir.JOB_FILE} is missing from the job directory") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise JobError("invalid_input", f"{jobdir.JOB_FILE} is malformed: {error}") from None

    spec = _spec_for(job_file)
    _check_request(spec, job_file.request)
    if job_file.precision not in (None, *get_args(specs.Precision)):
        raise JobError("invalid_input", f"precision {job_file.precision!r} is not one of {get_args(specs.Precision)}")
    _check_loras(job_file)
    job = Job(directory=directory, file=job_file, spec=spec, model_dir=Path(job_file.model_path).resolve())
    if job_file.image_file is not None:
        image = job.path(job_file.image_file)
        if not image.is_file():
            raise JobError("invalid_input", f"image_file {job_file.image_file!r} is not in the job directory")
    named = [(f"keyframe_files[{i}]", name) for i, name in enumerate(job_file.keyframe_files)]
    named += [("source_video_file", job_file.source_video_file)]
    named += [("source_audio_latents_file", job_file.source_audio_latents_file)]
    for what, name in named:
        if name is not None and not job.path(name).is_file():
            raise JobError("invalid_input", f"{what} {name!r} is not in the job directory")
    if (job_file.source_video_file is None) != (job_file.request.extend_from is None):
        raise JobError("invalid_input", "an extension needs source_video_file, and only an extension has one")
    return job


def confined(path: Path, root: Path, *, what: str) -> Path:
    """`path` resolved, provided it lies inside `root` (symlinks and '..' included)."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise JobError("invalid_input", f"{what} resolves outside its directory")
    return resolved


def check_model_dir(model_dir: Path) -> None:
    """Every component directory present, readable and inside `model_dir`, and the whole recognised as an LTX-2
    model (contract/library.py); else model_missing."""
    model_dir = model_dir.resolve()
    advice = "run `python -m gpu_runner demo-model <dir>` or point AVP_MODEL_DIR at a Diffusers-format LTX-2 directory"
    if not model_dir.is_dir():
        raise JobError("model_missing", f"model directory {model_dir} does not exist; {advice}")
    for component in library.COMPONENTS:
        problem = library.component_problem(model_dir, component)
        if problem:
            raise JobError("model_missing", f"model subfolder {component}/ {problem}; {advice}")
    try:
        library.recognise(model_dir)
    except library.Unrecognised as error:  # changed since the job was submitted
        raise JobError("model_missing", f"model directory {model_dir} is not a usable LTX-2 model: {error}") from None


def _spec_for(job_file: jobdir.JobFile) -> specs.ModelSpec:
    """The model's spec as its directory is now (checked first: it may have changed since the job was submitted)."""
    model_path = Path(job_file.model_path)
    if not model_path.is_absolute():
        raise JobError("invalid_input", "model_path must be absolute")
    if job_file.model_kind not in specs.MODEL_KINDS:
        kinds = sorted(specs.MODEL_KINDS)
        raise JobError("invalid_input", f"model_kind {job_file.model_kind!r} is not one of {kinds}")
    check_model_dir(model_path)
    return specs.directory_spec(job_file.model_kind, model_path)


def _check_loras(job_file: jobdir.JobFile) -> None:
    """The job's LoRA files: the request's, in order, each a .safetensors file of its name inside one of the LoRA
    folders (never anywhere else, symlinks resolved), still there."""
    asked = [(choice.name, choice.scale) for choice in job_file.request.loras or ()]
    if asked != [(lora.name, lora.scale) for lora in job_file.loras]:
        raise JobError("invalid_input", "loras: job.json's LoRA files are not the request's LoRAs")
    folders = [Path(folder).resolve() for folder in job_file.lora_dirs]
    for lora in job_file.loras:
        path = Path(lora.path)
        if not path.is_absolute() or path.name != f"{lora.name}.safetensors":
            message = f"LoRA {lora.name!r}: its path is not <LoRA folder>/{lora.name}.safetensors"
            raise JobError("invalid_input", message)
        resolved = path.resolve()
        if not any(resolved.is_relative_to(folder) for folder in folders):
            raise JobError("invalid_input", f"LoRA {lora.name!r} resolves outside the LoRA folders")
        if not resolved.is_file():
            raise JobError(
                "model_missing", f"LoRA {lora.name!r} is gone from {path.parent} since the job was submitted"
            )


def _check_request(spec: specs.ModelSpec, request: Request) -> None:
    problems = spec.violations(request)
    if problems:
        raise JobError("invalid_input", "; ".join(f"{field}: {message}" for field, message in problems))
