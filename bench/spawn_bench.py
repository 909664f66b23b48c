"""Spawn to first denoising step: what a job pays before it denoises, with and without the FP8 weight cache;
and a fast job handed to a spare runner, from the hand-over to its MP4.

RANDOM WEIGHTS. Writes a model to disk as a Diffusers directory: the denoising components of full-size
LTX-2.0 (bench/gpu_smoke.py's builders; `--tiny`: the demo model's sizes) in bf16 and fast mode's x2 latent
upsampler, beside the demo's tiny text encoder, connectors and tokenizer (their prompt length set to the
size's), which no measured job loads: the bench puts its prompt's context in the prompt cache first (random
tensors of the right shape, under the key the runner computes). Its scheduler is a distilled model's, so the
model library offers fast mode (the distilled two-stage path) on its transformer; the quality jobs say their
mode and a dev model's guidance and steps outright, as they ran before the model was fast-capable. Then it runs
the real runner as the portal does, through `app.runner.Supervisor` (the same command, environment, process
group and protocol parsing), and times from spawn to its first protocol line, its load_transformer stage and
its first denoising step, after which the job is cancelled (but in (h) and (i)):

- (a) the model's first FP8 job: the bf16 transformer read, cast on the CPU, and written to the cache;
- (b) an FP8 job loading the cache, its file in the page cache;
- (c) the same after the page cache is dropped (`echo 3 > /proc/sys/vm/drop_caches` where permitted,
  else only the files' pages are evicted, with posix_fadvise);
- (d) for reference, what every FP8 job paid before the cache: no weight cache, page cache dropped;
- (e) as (b), but the job is handed to a spare runner (`python -m gpu_runner standby`, AVP_SPARE_RUNNER):
  the Supervisor spawns it, the bench waits for its log line saying torch and diffusers are imported,
  then hands it the job; there "spawn → ..." counts from the hand-over (`Supervisor.run`), the spare's
  own spawn and imports having happened before, as they do in the portal between jobs;
- (f) and (g) as (e) with compiled transformer blocks, as every CUDA job runs by default (AVP_COMPILE):
  the first step compiles, with torch's kernel cache empty (f) and then holding (f)'s kernels (g);
- (h) and (i) a FAST job (stage 1 at half size, x2 latent upsample, stage 2, decode, mux; 481 frames at
  768x448 unless --fast-frames and --fast-size say otherwise) handed to a spare runner, the FP8 weight
  cache warm, compiled blocks, run to its MP4: torch's compile cache empty for its shapes (h), then holding
  them (i). Issue 15's spawn-to-MP4 time: hand-over → first step, hand-over → result, and the job's own
  per-stage timings (its result line);
- (j) as (g) with the blocks compiled with dynamic shapes (AVP_COMPILE=dynamic), for a clip size never seen
  (73 frames: under 4,096 tokens, as 49 frames, so the blocks are built alike), torch's compile cache holding
  the dynamic graph of another size: a job at the quality runs' 49 frames runs first, cancelled after its first
  step, then the timed job (issue 20: a compiled job's first
  step within 15 s of the hand-over for a size never seen);
- (k) the same with a graph per size (AVP_COMPILE=on, the default): a size never seen, the cache holding only
  another size's kernels.
Only CUDA compiles: on a CPU (`--tiny`) (f) to (k) run uncompiled, and the table says so.

    python bench/spawn_bench.py --out bench/results/<date>-<card>-spawn.md
    python bench/spawn_bench.py --runs h i j k --out ...  # (a) runs too: it writes the weight cache
    python bench/spawn_bench.py --tiny      # the demo model's sizes on the CPU: a smoke of this script
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio  # the portal's own dependency; transformers brings it wherever the runner's stack is installed
import diffusers
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_smoke import (  # noqa: E402
    FULL_SIZE,
    TINY_SIZE,
    ModelSize,
    RandomWeights,
    device_name,
    first_step_seconds,
    random_module,
    random_transformer,
)

from app.runner import Supervisor  # noqa: E402
from contract import jobdir, protocol  # noqa: E402
from contract.cost import FP8_RESIDENT_RATIO  # noqa: E402
from contract.library import UPSAMPLER  # noqa: E402
from contract.models import MODEL_KINDS, directory_spec  # noqa: E402
from contract.request import Request, violations  # noqa: E402
from gpu_runner import memory, stdout  # noqa: E402
from gpu_runner.demo import model as demo_model  # noqa: E402
from gpu_runner.families import family_for  # noqa: E402
from gpu_runner.job import load_job  # noqa: E402
from gpu_runner.pipeline import COMPILE_NOTE, cache_budget_for, prompt_cache_for  # noqa: E402

PROMPT = "a red ball bouncing on a wooden floor, with clicks"
SHARED_MEMORY = Path("/dev/shm")  # tmpfs: where the model goes when the disk cannot hold it beside its cache
SPARE_GIB = 2.0
CACHE_LOG = {"weight cache: loaded": "FP8 cache", "weight cache: wrote": "bf16 read and cast, cache written"}
# The runner's start-up log lines (gpu_runner/__main__.py, pipeline.py): their stamps and seconds.
# "runner started", or a spare's "runner started: spare runner <pid> took this job ..." once it takes one
STARTED = re.compile(r"^(\S+ \S+) gpu_runner runner started\b", re.MULTILINE)
IMPORTED = re.compile(r"torch and diffusers imported in ([\d.]+) s")  # a spare says it in its own log
SPARE_READY_TIMEOUT_S = 600
CUDA_STARTED = re.compile(r"CUDA started in ([\d.]+) s")
# (h) and (i): issue 15's long fast clip (its 20 s target is for 481 frames at 768x448)
FAST_FRAMES = 481
FAST_SIZE = (768, 448)


@dataclass(frozen=True)
class Clip:
    mode: str  # "quality" (cancelled after its first step) or "fast" (run to its MP4)
    width: int
    height: int
    frames: int

    def __str__(self) -> str:
        return f"{self.mode} {self.frames}f {self.width}x{self.height}"


@dataclass(frozen=True)
class Setting:
    size: ModelSize
    model_kind: str  # a ModelSpec.kind: the demo's guidance has no STG block to find in a tiny model
    quality: Clip  # (a) to (g), and the size (j) and (k) see first
    unseen: Clip  # (j) and (k): the size their compile cache has never seen
    fast: Clip  # (h) and (i)
    drop_system_cache: bool  # drop the whole page cache (root only); else evict only the bench's files


@dataclass(frozen=True)
class Run:
    name: str
    weight_cache: bool
    page_cache: str  # "warm" or "drop"
    spare: bool = False  # handed to a spare runner that has imported torch and diffusers already
    compiled: bool = False  # the job compiles its transformer blocks (compile_cache_dir set), as CUDA jobs do
    compile_dynamic: bool = False  # with dynamic shapes (AVP_COMPILE=dynamic), in a compile cache of their own
    fast: bool = False  # a fast job run to its MP4; else a quality job cancelled after its first step
    unseen_size: bool = False  # a job at the quality size first (untimed), then the timed one at a size never seen

    @property
    def letter(self) -> str:
        return self.name[1]

    @property
    def compile_cache(self) -> str:
        """The compile cache's directory name under the bench's caches: the dynamic graphs kept apart."""
        return "compiled-dynamic" if self.compile_dynamic else "compiled"


# (h) to (k): each handed to a spare, the weight cache's entry read from a warm page cache, compiled blocks
HANDED_OVER = {"weight_cache": True, "page_cache": "warm", "spare": True, "compiled": True}
RUNS = (
    Run("(a) first FP8 job: bf16 read + cast + cache write", weight_cache=True, page_cache="warm"),
    Run("(b) cached FP8 load, warm page cache", weight_cache=True, page_cache="warm"),
    Run("(c) cached FP8 load, page cache dropped", weight_cache=True, page_cache="drop"),
    Run("(d) reference: no weight cache (every FP8 job before it)", weight_cache=False, page_cache="drop"),
    Run("(e) cached FP8 load, warm page cache, handed to a spare runner", True, "warm", spare=True),
    Run("(f) as (e), compiled blocks, torch's compile cache empty", True, "warm", spare=True, compiled=True),
    Run("(g) as (e), compiled blocks, torch's compile cache warm (the portal's usual job)", True, "warm", True, True),
    Run("(h) FAST job to its MP4, as (f): compile cache empty for its shapes", fast=True, **HANDED_OVER),
    Run("(i) FAST job to its MP4, as (h), torch's compile cache warm", fast=True, **HANDED_OVER),
    Run(
        "(j) as (g), dynamic shapes (AVP_COMPILE=dynamic): a size never seen, the cache holding another size's graph",
        compile_dynamic=True,
        unseen_size=True,
        **HANDED_OVER,
    ),
    Run(
        "(k) as (j), a graph per size (the default): a size never seen, the cache holding another size's kernels",
        unseen_size=True,
        **HANDED_OVER,
    ),
)
COLUMNS = (
    "run",
    "job",
    "blocks",
    "transformer from",
    "page cache",
    "spawn → runner started, s",
    "its torch + diffusers imports, s",
    "CUDA start, s",
    "spawn → first protocol line, s",
    "load_transformer, s",
    "load_transformer peak VRAM, GiB",
    "first step itself, s",
    "spawn → first denoise step, s",
)
FAST_COLUMNS = ("run", "job", "blocks", "hand-over → first step, s", "hand-over → result (MP4), s")


@dataclass
class Row:
    run: Run
    source: str
    page_cache: str
    started_s: float | None  # the runner's own log lines, against the spawn's wall clock
    imports_s: float | None
    cuda_s: float | None
    first_line_s: float
    load_transformer_s: float
    load_peak_gib: float | None
    first_step_s: float
    spawn_to_step_s: float
    cache_log: list[str]
    clip: Clip
    blocks: str  # compiled or not, as the runner's denoise stage said
    spare_imports_s: float | None = None  # a spare's torch + diffusers imports, before the hand-over
    result_s: float | None = None  # spawn (hand-over) to the result line: a job run to its MP4
    timings: dict[str, float] | None = None  # the result line's seconds per stage
    peak_vram_gib: float | None = None  # the result line's
    stage_first_step_s: dict[str, float] | None = None  # per denoising stage: its start to its first step
    first_size: Row | None = None  # (j), (k): the job at another size that ran first in the same compile cache


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the model, the job and the caches ------------------------------------------------------------------


def write_random_model(directory: Path, size: ModelSize) -> None:
    """A Diffusers-format LTX-2 directory: `size`'s denoising components and latent upsampler with random weights,
    in bf16 as LTX-2 ships, and the demo's tiny text side (never loaded here) with a tokenizer of `size`'s length.
    A distilled model's scheduler: with the upsampler, what the model library wants for fast mode (contract/library.py:
    a distilled transformer/, recognised by its scheduler's config)."""
    from diffusers import LTX2Pipeline

    tokenizer = demo_model.build_tokenizer()
    tokenizer.model_max_length = size.sequence_length
    dtype = torch.bfloat16
    LTX2Pipeline(
        transformer=random_transformer(size, "cpu", dtype, fp8_storage=False),
        vae=random_module(size.vae, "cpu", dtype),
        audio_vae=random_module(size.audio_vae, "cpu", dtype),
        vocoder=random_module(size.vocoder, "cpu", dtype),
        text_encoder=demo_model.text_encoder(len(tokenizer)).to(dtype).eval(),
        connectors=demo_model.connectors().to(dtype).eval(),
        tokenizer=tokenizer,
        scheduler=demo_model.ltx2_scheduler("distilled"),
    ).save_pretrained(directory)
    random_module(size.latent_upsampler, "cpu", dtype).save_pretrained(directory / UPSAMPLER)


