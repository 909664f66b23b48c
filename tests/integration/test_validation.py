"""Bad requests get a 400 naming every bad field, with the nearest valid values, and create nothing."""

from __future__ import annotations

import pytest

from tests.portal import NO_JOBS, Portal

SHARED_PORTAL_ENV = NO_JOBS  # every request here is refused

CASES = [
    ({"width": 500}, {"width": "nearest valid: 480 or 512"}),
    ({"height": 100}, {"height": "nearest valid: 96 or 128"}),
    ({"num_frames": 100}, {"num_frames": "not 8k+1; nearest valid: 97 or 105"}),
    ({"num_frames": 1}, {"num_frames": "below the minimum 9"}),
    ({"num_frames": 489}, {"num_frames": "above the maximum 481"}),
    ({"num_frames": 481, "fps": 12}, {"num_frames": "at 12 fps use at most 241"}),
    ({"prompt": ""}, {"prompt": "empty"}),
    ({"prompt": "   "}, {"prompt": "empty"}),
    ({"prompt": "x" * 4001}, {"prompt": "limit is 4000"}),
    ({"width": "wide"}, {"width": "must be a whole number"}),
    ({"steps": 2.5}, {"steps": "must be a whole number"}),
    ({"fps": "fast"}, {"fps": "must be a number"}),
    ({"prompt": 7}, {"prompt": "must be text"}),
    ({"model": "sora"}, {"model": "unknown model 'sora'; pick one of demo (GET /api/models)"}),
    ({"steps": 0}, {"steps": "outside 1..100"}),
    ({"steps": -3}, {"steps": "outside 1..100"}),
    ({"width": 4096}, {"width": "above the maximum 2048"}),
    ({"seed": -1}, {"seed": "outside"}),
    ({"colour": "red"}, {"colour": "not a request field"}),
    (
        {"width": 500, "num_frames": 100, "steps": 0, "prompt": "", "fps": "x"},
        {"width": "480 or 512", "num_frames": "97 or 105", "steps": "1..100", "prompt": "empty", "fps": "number"},
    ),
]


# The demo's default mode is fast: a schedule of its own, and sides on a 64-pixel grid.
FAST_CASES = [
    ({"steps": 12}, {"steps": "is fixed in fast mode"}),
    ({"guidance_scale": 4}, {"guidance_scale": "choose mode quality to set it"}),
    ({"width": 352, "height": 224}, {"width": "multiple of 64", "height": "nearest valid: 192 or 256"}),
    ({"mode": "turbo"}, {"mode": "'turbo' is not a mode; choose 'fast' or 'quality'"}),
    ({"mode": 2}, {"mode": "must be text"}),
]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [({"mode": "quality", **fields}, expected) for fields, expected in CASES] + FAST_CASES,
    ids=[",".join(c[0]) for c in CASES + FAST_CASES],
)
def test_invalid_requests_are_refused_with_every_field_named(shared_portal: Portal, fields, expected) -> None:
    body = {"prompt": "a red ball", **fields}
    with shared_portal.client() as c:
        response = c.post("/api/jobs", json=body)
        assert response.status_code == 400, response.text
        errors = {e["field"]: e["message"] for e in response.json()["errors"]}
        assert set(errors) == set(expected)
        for field_name, fragment in expected.items():
            assert fragment in errors[field_name]
        assert c.get("/api/jobs").json()["jobs"] == [], "no job row was created"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"', b""])
def test_a_body_that_is_not_a_json_object_is_a_400_naming_the_body(shared_portal: Portal, body: bytes) -> None:
    with shared_portal.client() as c:
        response = c.post("/api/jobs", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert [e["field"] for e in response.json()["errors"]] == ["body"]
        assert c.get("/api/jobs").json()["jobs"] == []


UNREADABLE_BODIES = [
    (b"[" * 100_000 + b"]" * 100_000, "body", "is nested too deeply; send a flat JSON object"),
    (b"", "body", 'is empty; send a JSON object of request fields, e.g. {"prompt": '),
    (b" \n", "body", "is empty"),
    (b'{"prompt": "a \\ud800 ball"}', "prompt", "contains an invalid character (a lone UTF-16 surrogate)"),
    (b'{"prompt": "a ball", "negative_prompt": "\\udc00"}', "negative_prompt", "a lone UTF-16 surrogate"),
    (b'{"prompt": "\xed\xa0\x80"}', "prompt", "a lone UTF-16 surrogate"),  # one encoded as UTF-8
    (b'{"prompt": "a ball", ', "body", "is not valid JSON (Input data was truncated)"),
]


@pytest.mark.parametrize(
    ("body", "field", "fragment"), UNREADABLE_BODIES, ids=["deep", "empty", "blank", "surrogate", "low", "utf8", "cut"]
)
def test_a_body_that_cannot_be_read_is_a_400_saying_which_field_and_what_is_wrong(
    shared_portal: Portal, body: bytes, field: str, fragment: str
) -> None:
    with shared_portal.client() as c:
        response = c.post("/api/jobs", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        [error] = response.json()["errors"]
        assert error["field"] == field and fragment in error["message"], error
        assert c.get("/api/jobs").json()["jobs"] == []


def test_unknown_jobs_are_404_not_500(shared_portal: Portal) -> None:
    with shared_portal.client() as c:
        for path in ("/api/jobs/0123", "/api/jobs/../../etc/passwd", "/api/jobs/" + "a" * 32 + "/video"):
            assert c.get(path).status_code == 404, path
        assert c.post("/api/jobs/" + "f" * 32 + "/cancel", json={}).status_code == 404
