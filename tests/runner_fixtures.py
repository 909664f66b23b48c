"""Fixtures and helpers for tests that drive the GPU runner on the demo model.

conftest.py registers these (`from tests.runner_fixtures import demo_model_dir`), so every
test directory can use them; helpers are imported directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import msgspec
import numpy as np
import pytest

from contract import jobdir, protocol
from contract.models import demo_spec
from contract.request import FAST_FIXED, Request, merge

REPO_ROOT = Path(__file__).resolve().parent.parent

# The demo model's defaults in quality mode (steps and guidance set: tests size their jobs by steps), with a
# prompt and a seed: every field set, as the runner gets it. write_job(..., mode="fast") makes a fast job.
DEMO_REQUEST = msgspec.structs.asdict(
    merge(
        Request(prompt="a red robot dances on the beach at sunset, waves", model="demo", mode="quality", seed=1234),
        demo_spec(Path("demo")).defaults,
    )
)
NO_CACHES = jobdir.RunnerOptions()
# A runner's last line for a small clip, for tests of what the portal makes of it.
A_RESULT = protocol.Result(
    file="video.mp4",
    frames=9,
    fps=24,
    width=64,
    height=64,
    audio_sample_rate=24000,
    duration_s=0.375,
    peak_vram_gib=None,
    timings={},
)
JOB_FIELDS = {f.name for f in msgspec.structs.fields(jobdir.JobFile)}


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model, built once per test session with the project's own command."""
    target = tmp_path_factory.mktemp("models") / "demo"
    subprocess.run([sys.executable, "-m", "gpu_runner", "demo-model", str(target)], cwd=REPO_ROOT, check=True)
    return target


@pytest.fixture(scope="session")
def version_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight models of each LTX-2 version's layout, dev and distilled, built once per test session
    with the project's own command, keyed "2.0", "2.3", "2.0-distilled", "2.3-distilled". The four commands run in
    one interpreter (`gpu_runner.__main__.main`, what `python -m gpu_runner` calls): torch is imported once."""
    root = tmp_path_factory.mktemp("versions")
    built, commands = {}, []
    for version in ("2.0", "2.3"):
        for variant in ("dev", "distilled"):
            name = version if variant == "dev" else f"{version}-distilled"
            flags = ["--distilled"] if variant == "distilled" else []
            commands.append(["demo-model", str(root / name), "--random", "--version", version, *flags])
            built[name] = root / name
    script = "import json, sys\nfrom gpu_runner.__main__ import main\nsys.exit(max(map(main, json.loads(sys.argv[1]))))"
    subprocess.run([sys.executable, "-c", script, json.dumps(commands)], cwd=REPO_ROOT, check=True)
    return built


@pytest.fixture(scope="session")
def ltx25_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight LTX-2.5 in its published layout (`demo-model --random --version 2.5`), built once per
    test session."""
    target = tmp_path_factory.mktemp("ltx25") / "model"
    command = [sys.executable, "-m", "gpu_runner", "demo-model", str(target), "--random", "--version", "2.5"]
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    return target


def write_job(job_dir: Path, model_path: Path, **overrides: object) -> Path:
    """Write a valid demo job.json into `job_dir`; overrides name JobFile or request fields.

    Request fields (prompt, steps, seed, ...) go into "request"; JobFile fields (model_kind,
    image_file, precision, ...) replace the job's own.
    """
    job_dir.mkdir(parents=True, exist_ok=True)
    made = jobdir.job_file(job_dir.name, Request(**DEMO_REQUEST), demo_spec(Path(model_path).resolve()), NO_CACHES)
    job = msgspec.to_builtins(made)  # then changed as asked, invalid values included (tests of the runner's checks)
    if overrides.get("mode") == "fast":
        job["request"].update(dict.fromkeys(FAST_FIXED))  # fixed by the mode: unless a test sets them to see a refusal
    job["request"].update({k: v for k, v in overrides.items() if k not in JOB_FIELDS})
    job.update({k: v for k, v in overrides.items() if k in JOB_FIELDS})
    path = job_dir / jobdir.JOB_FILE
    path.write_bytes(msgspec.json.encode(job))
    return path


def run_job(job_dir: Path, timeout: float = 60) -> tuple[int, list[protocol.Event], str]:
    """Run `python -m gpu_runner run <job dir>` to completion: exit code, parsed events, stderr."""
    completed = subprocess.run(
        [sys.executable, "-m", "gpu_runner", "run", str(job_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=timeout,
    )
    events = [protocol.decode(line) for line in completed.stdout.splitlines()]
    return completed.returncode, events, completed.stderr.decode(errors="replace")


def scramble_keeping_size_and_time(path: Path) -> None:
    """Overwrite a file with noise of its size and keep its modification time: its fingerprint stays, its
    contents are gone, so whatever still reads it fails or differs."""
    stat = path.stat()
    path.write_bytes(os.urandom(stat.st_size))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@dataclass
class Mp4:
    """What a test wants to know about an MP4, read back with PyAV."""

    video_codec: str
    width: int
    height: int
    frame_rate: Fraction
    frames: list[np.ndarray]  # decoded RGB
    video_duration_s: float
    audio_codec: str
    sample_rate: int
    audio_channels: int
    audio_duration_s: float
    stream_count: int


def read_mp4(path: Path) -> Mp4:
    with av.open(str(path)) as container:
        (video,) = container.streams.video
        (audio,) = container.streams.audio
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video)]
        return Mp4(
            video_codec=video.codec_context.name,
            width=video.codec_context.width,
            height=video.codec_context.height,
            frame_rate=Fraction(video.average_rate),
            frames=frames,
            video_duration_s=float(video.duration * video.time_base),
            audio_codec=audio.codec_context.name,
            sample_rate=audio.codec_context.sample_rate,
            audio_channels=audio.codec_context.channels,
            audio_duration_s=float(audio.duration * audio.time_base),
            stream_count=len(container.streams),
        )
