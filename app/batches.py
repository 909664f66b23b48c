"""Batches: one submit of several prompts and/or seeds (POST /api/batches), each variation a job of its own.

A batch's body is a job's body (the request's fields, a webhook) with `prompts` (a list: each a job's `prompt`,
in place of `prompt`) and/or `seeds` (a count: that many jobs, seeded from the request's `seed` up, or each at
random without one; or a list of seeds, in place of `seed`). Every prompt goes with every seed, prompt by prompt.
A batch holds at most as many jobs as the queue (AVP_MAX_QUEUE): a longer one is a 400 before anything is
validated, one that fits the queue's limit but not the room it has now a 429.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from app.schemas import FieldError, InvalidRequest

BATCH_FIELDS = ("prompts", "seeds")
BATCH_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Variation:
    """One job of a batch: its body, and which entry of `prompts` and of a list of `seeds` it took (for errors)."""

    body: dict[str, Any]
    prompt_index: int | None
    seed_index: int | None

    def field_name(self, field: str) -> str:
        """Where a problem of this job's `field` lies in the batch's body."""
        if field == "prompt" and self.prompt_index is not None:
            return f"prompts[{self.prompt_index}]"
        if field == "seed" and self.seed_index is not None:
            return f"seeds[{self.seed_index}]"
        return field


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _prompts(raw: dict[str, Any], max_jobs: int, errors: list[FieldError]) -> list[Any] | None:
    prompts = raw.get("prompts")
    if prompts is None:
        return None
    if not isinstance(prompts, list) or not prompts:
        errors.append(FieldError(field="prompts", message="must be a list of one or more prompts"))
    elif len(prompts) > max_jobs:
        message = f"has {len(prompts)} prompts; a batch makes at most {max_jobs} jobs (AVP_MAX_QUEUE)"
        errors.append(FieldError(field="prompts", message=message))
    elif "prompt" in raw:
        errors.append(FieldError(field="prompt", message="give the prompts in `prompts` alone, not also `prompt`"))
    else:
        return prompts
    return None


def _seeds(raw: dict[str, Any], max_jobs: int, errors: list[FieldError]) -> tuple[list[Any], bool] | None:
    """The seeds each prompt goes with (None: the request's own, or random), and whether they were listed."""
    seeds = raw.get("seeds")
    if seeds is None:
        return None
    if _is_int(seeds):
        if not 1 <= seeds <= max_jobs:
            message = f"must be a count from 1 to {max_jobs} (AVP_MAX_QUEUE) or a list of seeds, not {seeds}"
            errors.append(FieldError(field="seeds", message=message))
            return None
        first = raw.get("seed")
        if first is None:  # each job picks its own at random, as a job without a seed does
            return [None] * seeds, False
        if not _is_int(first):
            return None  # the request's own check names `seed`
        return [first + offset for offset in range(seeds)], False
    if not isinstance(seeds, list) or not seeds or not all(_is_int(seed) for seed in seeds):
        message = "must be a count of jobs (a whole number) or a list of one or more whole-number seeds"
        errors.append(FieldError(field="seeds", message=message))
    elif len(seeds) > max_jobs:
        message = f"lists {len(seeds)} seeds; a batch makes at most {max_jobs} jobs (AVP_MAX_QUEUE)"
        errors.append(FieldError(field="seeds", message=message))
    elif len(set(seeds)) != len(seeds):
        errors.append(FieldError(field="seeds", message="lists a seed twice: each would make the same clip"))
    elif "seed" in raw:
        errors.append(FieldError(field="seed", message="give the seeds in `seeds` alone, not also `seed`"))
    else:
        return seeds, True
    return None


def expand(raw: Any, max_jobs: int) -> list[Variation]:
    """The jobs a batch's body stands for, in order; InvalidRequest naming `prompts` or `seeds` when they are not a
    batch of 1 to `max_jobs` jobs. Each job's own fields are checked later, as a job's are."""
    if not isinstance(raw, dict):
        raise InvalidRequest([FieldError(field="body", message="must be a JSON object: a request with prompts/seeds")])
    errors: list[FieldError] = []
    if not any(name in raw for name in BATCH_FIELDS):
        message = "a batch needs `prompts` (a list) and/or `seeds` (a count or a list); one job: POST /api/jobs"
        raise InvalidRequest([FieldError(field="prompts", message=message)])
    prompts = _prompts(raw, max_jobs, errors)
    seeds = _seeds(raw, max_jobs, errors)
    if errors:
        raise InvalidRequest(errors)
    prompt_choices: list[tuple[int | None, Any]] = (
        [(None, raw.get("prompt"))] if prompts is None else list(enumerate(prompts))
    )
    seed_list, listed = seeds if seeds is not None else ([raw.get("seed")], False)
    total = len(prompt_choices) * len(seed_list)
    if total > max_jobs:
        message = (
            f"{len(prompt_choices)} prompts x {len(seed_list)} seeds make {total} jobs; "
            f"a batch makes at most {max_jobs} (AVP_MAX_QUEUE)"
        )
        raise InvalidRequest([FieldError(field="seeds", message=message)])
    common = {name: value for name, value in raw.items() if name not in (*BATCH_FIELDS, "prompt", "seed")}
    variations = []
    for prompt_index, prompt in prompt_choices:
        for seed_index, seed in enumerate(seed_list):
            body = dict(common)
            if prompt is not None or "prompt" in raw:
                body["prompt"] = prompt
            if seed is not None:
                body["seed"] = seed
            variations.append(Variation(body, prompt_index, seed_index if listed else None))
    return variations