def asked(setting: Setting, clip: Clip, model_dir: Path) -> Request:
    """The job's request, its mode said outright (the model offers fast mode first). A quality job is told a dev
    model's guidance (the kind's default) and 2 steps (cancelled after the first, a step interval is all it needs),
    not the distilled defaults this model's scheduler would give it: the jobs the bench timed before it was
    fast-capable. Fast mode fixes its own steps and guidance."""
    size = {"mode": clip.mode, "width": clip.width, "height": clip.height, "num_frames": clip.frames}
    if clip.mode == "fast":
        return Request(prompt=PROMPT, **size)
    dev = MODEL_KINDS[setting.model_kind](model_dir).defaults
    return Request(prompt=PROMPT, **size, steps=2, guidance_scale=dev.guidance_scale)


def write_job(job_dir: Path, model_dir: Path, setting: Setting, clip: Clip, caches: Path, run: Run) -> None:
    """job.json as the web process writes it (app/jobs.py): the model's defaults, FP8, the run's cache directories."""
    spec = directory_spec(setting.model_kind, model_dir)  # as the runner sees the directory: fast mode offered
    request = spec.resolve(asked(setting, clip, model_dir), seed=1)
    assert not spec.violations(request), spec.violations(request)
    options = jobdir.RunnerOptions(
        precision="fp8",
        prompt_cache_dir=str(caches / "prompts"),
        weight_cache_dir=str(caches / "weights") if run.weight_cache else None,
        compile_cache_dir=str(caches / run.compile_cache) if run.compiled else None,
        compile_dynamic=run.compile_dynamic,
    )
    job_dir.mkdir(parents=True)
    jobdir.write_job_file(job_dir, jobdir.job_file(job_dir.name, request, spec, options))


