"""A batch's body becomes its jobs' bodies (app/batches.py): every prompt with every seed, in order, or a 400 naming
`prompts` or `seeds` before any job's own fields are looked at."""

from __future__ import annotations

import pytest

from app.batches import expand
from app.schemas import InvalidRequest


def bodies(raw: dict, max_jobs: int = 20) -> list[dict]:
    return [variation.body for variation in expand(raw, max_jobs)]


def refused(raw: object, max_jobs: int = 20) -> list[tuple[str, str]]:
    with pytest.raises(InvalidRequest) as caught:
        expand(raw, max_jobs)
    return [(error.field, error.message) for error in caught.value.errors]


def test_every_prompt_goes_with_every_seed_prompt_by_prompt_and_the_rest_is_shared() -> None:
    made = bodies({"prompts": ["a red ball", "a blue square"], "seeds": [7, 3], "steps": 2})
    assert made == [
        {"steps": 2, "prompt": "a red ball", "seed": 7},
        {"steps": 2, "prompt": "a red ball", "seed": 3},
        {"steps": 2, "prompt": "a blue square", "seed": 7},
        {"steps": 2, "prompt": "a blue square", "seed": 3},
    ]


def test_a_count_of_seeds_counts_up_from_the_requests_seed_or_leaves_each_job_its_own_random_one() -> None:
    assert [b["seed"] for b in bodies({"prompt": "a ball", "seed": 41, "seeds": 3})] == [41, 42, 43]
    random = bodies({"prompt": "a ball", "seeds": 2})
    assert random == [{"prompt": "a ball"}, {"prompt": "a ball"}], "no seed: the model picks one per job"
    assert bodies({"prompts": ["one", "two"]}) == [{"prompt": "one"}, {"prompt": "two"}]


def test_a_problem_of_one_job_is_named_by_its_entry_in_the_batch() -> None:
    [first, second] = expand({"prompts": ["ok", "x"], "seeds": [1, 2]}, 20)[0:3:2]
    assert (first.field_name("prompt"), second.field_name("prompt")) == ("prompts[0]", "prompts[1]")
    listed = expand({"prompt": "p", "seeds": [5, 6]}, 20)
    assert [v.field_name("seed") for v in listed] == ["seeds[0]", "seeds[1]"]
    assert listed[1].field_name("width") == "width" and listed[1].field_name("prompt") == "prompt"
    counted = expand({"prompt": "p", "seed": 5, "seeds": 2}, 20)
    assert counted[1].field_name("seed") == "seed", "a counted seed came from the request's own `seed`"


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"prompt": "one job"}, "prompts", "POST /api/jobs"),
        ({"prompts": ["p"] * 10_000}, "prompts", "10000 prompts"),
        ({"prompts": []}, "prompts", "one or more"),
        ({"prompts": "a red ball"}, "prompts", "a list"),
        ({"prompt": "x", "prompts": ["y"]}, "prompt", "not also"),
        ({"prompt": "x", "seeds": 0}, "seeds", "from 1 to 20"),
        ({"prompt": "x", "seeds": 21}, "seeds", "from 1 to 20"),
        ({"prompt": "x", "seeds": True}, "seeds", "count of jobs"),
        ({"prompt": "x", "seeds": "3"}, "seeds", "count of jobs"),
        ({"prompt": "x", "seeds": [1, 1]}, "seeds", "twice"),
        ({"prompt": "x", "seeds": [1, 2.5]}, "seeds", "whole-number"),
        ({"prompt": "x", "seeds": list(range(21))}, "seeds", "21 seeds"),
        ({"prompt": "x", "seed": 1, "seeds": [2]}, "seed", "not also"),
        ({"prompts": ["a", "b", "c"], "seeds": 7}, "seeds", "3 prompts x 7 seeds make 21 jobs"),
    ],
)
def test_a_batch_that_is_no_batch_of_1_to_max_jobs_is_refused_naming_the_field(raw, field, words) -> None:
    [(named, message)] = refused(raw)
    assert named == field and words in message, message


def test_a_body_that_is_no_object_is_refused() -> None:
    assert refused(["a red ball"])[0][0] == "body"
