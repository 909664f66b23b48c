"""docs/protocol.md shows the protocol by example; every example there must parse as the code reads it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.sse_names import END as END_EVENT
from app.statuses import STATUSES, TERMINAL
from contract import protocol
from gpu_runner.resident import WEIGHTS_RESIDENT

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC, re.S)


def test_the_demo_transcript_is_protocol_lines_walking_every_stage_to_a_result() -> None:
    transcript, _, endings, *_ = blocks("jsonl")
    events = [protocol.decode(line) for line in transcript.splitlines()]
    stages = [e.name for e in events if isinstance(e, protocol.Stage)]
    assert stages == list(protocol.STAGES)
    assert isinstance(events[-1], protocol.Result)
    memory_after = [e.stage for e in events if isinstance(e, protocol.Memory)]
    assert memory_after == stages, "a memory event closes every stage"
    steps: dict[str, list[protocol.Step]] = {}
    for event in events:
        if isinstance(event, protocol.Step):
            steps.setdefault(event.stage, []).append(event)
    assert list(steps) == ["denoise", "refine"], "the default demo job is a fast one"
    for stage, taken in steps.items():
        assert [s.step for s in taken] == list(range(1, taken[0].total + 1)), stage

    errors = [protocol.decode(line) for line in endings.splitlines()]
    assert all(isinstance(e, protocol.Error) for e in errors)
    assert {e.code for e in errors} == set(protocol.EXIT_FOR_ERROR)
    assert all(stage.note is None for stage in events if isinstance(stage, protocol.Stage)), "nothing compiles on CPU"


def test_the_compiled_start_announces_the_compile_and_estimates_from_the_steps_after_the_first() -> None:
    _, compiled, *_ = blocks("jsonl")
    stage, *steps = [protocol.decode(line) for line in compiled.splitlines()]
    assert isinstance(stage, protocol.Stage) and stage.name == "denoise" and "compiles" in stage.note
    assert all(isinstance(step, protocol.Step) for step in steps) and len(steps) >= 3
    assert steps[0].eta_s is None
    first = steps[0].elapsed_s
    for n, step in enumerate(steps[1:], start=2):  # the mean of steps 2..n, times the steps left
        assert step.eta_s == pytest.approx((step.elapsed_s - first) / (n - 1) * (step.total - n), abs=2e-3)


def test_a_job_leaving_choices_to_the_model_has_their_stages_and_reports_what_was_chosen() -> None:
    chosen = blocks("jsonl")[3]
    events = [protocol.decode(line) for line in chosen.splitlines()]
    stages = [e.name for e in events if isinstance(e, protocol.Stage)]
    every = protocol.stages_of("quality", enhance=True, auto_frames=True)
    assert stages == list(every[: every.index("load_transformer") + 1])
    kinds = [type(e) for e in events]
    # each choice is reported after its stage's memory event, before the next stage
    for stage, choice in (
        (protocol.ENHANCE_STAGE, protocol.EnhancedPrompt),
        (protocol.DURATION_STAGE, protocol.NumFrames),
    ):
        at = next(i for i, e in enumerate(events) if isinstance(e, protocol.Memory) and e.stage == stage)
        assert kinds[at + 1] is choice
    tokens = [e for e in events if isinstance(e, protocol.Token)]
    assert tokens and [t.done for t in tokens] == sorted(t.done for t in tokens)
    assert all(t.done <= t.total for t in tokens)


def test_the_sse_example_frames_carry_their_stored_event_and_end_with_end() -> None:
    (stream,) = blocks("sse")
    frames = []
    for raw in stream.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in raw.splitlines() if not line.startswith(":"))
        if fields:
            frames.append(fields)
    stored, end = frames[:-1], frames[-1]
    ids = [int(f["id"]) for f in stored]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for frame in stored:
        data = json.loads(frame["data"])
        assert data["type"] == frame["event"] and data["id"] == int(frame["id"])
        if data["type"] not in STATUSES:
            protocol.decode(json.dumps({k: v for k, v in data.items() if k != "id"}))
    assert stored[-1]["event"] in TERMINAL
    assert end["event"] == END_EVENT and "id" not in end
    assert json.loads(end["data"]) == {"type": END_EVENT, "status": stored[-1]["event"]}


def test_a_warm_runner_says_resident_after_its_result_and_its_next_job_loads_nothing() -> None:
    warm = blocks("jsonl")[4]
    result, resident, *next_job = [protocol.decode(line) for line in warm.splitlines()]
    assert isinstance(result, protocol.Result) and isinstance(resident, protocol.Resident)
    assert resident.device_gib is None, "a CPU runner holds no GPU memory"
    loading = [e for e in next_job if isinstance(e, protocol.Stage) and e.name.startswith("load_")]
    assert [e.name for e in loading] == ["load_text_encoder", "load_transformer"]
    assert all(e.note == WEIGHTS_RESIDENT for e in loading)