def seed_prompt(job_dir: Path) -> None:
    """Put the job's prompt context in its prompt cache under the runner's own key: no job loads the encoder."""
    job = load_job(job_dir)
    family = family_for(job, None)
    cache, key = prompt_cache_for(job, family, cache_budget_for(job))
    config = json.loads((job.model_dir / "transformer" / "config.json").read_text())
    shape = (2, family.sequence_length(), config["caption_channels"])  # [negative, positive]
    dtype = memory.compute_dtype(memory.pick_device(), "fp8")
    generator = torch.Generator().manual_seed(0)
    cache.put(
        key,
        {
            "video": torch.randn(shape, generator=generator).to(dtype),
            "audio": torch.randn(shape, generator=generator).to(dtype),
            "mask": torch.ones(shape[:2], dtype=torch.int64),
        },
    )


def files_under(*directories: Path) -> list[Path]:
    return [path for directory in directories for path in sorted(directory.rglob("*")) if path.is_file()]


# --- the page cache --------------------------------------------------------------------------------------


def warm(files: list[Path]) -> str:
    """Read the files through, so their pages are in the page cache."""
    buffer = bytearray(64 * 2**20)
    for path in files:
        with path.open("rb", buffering=0) as file:
            while file.readinto(buffer):
                pass
    return "warm (files read through first)"


