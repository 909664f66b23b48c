"""The OpenAPI document at /schema/openapi.json: valid for a maintained validator, describing the real shapes, and
behind the same login as the API. (tests/browser renders its page, /schema, under the CSP.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
from openapi_spec_validator import validate

from tests.portal import NO_JOBS, Portal

TOKEN = "test-token-0123456789abcdef"
SHARED_PORTAL_ENV = {"AVP_API_TOKEN": TOKEN, **NO_JOBS}


def schemas(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema object in the document (anything with a `type`), with where it is."""
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            yield where, node
        for key, value in node.items():
            yield from schemas(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from schemas(value, f"{where}/{i}")


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def test_the_document_is_valid_and_describes_the_real_shapes(shared_portal: Portal) -> None:
    with shared_portal.client() as api:
        document = api.get("/schema/openapi.json").raise_for_status().json()
    validate(document)

    # No object of unknown shape: a struct's fields, or a map whose values have a type (timings, say).
    vague = [
        where
        for where, s in schemas(document)
        if s["type"] == "object" and not s.get("properties") and not (s.get("additionalProperties") or {}).get("type")
    ]
    assert vague == [], vague

    parts = document["components"]["schemas"]
    request = parts["Request"]["properties"]
    assert {"prompt", "model", "mode", "width", "num_frames", "seed", "image_upload_id"} <= set(request)
    job = parts["JobOut"]["properties"]
    assert job["request"] == ref("Request") and job["progress"] == ref("JobProgress")
    assert {"oneOf": [ref("Result"), {"type": "null"}]} == job["result"]
    assert set(job["status"]["enum"]) == {"queued", "running", "succeeded", "failed", "cancelled", "interrupted"}
    assert {"step", "total", "percent", "eta_s", "stage"} <= set(parts["JobProgress"]["properties"])
    # LTX-2.5's text-phase choices: a length the model picks, and the prompt enhancer's rewrite
    assert {"type": "string", "const": "auto"} in request["num_frames"]["oneOf"]
    assert {"num_frames_requested", "enhanced_prompt"} <= set(job) and "enhance_prompt" in request
    model = parts["ModelOut"]["properties"]
    assert model["constraints"] == ref("Constraints") and model["defaults"] == ref("ModelDefaults")

    create = document["paths"]["/api/jobs"]["post"]
    request_part, webhook_part = create["requestBody"]["content"]["application/json"]["schema"]["allOf"]
    assert request_part == ref("Request"), "the body is a request's fields"
    assert webhook_part["properties"]["webhook"]["format"] == "uri", "and a job's webhook beside them"
    assert set(webhook_part["properties"]["webhook_events"]["items"]["enum"]) == {
        "start",
        "output",
        "logs",
        "completed",
        "progress",
    }
    assert create["responses"]["201"]["content"]["application/json"]["schema"] == ref("JobOut")
    stream = document["paths"]["/api/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    events = {r["$ref"].rsplit("/", 1)[1] for r in stream["text/event-stream"]["schema"]["oneOf"]}
    kinds = ("Stage", "Step", "Tile", "Memory", "Preview", "Token", "EnhancedPrompt", "NumFrames", "Result", "Error")
    assert events == {f"{kind}Event" for kind in kinds} | {
        "StatusEvent",
        "EndEvent",
    }
    assert "id" in parts["StepEvent"]["required"] and parts["StepEvent"]["properties"]["type"]["const"] == "step"
    poster = document["paths"]["/api/jobs/{job_id}/poster"]["get"]["responses"]
    assert set(poster["200"]["content"]) == {"image/jpeg"}
    assert poster["404"]["content"]["application/json"]["schema"] == ref("ErrorResponse")
    health = document["paths"]["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert health == ref("Health")


def test_the_schema_and_its_page_need_the_apis_login(shared_portal: Portal) -> None:
    with httpx.Client(base_url=shared_portal.base_url, timeout=30) as stranger:
        assert stranger.get("/schema/openapi.json").status_code == 401
        page = stranger.get("/schema")
        assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fschema"
        assert stranger.get("/static/vendor/swagger-ui-5.36.0-bundle.js").status_code == 200, "its files are public"
    with shared_portal.client() as api:
        page = api.get("/schema")
    assert page.status_code == 200 and 'data-openapi-url="/schema/openapi.json"' in page.text
    assert "<script>" not in page.text and "<style>" not in page.text and "https://" not in page.text
