"""The pages' own streams, against a real portal: rendered fragments for htmx's sse-swap, not the API's JSON."""

from __future__ import annotations

import json
import re

from app import sse_names
from tests.portal import Portal


def test_the_job_page_stream_pushes_its_panel_on_each_change_then_ends_and_a_reconnect_does_not_replay(
    portal: Portal,
) -> None:
    job_id = portal.submit(steps=3)["id"]
    pushed = list(portal.stream(f"/events/jobs/{job_id}"))
    *panels, end = pushed
    assert {p.event for p in panels} == {sse_names.JOB_PANEL}
    assert end.event == sse_names.END and json.loads(end.data) == {"type": "end", "status": "succeeded"}
    ids = [int(p.id) for p in panels]
    assert ids == sorted(set(ids)), "each panel carries the id of the event it shows, for Last-Event-ID"
    assert all(p.data.lstrip().startswith('<div id="job-panel"') for p in panels)
    assert 'id="job-video"' in panels[-1].data and 'id="cancel-button"' not in panels[-1].data
    assert any('id="cancel-button"' in p.data for p in panels), "the panel lived while the job ran"

    stored = list(portal.events(job_id))[:-1]
    memory = [e for e in stored if e.event == "memory"]
    assert memory and len(panels) <= len(stored) - len(memory), "a memory line changes nothing the panel shows"
    newest = int(stored[-1].id)
    assert ids[-1] == newest

    # A page that reconnects gets the panel once, as it stands now (not each event it missed), then `end`.
    again = list(portal.stream(f"/events/jobs/{job_id}", last_event_id=2))
    assert [(e.event, e.id) for e in again] == [(sse_names.JOB_PANEL, str(newest)), (sse_names.END, str(newest))]
    assert again[0].data == panels[-1].data
    up_to_date = list(portal.stream(f"/events/jobs/{job_id}", last_event_id=newest))
    assert [e.event for e in up_to_date] == [sse_names.END], "nothing to catch up on: it just ends"


def test_the_job_list_stream_sends_the_list_then_a_new_job_on_top_and_a_card_only_when_it_shows_something_new(
    portal: Portal,
) -> None:
    older = portal.submit(steps=1, prompt="an older clip")["id"]
    portal.wait(older)
    rows = portal.stream("/events/jobs")
    first = next(rows)
    assert first.event == sse_names.JOB_LIST
    assert first.data.startswith('<div id="job-cards" hx-swap-oob="innerHTML">') and f'id="job-{older}"' in first.data

    job_id = portal.submit(steps=4, prompt="a <new> clip")["id"]
    shown: list[str] = []
    for pushed in rows:
        assert pushed.event == sse_names.JOB_ROW
        assert f'id="job-{older}"' not in pushed.data, "only the job that changed"
        shown.append(pushed.data)
        if "status-succeeded" in pushed.data:
            break
    rows.close()

    new, *updates = shown
    assert new.startswith(f'<div hx-swap-oob="afterbegin:#job-cards"><article id="job-{job_id}"')
    assert "a &lt;new&gt; clip" in new
    assert all(
        u.startswith(f'<article id="job-{job_id}" class="job card status-') and 'hx-swap-oob="true"' in u
        for u in updates
    )
    assert len(set(shown)) == len(shown), "no row is sent twice the same"

    def card_shows(html: str) -> tuple[str, ...]:
        """Its status, stage (only while it runs) and whole percent (only while unfinished)."""
        stage, percent = (re.search(rf'<span class="{c}">([\w ]+?)%?</span>', html) for c in ("stage", "percent"))
        return re.search(r'<span class="badge">(\w+)</span>', html)[1], *(m[1] if m else "" for m in (stage, percent))

    shows = [card_shows(html) for html in shown]
    assert all(a != b for a, b in zip(shows, shows[1:], strict=False)), shows
    assert shows[0] == ("queued", "", "0") and shows[-1] == ("succeeded", "", "")
    assert ("running", "denoise") in {show[:2] for show in shows}
    assert len(updates) < len(list(portal.events(job_id))), "steps within one whole percent, memory lines: no row"