def drop(files: list[Path], system: bool) -> str:
    """Write back dirty pages, then drop the whole page cache (root) or evict these files' pages."""
    os.sync()
    refused = ""
    if system:
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            return "dropped (echo 3 > /proc/sys/vm/drop_caches)"
        except OSError as error:
            refused = f"; dropping the whole page cache was refused: {error.strerror}"
    for path in files:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)
    return f"these files' pages evicted (posix_fadvise DONTNEED){refused}"


# --- one job, spawned as the portal spawns it ------------------------------------------------------------


class Transcript:
    """Stands where the portal's worker does: it gets every event the supervisor parses for the job, and stamps it."""

    def __init__(self, job_id: str, to_the_end: bool) -> None:
        self.job_id = job_id
        self.to_the_end = to_the_end  # else the job is cancelled at its first step
        self.events: list[tuple[float, protocol.Event]] = []
        self.supervisor: Supervisor | None = None

    async def on_event(self, event: protocol.Event) -> None:
        self.events.append((time.monotonic(), event))
        if isinstance(event, protocol.Step) and not self.to_the_end and self.supervisor is not None:
            self.supervisor.cancel(self.job_id)  # the first step is all that is timed


class JobFailed(RuntimeError):
    """A timed job that ended without what it was timed to: the table says so, and the bench goes on to the next run
    (a device call's minutes are not lost to one run's failure)."""

    def __init__(self, what: str, runner_log: str) -> None:
        super().__init__(what)
        self.runner_log = runner_log


