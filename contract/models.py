"""Model specs and the registry of model kinds: what each model accepts and what it does by default.

Plain data plus the checks that follow from it, so the web process (validating a request) and
the runner (re-checking job.json) apply the same rules. Torch-free.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import msgspec

from contract import library
from contract.request import AUTO, FAST_FIXED, Constraints, Request, merge, violations

Precision = Literal["fp8", "bf16", "fp32"]
ModelKind = Literal["demo", "ltx-2", "ltx-2.3", "ltx-2.5"]
Mode = Literal["fast", "quality"]  # request.MODES: what the runner can do with a model


class ModelSpec(msgspec.Struct, frozen=True):
    id: str
    label: str
    kind: ModelKind
    path: str  # absolute directory of the Diffusers-format weights
    constraints: Constraints
    defaults: Request  # a partial request: what a submitted request leaves out
    presets: tuple[tuple[int, int], ...]  # (width, height) offered by the UI
    fps_choices: tuple[float, ...]
    precision_cuda: Precision
    note: str = ""
    version: library.Version = "2.0"
    variant: library.Variant = "dev"
    modes: tuple[Mode, ...] = ("quality",)  # the default first
    parts: tuple[str, ...] = ()  # optional parts present: "latent_upsampler", "distilled_lora", ...
    fast_missing: str | None = "a distilled transformer and a latent upsampler"  # why fast is not in `modes`
    quality_missing: str | None = None  # why quality is not in `modes` (an LTX-2.5 without its dev transformer)
    source: str = ""  # where an imported model came from (library.import_source); "" when not imported

    @property
    def disabled_modes(self) -> dict[str, str]:
        """Each mode the model cannot run, with what it lacks for it."""
        missing = {"fast": self.fast_missing, "quality": self.quality_missing}
        return {mode: why for mode, why in missing.items() if why and mode not in self.modes}

    def resolve(self, request: Request, seed: int | None = None) -> Request:
        """`request` with this model's defaults filled in and a seed chosen (`seed`, else a random one).
        The mode comes first: fast mode fixes the steps and the guidance, so those defaults stay out."""
        resolved = merge(msgspec.structs.replace(request, model=self.id), self.mode_defaults(request.mode))
        if resolved.seed is None:
            chosen = secrets.randbelow(self.constraints.max_seed + 1) if seed is None else seed
            resolved = msgspec.structs.replace(resolved, seed=chosen)
        return resolved

    def mode_defaults(self, mode: str | None = None) -> Request:
        """The defaults of `mode` (None: the model's first), the mode among them: fast mode fixes the steps and
        the guidance, so those stay out."""
        mode = mode or self.modes[0]
        fixed = dict.fromkeys(FAST_FIXED) if mode == "fast" else {}
        return msgspec.structs.replace(self.defaults, mode=mode, **fixed)

    def violations(self, request: Request, offered: Iterable[ModelSpec] = ()) -> list[tuple[str, str]]:
        """Every rule a resolved request breaks, a field the model needs left unset included (a part the model
        lacks names the `offered` models that have it)."""
        fixed = FAST_FIXED if request.mode == "fast" else ()
        unset = [
            (name, "is missing")
            for name in Request.__struct_fields__
            if getattr(request, name) is None
            and (getattr(self.defaults, name) is not None or name == "seed")
            and name not in fixed
        ]
        parts = self._part_violations(request, offered)
        return unset + self._mode_violations(request) + parts + violations(self.constraints, request)

    def _part_violations(self, request: Request, offered: Iterable[ModelSpec]) -> list[tuple[str, str]]:
        """The fields that need an optional part the model lacks (PART_NEEDED), naming the models that can."""
        asked = {"num_frames": request.num_frames == AUTO, "enhance_prompt": bool(request.enhance_prompt)}
        problems = []
        for field, (part, what, fix) in PART_NEEDED.items():
            if asked[field] and part not in self.parts:
                able = [spec.id for spec in offered if part in spec.parts]
                who = f"models that can: {', '.join(able)}" if able else "no model offered here has one"
                problems.append((field, f"{what} needs {part}/, which model {self.id!r} lacks ({who}); {fix}"))
        return problems

    def _mode_violations(self, request: Request) -> list[tuple[str, str]]:
        if request.mode is None or request.mode in self.modes:
            return []
        if request.mode == "fast" and self.fast_missing:
            return [("mode", f"fast mode needs {self.fast_missing}, which model {self.id!r} lacks; choose quality")]
        if request.mode == "quality" and self.quality_missing:
            return [("mode", f"quality mode needs {self.quality_missing}, which model {self.id!r} lacks; choose fast")]
        return [("mode", f"model {self.id!r} offers " + " or ".join(self.modes))]


# Request fields that need an optional part of the model (contract/library.py's text parts, LTX-2.5's): the part,
# what asks for it, and what to do instead.
PART_NEEDED: dict[str, tuple[str, str, str]] = {
    "num_frames": (library.DURATION_HEAD, f'"{AUTO}" (the model picks the length)', "choose a number of frames"),
    "enhance_prompt": (library.PROMPT_ENHANCER, "the prompt enhancer", "leave enhance_prompt out"),
}


DEMO_NOTE = (
    "The demo model is a tiny LTX-2 trained on a synthetic world, so it runs in seconds on a CPU: "
    "one red, green, blue, yellow or white ball or square on a dark background, moving left, right, "
    'up or down, or bouncing, with a high beep, a low hum, silence or clicks. Try "a red ball '
    'bouncing with clicks". To generate real clips, point the portal at a Diffusers-format LTX-2 '
    "directory: AVP_MODEL_DIR=/path/to/LTX-2 make run"
)


def demo_spec(path: Path) -> ModelSpec:
    return ModelSpec(
        id="demo",
        label="Demo (tiny, trained on a synthetic world)",
        kind="demo",
        path=str(path),
        constraints=Constraints(),
        defaults=Request(
            negative_prompt="",
            width=320,
            height=192,
            num_frames=25,
            fps=24.0,
            steps=8,
            guidance_scale=3.0,
            image_strength=1.0,
        ),
        presets=((320, 192), (192, 320), (256, 256), (384, 256), (512, 320)),  # multiples of 64: fast mode's
        fps_choices=(24.0, 25.0, 30.0),
        precision_cuda="bf16",
        note=DEMO_NOTE,
    )


def ltx2_spec(path: Path, version: library.Version = "2.0") -> ModelSpec:
    """An LTX-2 model directory of `version`, as a dev model (`library_spec` applies what the directory has)."""
    return ModelSpec(
        id=model_id(path.name) or KIND_OF_VERSION[version],
        label=f"LTX-{version} ({path.name})",
        kind=KIND_OF_VERSION[version],
        path=str(path),
        constraints=Constraints(),
        defaults=Request(
            width=768,
            height=512,
            num_frames=121,
            fps=24.0,
            steps=30,
            guidance_scale=4.0,
            negative_prompt="worst quality, inconsistent motion, blurry, jittery, distorted",
            image_strength=1.0,
        ),
        presets=((768, 512), (512, 768), (768, 448), (1024, 576), (1280, 704), (704, 1280), (512, 512)),
        fps_choices=(24.0, 25.0, 30.0, 48.0, 50.0),
        precision_cuda="fp8",
        version=version,
    )


def ltx23_spec(path: Path) -> ModelSpec:
    return ltx2_spec(path, "2.3")


def ltx25_spec(path: Path) -> ModelSpec:
    return ltx2_spec(path, "2.5")


KIND_OF_VERSION: dict[library.Version, ModelKind] = {"2.0": "ltx-2", "2.3": "ltx-2.3", "2.5": "ltx-2.5"}
# The registry of model kinds: a kind names how to build the spec of a model directory.
MODEL_KINDS: dict[str, Callable[[Path], ModelSpec]] = {
    "demo": demo_spec,
    "ltx-2": ltx2_spec,
    "ltx-2.3": ltx23_spec,
    "ltx-2.5": ltx25_spec,
}
# A distilled model is trained to denoise in a few steps without guidance.
DISTILLED_DEFAULTS = Request(steps=8, guidance_scale=1.0)


def library_spec(path: Path, recognised: library.Recognised) -> ModelSpec:
    """The spec of a recognised model directory: its version's, with its variant's defaults and its parts (quality
    mode on a distilled transformer takes a distilled model's defaults; LTX-2.5's quality runs its dev one)."""
    spec = MODEL_KINDS[KIND_OF_VERSION[recognised.version]](path)
    defaults = merge(DISTILLED_DEFAULTS, spec.defaults) if recognised.quality_distilled else spec.defaults
    constraints = spec.constraints
    if recognised.diffusion_decoder:  # fast mode decodes with it
        side, frames = library.decoder_minimum(path)
        constraints = msgspec.structs.replace(constraints, fast_min_side=side, fast_min_frames=frames)
    return msgspec.structs.replace(
        with_parts(spec, recognised),
        label=f"LTX-{recognised.version} {recognised.variant} ({path.name})",
        defaults=defaults,
        constraints=constraints,
        note="; ".join(recognised.notes),
        source=library.import_source(path),
    )


def with_parts(spec: ModelSpec, recognised: library.Recognised) -> ModelSpec:
    """`spec` with what its directory holds: variant, optional parts, and the modes they allow (fast first).
    Raises library.Unrecognised when it allows none."""
    fast_missing, quality_missing = recognised.fast_missing(), recognised.quality_missing()
    modes = tuple(mode for mode, missing in (("fast", fast_missing), ("quality", quality_missing)) if not missing)
    if not modes:
        raise library.Unrecognised(
            f"no mode can run: fast mode needs {fast_missing}; quality mode needs {quality_missing}"
        )
    return msgspec.structs.replace(
        spec,
        variant=recognised.variant,
        parts=recognised.parts,
        modes=modes,
        fast_missing=fast_missing,
        quality_missing=quality_missing,
    )


def directory_spec(kind: str, path: Path) -> ModelSpec:
    """The spec of the model directory a job names: its kind's, with what the directory holds (as the web
    process offered it). Raises library.Unrecognised when the directory is not a usable model."""
    recognised = library.recognise(path)
    if kind == "demo":
        return with_parts(demo_spec(path), recognised)
    return library_spec(path, recognised)


_NOT_IN_ID = re.compile(r"[^a-z0-9._-]+")
MAX_ID_CHARS = 64


def model_id(directory_name: str) -> str | None:
    """A model's id from its directory's name: lower case, runs of anything but letters, digits, '.', '_'
    and '-' made one '-', trimmed; None when nothing usable is left. Stable while the directory keeps its name."""
    slug = _NOT_IN_ID.sub("-", directory_name.lower()).strip("-._")[:MAX_ID_CHARS].rstrip("-._")
    return slug or None


class Unusable(msgspec.Struct, frozen=True):
    """A model directory the portal found but cannot offer, and why (the fix is in the reason)."""

    id: str | None  # None when its name gives no id
    directory: str  # the directory's name
    problem: str
    source: str = ""  # where an imported model came from (library.import_source); "" when not imported


class Offer(msgspec.Struct, frozen=True):
    models: dict[str, ModelSpec]  # by id, the default first
    unusable: tuple[Unusable, ...]


# AVP_MODEL_DIR's model keeps the id it had before the library: jobs and scripts name it so.
MODEL_DIR_ID = "ltx-2"


def offered_models(demo_dir: Path, models_dir: Path | None, model_dir: Path | None) -> Offer:
    """The models this installation offers: AVP_MODEL_DIR's first (the default, id `ltx-2`), then every model directory
    in AVP_MODELS_DIR by id, then the demo; and the directories found there that cannot be offered, with why.

    Hidden entries and the demo's own directory are skipped, but for an import's temporary directory, listed as
    unusable (being written, or left by an import that was stopped); a directory listed twice is offered once."""
    found = [model_dir] if model_dir is not None else []
    unusable: list[Unusable] = []
    if models_dir is not None and models_dir.is_dir():
        demo = demo_dir.resolve()
        found += sorted(
            (entry for entry in models_dir.iterdir() if not entry.name.startswith(".") and entry.is_dir()),
            key=lambda entry: entry.name,
        )
        found = [entry for entry in found if entry.resolve() != demo]
        unusable += [
            Unusable(id=None, directory=entry.name, problem=problem)
            for entry in sorted(models_dir.iterdir(), key=lambda entry: entry.name)
            if (problem := library.unfinished_import(entry.name)) is not None and entry.is_dir()
        ]
    models: dict[str, ModelSpec] = {}
    seen: dict[Path, str] = {}
    for directory in found:
        resolved = directory.resolve()
        if resolved in seen:
            continue
        seen[resolved] = directory.name
        identity = MODEL_DIR_ID if directory is model_dir else model_id(directory.name)
        problem = _id_problem(identity, models)
        if problem is None:
            try:
                # the path as found, not resolved: a symlink's own name gives the id, in the runner too
                spec = library_spec(directory.absolute(), library.recognise(resolved))
                models[identity] = msgspec.structs.replace(spec, id=identity)
                continue
            except library.Unrecognised as error:
                problem = str(error)
        unusable.append(
            Unusable(id=identity, directory=directory.name, problem=problem, source=library.import_source(resolved))
        )
    demo_model = demo_spec(demo_dir)
    # Not installed yet: offered as it ships, its jobs fail naming the command that installs it.
    with contextlib.suppress(library.Unrecognised):
        demo_model = with_parts(demo_model, library.recognise(demo_dir))
    models.setdefault(demo_model.id, demo_model)
    return Offer(models=models, unusable=tuple(unusable))


def _id_problem(identity: str | None, models: dict[str, ModelSpec]) -> str | None:
    if identity is None:
        return "its name gives no model id: rename the directory to letters, digits, '.', '_' or '-'"
    if identity == "demo" or identity in models:
        return f"its model id {identity!r} is taken by another model: rename the directory"
    return None


# Written last by `python -m gpu_runner demo-model <dir>`: its presence means the build completed.
DEMO_MANIFEST = "demo_manifest.json"
