"""The cache budget through a real portal and its runners on the demo model: with AVP_CACHE_GB at room for two
encoded prompts, a third prompt's job removes the least recently used prompt's entry (its runner.log says so),
the caches stay within the budget, and a prompt used lately stays a hit while the one that went is a miss."""

from __future__ import annotations

from pathlib import Path

from tests.portal import Portal

TINY = {"width": 64, "height": 64, "num_frames": 9, "steps": 2}
BUDGET_GB = 0.0003  # 322,122 bytes: two of the demo's encoded prompts (133 KB each), not three
OLDEST, MIDDLE, NEWEST = (
    "a red ball bouncing with clicks",
    "a green square moving left with a low hum",
    "a blue ball moving up with a high beep",
)


def run(portal: Portal, prompt: str) -> dict:
    job = portal.wait(portal.submit(prompt=prompt, **TINY)["id"])
    assert job["status"] == "succeeded", job["error"]
    return job


def encoded(job: dict) -> bool:
    """Whether the job loaded the text encoder: its prompt was not in the cache."""
    return "load_text_encoder" in job["result"]["timings"]


def cached_bytes(portal: Portal) -> int:
    return sum(f.stat().st_size for f in (portal.data_dir / "cache").rglob("*") if f.is_file())


def test_the_least_recently_used_prompt_goes_first_and_the_caches_stay_within_the_budget(make_portal) -> None:
    portal: Portal = make_portal(AVP_CACHE_GB=str(BUDGET_GB))
    budget = int(BUDGET_GB * 2**30)
    prompts = portal.data_dir.resolve() / "cache" / "prompts"

    def entries() -> set[Path]:
        return set(prompts.glob("*.safetensors"))

    assert encoded(run(portal, OLDEST))
    (oldest,) = entries()
    size = oldest.stat().st_size  # every demo prompt's entry has this size
    assert 2 * size <= budget < 3 * size, "the budget holds two entries"
    assert encoded(run(portal, MIDDLE))
    (middle,) = entries() - {oldest}
    third = run(portal, NEWEST)
    (newest,) = entries() - {oldest, middle}

    assert entries() == {middle, newest}, "the least recently used prompt's entry went"
    assert cached_bytes(portal) <= budget
    runner_log = (portal.job_dir(third["id"]) / "runner.log").read_text()
    assert f"cache budget: removed {oldest} ({size} bytes" in runner_log
    assert f"over AVP_CACHE_GB={BUDGET_GB:g}" in runner_log

    assert not encoded(run(portal, NEWEST)), "the newest prompt stayed"
    assert encoded(run(portal, OLDEST)), "the oldest prompt's entry had gone"
    assert entries() == {newest, oldest}, "the newest was used lately: the middle one went instead"
    assert cached_bytes(portal) <= budget