def spawn_and_time(job_dir: Path, run: Run, clip: Clip, page_cache: str) -> Row:
    """Run the job as the portal does (handed to a spare, or a runner spawned for it) and time it: to its first
    step, then cancelled; a fast job to its result too."""
    transcript = Transcript(job_dir.name, to_the_end=run.fast)
    spare_jobs_dir = job_dir.parent if run.spare else None
    transcript.supervisor = Supervisor(sys.executable, cancel_grace_s=120, spare_jobs_dir=spare_jobs_dir)
    spare_imports_s: float | None = None
    spawned_at = 0.0

    async def follow() -> tuple[float, object]:
        nonlocal spare_imports_s, spawned_at
        supervisor = transcript.supervisor
        try:
            if run.spare:
                spare_imports_s = await spare_ready(supervisor)
            spawned_at = time.time()
            spawned = time.monotonic()  # with a spare: the hand-over
            return spawned, await supervisor.run(job_dir.name, job_dir, transcript.on_event)
        finally:
            await supervisor.close()  # no spare outlives the run

    spawned, outcome = anyio.run(follow)
    runner_log = (job_dir / jobdir.LOG_FILE).read_text(errors="replace")
    events = transcript.events
    steps = [(t, e) for t, e in events if isinstance(e, protocol.Step)]
    if not steps:
        raise JobFailed(f"{run.name[:3]} {clip}: no denoising step ({outcome})", runner_log)
    results = [(t, e) for t, e in events if isinstance(e, protocol.Result)]
    if run.fast and not results:
        raise JobFailed(f"{run.name[:3]} {clip}: no result ({outcome})", runner_log)
    stages = {e.name: e.t for _, e in events if isinstance(e, protocol.Stage)}
    load_memory = next(e for _, e in events if isinstance(e, protocol.Memory) and e.stage == "load_transformer")
    cache_log = [line.strip() for line in runner_log.splitlines() if "weight cache:" in line]
    source = next((what for phrase, what in CACHE_LOG.items() if phrase in runner_log), "bf16 read and cast")
    first_step_time, first_step = steps[0]
    denoise_note = next(e.note for _, e in events if isinstance(e, protocol.Stage) and e.name == "denoise")
    result_time, result = results[0] if results else (None, None)
    return Row(
        run=run,
        source=source,
        page_cache=page_cache,
        started_s=started_after(runner_log, spawned_at),
        imports_s=logged_seconds(IMPORTED, runner_log),
        cuda_s=logged_seconds(CUDA_STARTED, runner_log),
        first_line_s=events[0][0] - spawned,
        load_transformer_s=stages["denoise"] - stages["load_transformer"],
        load_peak_gib=load_memory.peak_gib,
        first_step_s=first_step.elapsed_s,
        spawn_to_step_s=first_step_time - spawned,
        cache_log=cache_log,
        clip=clip,
        blocks=blocks(run, compiled=denoise_note == COMPILE_NOTE),
        spare_imports_s=spare_imports_s,
        result_s=None if result_time is None else result_time - spawned,
        timings=None if result is None else result.timings,
        peak_vram_gib=None if result is None else result.peak_vram_gib,
        stage_first_step_s=first_step_seconds(events) if result else None,
    )


def blocks(run: Run, compiled: bool) -> str:
    """How the job's transformer blocks ran, from the runner's own word (its denoise stage's compile note)."""
    if compiled:
        return "compiled, dynamic shapes" if run.compile_dynamic else "compiled, a graph per size"
    return "not compiled on a CPU" if run.compiled else "not compiled"


async def spare_ready(supervisor: Supervisor) -> float:
    """Spawn the supervisor's spare and wait for its log line saying its imports are done: their seconds."""
    await supervisor.ensure_spare()
    pid, spare_log = supervisor.spare_pid, supervisor.spare_log
    assert pid is not None and spare_log is not None
    ready = re.compile(re.escape(stdout.SPARE_READY.format(pid=pid)) + r" ([\d.]+) s")
    with anyio.fail_after(SPARE_READY_TIMEOUT_S):
        while (found := ready.search(spare_log.read_text(errors="replace"))) is None:
            if supervisor.spare_pid != pid:
                raise RuntimeError(
                    f"spare runner {pid} exited while importing; {spare_log} ends:\n"
                    f"{spare_log.read_text(errors='replace')[-3000:]}"
                )
            await anyio.sleep(0.05)
    return float(found.group(1))


def started_after(runner_log: str, spawned_at: float) -> float | None:
    """Seconds from the spawn to the runner's "runner started" line (logging's local time, to the millisecond)."""
    found = STARTED.search(runner_log)
    if found is None:
        return None
    return datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - spawned_at


def logged_seconds(pattern: re.Pattern, runner_log: str) -> float | None:
    found = pattern.search(runner_log)
    return None if found is None else float(found.group(1))


# --- the report ------------------------------------------------------------------------------------------


def report(setting: Setting, command: str, notes: list[str], rows: list[Row]) -> str:
    today = datetime.date.today().isoformat()
    lines = [
        f"# Spawn to first denoising step, {today}, {device_name()}, RANDOM WEIGHTS",
        "",
        f"`{command}`: torch {torch.__version__}, diffusers {diffusers.__version__}, {setting.size.name} sizes "
        "with random weights, FP8, a cached prompt (no job loads the text encoder), each quality job cancelled "
        "after its first step, each fast job run to its MP4.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        peak = "-" if row.load_peak_gib is None else f"{row.load_peak_gib:.2f}"
        cells = [
            row.run.name,
            str(row.clip),
            row.blocks,
            row.source,
            row.page_cache,
            *("-" if seconds is None else f"{seconds:.2f}" for seconds in (row.started_s, row.imports_s, row.cuda_s)),
            f"{row.first_line_s:.2f}",
            f"{row.load_transformer_s:.2f}",
            peak,
            f"{row.first_step_s:.2f}",
            f"{row.spawn_to_step_s:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += fast_table([row for row in rows if row.timings is not None])
    spares = [row for row in rows if row.spare_imports_s is not None]
    notes = notes + [
        f"{row.run.name[:3]} ran on a spare runner that had imported torch and diffusers in {row.spare_imports_s:.2f} "
        's before it was handed the job: its "spawn → ..." columns count from the hand-over, and its imports '
        "column is empty (none were paid after it)."
        for row in spares
    ]
    notes += [
        f"{row.run.name[:3]} first ran a job at {first.clip} in the same compile cache, {first.blocks} (hand-over → "
        f"first step {first.spawn_to_step_s:.2f} s, the step itself {first.first_step_s:.2f} s), cancelled after its "
        f"first step; then the timed job at {row.clip}, a size that cache had never seen."
        for row in rows
        if (first := row.first_size) is not None
    ]
    lines += ["", *[f"- {note}" for note in notes]]
    logged = [f"  - {row.run.name[:3]} `{line}`" for row in rows for line in row.cache_log]
    if logged:
        lines += ["- The weight cache's own log lines (runner.log):", *logged]
    return "\n".join(lines) + "\n"


def fast_table(rows: list[Row]) -> list[str]:
    """The jobs run to their MP4: hand-over to first step and to the result line, the result's seconds per stage,
    each denoising stage's first step (where a compiled job compiles its shapes) and the job's peak VRAM."""
    if not rows:
        return []
    stages = [stage for stage in protocol.STAGES if any(stage in row.timings for row in rows)]
    first_steps = [stage for stage in protocol.DENOISING if any(stage in row.stage_first_step_s for row in rows)]
    columns = [
        *FAST_COLUMNS,
        *(f"{stage}, s" for stage in stages),
        *(f"{stage}: start → its first step, s" for stage in first_steps),
        "job peak VRAM, GiB",
    ]
    lines = [
        "",
        "Fast jobs to their MP4: the runner's result line's seconds per stage (its `timings`).",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = [
            row.run.name[:3],
            str(row.clip),
            row.blocks,
            f"{row.spawn_to_step_s:.2f}",
            f"{row.result_s:.2f}",
            *(figure(row.timings.get(stage)) for stage in stages),
            *(figure(row.stage_first_step_s.get(stage)) for stage in first_steps),
            figure(row.peak_vram_gib),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def write(text: str, out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


# --- the run ---------------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the report here")
    parser.add_argument("--workdir", type=Path, help="where the model and caches go (a local disk; removed after)")
    parser.add_argument(
        "--tiny", action="store_true", help="the demo model's sizes at 256x160, fast jobs 9 frames at 256x128 (CPU)"
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        choices=[run.letter for run in RUNS],
        default=[run.letter for run in RUNS],
        help="which runs, by letter (default all); (a) runs always, as it writes the cache the others read",
    )
    parser.add_argument(
        "--fast-frames", type=int, help=f"the fast jobs' frames, (h) and (i) (default {FAST_FRAMES}; --tiny: 9)"
    )
    parser.add_argument(
        "--fast-size",
        type=size_argument,
        metavar="WIDTHxHEIGHT",
        help=f"the fast jobs' size (default {FAST_SIZE[0]}x{FAST_SIZE[1]}; --tiny: 256x128)",
    )
    args = parser.parse_args(argv)
    args.setting = setting_for(args)
    fast = args.setting.fast
    spec = MODEL_KINDS[args.setting.model_kind](Path("model"))  # the rules a job of this kind is checked by
    wrong = violations(spec.constraints, spec.resolve(asked(args.setting, fast, Path("model")), seed=1))
    if wrong:  # the option, then the request's rule
        options = {"num_frames": "--fast-frames", "width": "--fast-size", "height": "--fast-size"}
        parser.error("; ".join(f"{options.get(field, field)}: {field} {why}" for field, why in wrong))
    return args


def size_argument(text: str) -> tuple[int, int]:
    width, x, height = text.partition("x")
    if not (x and width.isdigit() and height.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT in pixels, e.g. 768x448")
    return int(width), int(height)


def setting_for(args: argparse.Namespace) -> Setting:
    """The clips and model of a run: the demo's sizes on the CPU with --tiny, else full-size LTX-2.0 on a GPU."""
    if args.tiny:
        fast = Clip("fast", *(args.fast_size or (256, 128)), args.fast_frames or 9)
        quality, unseen = Clip("quality", 256, 160, 9), Clip("quality", 256, 160, 17)
        # Only the bench's own files leave the page cache: a smoke must not slow the rest of the machine.
        return Setting(TINY_SIZE, "demo", quality, unseen, fast, drop_system_cache=False)
    if not torch.cuda.is_available():
        sys.exit("spawn_bench needs a CUDA GPU; --tiny runs it at the demo model's size on the CPU")
    fast = Clip("fast", *(args.fast_size or FAST_SIZE), args.fast_frames or FAST_FRAMES)
    quality, unseen = Clip("quality", 768, 448, 49), Clip("quality", 768, 448, 73)
    return Setting(FULL_SIZE, "ltx-2", quality, unseen, fast, drop_system_cache=True)


def sizes_gib(size: ModelSize) -> tuple[float, float]:
    """What the bf16 model files and the FP8 cache entry will weigh (parameters counted on the meta device)."""
    weights = RandomWeights(size)
    transformer = weights.weights_gib("transformer")
    decoders = sum(weights.weights_gib(component) for component in ("vae", "audio_vae", "vocoder", UPSAMPLER))
    return transformer + decoders, transformer * FP8_RESIDENT_RATIO


def free_gib(path: Path) -> float:
    return shutil.disk_usage(path).free / 2**30 if path.is_dir() else 0.0


def places(parent: Path, size: ModelSize) -> tuple[Path, Path]:
    """Where the model and where the caches and jobs go: both under `parent` where its disk holds them;
    else the model on tmpfs (/dev/shm, memory) and the caches on the disk; else nowhere (exit)."""
    model_gib, cache_gib = sizes_gib(size)
    disk, memory_fs = free_gib(parent), free_gib(SHARED_MEMORY)
    if disk >= model_gib + cache_gib + SPARE_GIB:
        return parent, parent
    if disk >= cache_gib + SPARE_GIB and memory_fs >= model_gib + SPARE_GIB:
        log(f"{parent} has {disk:.1f} GiB free, too little for the model too: the model goes to {SHARED_MEMORY}")
        return SHARED_MEMORY, parent
    sys.exit(
        f"the model ({model_gib:.1f} GiB) and its FP8 cache ({cache_gib:.1f} GiB) need room: {parent} has "
        f"{disk:.1f} GiB free, {SHARED_MEMORY} {memory_fs:.1f} GiB; use --workdir"
    )


def filesystem(path: Path) -> str:
    """The type of the filesystem holding `path` (the longest mount point above it)."""
    mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    resolved = str(path.resolve())
    above = [
        (point, kind) for point, kind in mounts if resolved == point or resolved.startswith(point.rstrip("/") + "/")
    ]
    return max(above, key=lambda mount: len(mount[0]))[1] if above else "unknown"


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    setting = args.setting
    command = ("python bench/spawn_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    parent = args.workdir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    model_parent, work_parent = places(parent, setting.size)
    made: list[Path] = []
    try:
        for where in (model_parent, work_parent):
            made.append(Path(tempfile.mkdtemp(prefix="spawn-bench-", dir=where)))
        runs = [run for run in RUNS if run is RUNS[0] or run.letter in args.runs]
        return measure(setting, command, made[0] / "model", made[1], args.out, runs)
    finally:
        for directory in made:
            shutil.rmtree(directory, ignore_errors=True)


def measure(setting: Setting, command: str, model_dir: Path, workdir: Path, out: Path | None, runs: list[Run]) -> str:
    caches = workdir / "cache"
    began = time.monotonic()
    log(f"writing the {setting.size.name} model with random weights to {model_dir}")
    write_random_model(model_dir, setting.size)
    memory.release(memory.pick_device())  # the weights were drawn on the GPU, where there is one
    os.sync()  # written back now, not while a job is timed
    written_s = time.monotonic() - began
    model_gib = sum(path.stat().st_size for path in files_under(model_dir)) / 2**30
    notes = [
        f"The model: {model_gib:.1f} GiB on {filesystem(model_dir)}, written in {written_s:.0f} s; the caches on "
        f"{filesystem(workdir)}. The text encoder, connectors and tokenizer are the demo's tiny ones: no job here "
        "loads them (the prompt is cached).",
        "spawn → first protocol line: the interpreter, the torch and diffusers imports, CUDA's start, admission and "
        "the prompt cache lookup. load_transformer: the stage's own time on the runner's clock, the decoders "
        "(VAEs, vocoder, a fast job's latent upsampler, loaded to the CPU) included. first step itself: the runner's "
        "step event. Where the whole page cache is dropped, the runner's imports come from disk too: spawn → first "
        "protocol line shows it. The page cache is warmed or dropped for what the job reads: the transformer (the "
        "weight cache's entry where there is one), the decoders and a fast job's upsampler.",
    ]
    for what, path in (("model", model_dir), ("cache", workdir)):
        if filesystem(path) == "tmpfs":
            notes.append(f"The {what} is on tmpfs: its reads are memory copies, and no page cache drop removes it.")

    def timed(job_dir: Path, run: Run, clip: Clip) -> Row:
        write_job(job_dir, model_dir, setting, clip, caches, run)
        if not (caches / "prompts").is_dir():  # the first job: its prompt goes in the cache before it runs
            seed_prompt(job_dir)
        # What the job will read: the cache entry where there is one, else the bf16 transformer; the decoders.
        cached = files_under(caches / "weights") if run.weight_cache else []
        parts = ("vae", "audio_vae", "vocoder", *((UPSAMPLER,) if run.fast else ()))
        reads = (cached or files_under(model_dir / "transformer")) + files_under(*(model_dir / part for part in parts))
        page_cache = warm(reads) if run.page_cache == "warm" else drop(reads, setting.drop_system_cache)
        log(f"{run.name}, {clip}: page cache {page_cache}")
        return spawn_and_time(job_dir, run, clip, page_cache)

    rows: list[Row] = []
    failures: list[str] = []
    for index, run in enumerate(runs):
        job_dir = workdir / "jobs" / f"job-{index}"
        try:
            if run.unseen_size:  # first a job at another size, in the same compile cache
                first_size = timed(job_dir.with_name(f"{job_dir.name}-first-size"), run, setting.quality)
                row = timed(job_dir, run, setting.unseen)
                row.first_size = first_size
            else:
                row = timed(job_dir, run, setting.fast if run.fast else setting.quality)
            rows.append(row)
        except JobFailed as failed:
            log(f"{failed}; runner.log ends:\n{failed.runner_log[-3000:]}")
            if not rows:  # (a): every other run reads the weight cache it writes
                raise
            failures.append(f"FAILED: {failed} (its runner.log's end is in the bench's stderr)")
        text = report(setting, command, notes + failures, rows)
        write(text, out)  # after every row: a run cut short keeps what it measured
    log(f"measured in {time.monotonic() - began:.0f} s")
    print(text)
    return text


if __name__ == "__main__":
    main()
