"""The home page's job list as a grid of cards, against a real portal whose history is written into its SQLite file:
filters, prompt search, Load more, refused parameters, and the list's stream under a filter."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import sse_names
from app.job_list import PAGE_SIZE
from tests.job_history import seed_jobs
from tests.portal import Portal, prepare_data_dir

BALLS = 30
SQUARES = 5
LITERALS = ["50% off_sale", "5000 offsale", "a\\b back"]  # LIKE's wildcards and its escape, as plain characters


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Iterator[tuple[Portal, dict]]:
    data_dir = prepare_data_dir(tmp_path_factory.mktemp("gallery") / "data", demo_model_dir)
    history = (
        [{"prompt": f"a red ball bouncing {i}"} for i in range(BALLS)]
        + [{"prompt": f"a Blue square {i}", "status": "failed", "mode": "fast"} for i in range(SQUARES)]
        + [{"prompt": p, "status": "cancelled", "model": "gone"} for p in LITERALS]
    )
    ids = seed_jobs(data_dir / "portal.sqlite3", history)
    portal = Portal(data_dir=data_dir, env={"AVP_SPARE_RUNNER": "off"}).start()
    made = {"balls": ids[:BALLS], "squares": ids[BALLS : BALLS + SQUARES], "literals": ids[BALLS + SQUARES :]}
    yield portal, made
    portal.stop()


def cards(html: str) -> list[str]:
    """The job ids of the cards in a page or fragment, in order."""
    return re.findall(r'<article id="job-([0-9a-f]{32})"', html)


def get(portal: Portal, path: str, **params: str):
    with portal.client() as c:
        return c.get(path, params=params)


def test_the_first_page_is_the_newest_jobs_as_cards_with_posters_and_a_load_more_link(gallery) -> None:
    portal, made = gallery
    page = get(portal, "/")
    assert page.status_code == 200
    newest_first = [*reversed(made["literals"]), *reversed(made["squares"]), *reversed(made["balls"])]
    assert cards(page.text) == newest_first[:PAGE_SIZE]
    ball = made["balls"][-1]
    card = re.search(rf'<article id="job-{ball}".*?</article>', page.text, re.S)[0]
    assert f'src="/api/jobs/{ball}/poster"' in card and f'data-video="/api/jobs/{ball}/video"' in card
    assert 'width="256" height="160"' in card, "the poster's box keeps the clip's aspect"
    meta = re.sub(r"<[^>]+>|\s+", " ", re.search(r'<p class="meta">(.*?)</p>', card, re.S)[1]).split()
    assert meta == ["demo", "·", "quality", "·", "256x160", "·", "1.0", "s"], "model, mode, size, 25 frames at 24 fps"
    square = re.search(rf'<article id="job-{made["squares"][0]}".*?</article>', page.text, re.S)[0]
    assert "/poster" not in square and "data-video" not in square, "no clip, no poster"
    assert 'src="/static/gallery.js"' in page.text and 'sse-connect="/events/jobs"' in page.text
    seq_link = re.search(r'id="load-more-link" href="/\?before=(\d+)"', page.text)
    assert seq_link, "a plain link for a browser without script"
    assert f'hx-get="/fragments/jobs?before={seq_link[1]}"' in page.text


def test_load_more_pages_on_from_the_last_card_until_none_are_left(gallery) -> None:
    portal, made = gallery
    total = len(made["balls"]) + len(made["squares"]) + len(made["literals"])
    seen = cards(get(portal, "/").text)
    more = get(portal, "/fragments/jobs", before=re.search(r"before=(\d+)", get(portal, "/").text)[1])
    assert more.status_code == 200
    seen += cards(more.text)
    assert len(seen) == total == len(set(seen)), "every job once, none twice"
    assert 'id="load-more" class="load-more" hx-swap-oob="true"' in more.text and "load-more-link" not in more.text
    # The same page without script: the whole page, with that page of cards, and the stream for it.
    plain = get(portal, "/", before=re.search(r"before=(\d+)", get(portal, "/").text)[1])
    assert cards(plain.text) == seen[PAGE_SIZE:] and 'sse-connect="/events/jobs?before=' in plain.text


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "failed"}, "squares"),
        ({"status": "cancelled"}, "literals"),
        ({"q": "BLUE square"}, "squares"),  # case-insensitive
        ({"q": "blue", "status": "succeeded"}, None),
        ({"model": "demo", "status": "failed", "q": "square"}, "squares"),
    ],
)
def test_filters_and_search_pick_the_jobs_listed(gallery, params: dict[str, str], expected: str | None) -> None:
    portal, made = gallery
    page = get(portal, "/", **params)
    assert page.status_code == 200
    assert cards(page.text) == ([*reversed(made[expected])] if expected else [])
    if expected is None:
        assert "No job matches these filters." in page.text
    for name, value in params.items():
        assert f"{name}={value.replace(' ', '+')}" in page.text, "the stream and links keep the filters"


@pytest.mark.parametrize(("search", "index"), [("50%", 0), ("f_s", 0), ("a\\b", 2), ("%", 0)])
def test_the_search_takes_likes_wildcards_as_plain_characters(gallery, search: str, index: int) -> None:
    portal, made = gallery
    assert cards(get(portal, "/", q=search).text) == [made["literals"][index]]


def test_a_model_filter_leaves_out_other_models_jobs(gallery) -> None:
    portal, made = gallery
    first = get(portal, "/", model="demo").text
    after = re.search(r'id="load-more-link" href="/\?model=demo&amp;before=(\d+)"', first)[1]
    listed = cards(first) + cards(get(portal, "/fragments/jobs", model="demo", before=after).text)
    assert sorted(listed) == sorted(made["balls"] + made["squares"])


@pytest.mark.parametrize(
    ("params", "field", "says"),
    [
        ({"status": "done"}, "status", "must be one of cancelled, failed"),
        ({"model": "gone"}, "model", "models (demo)"),
        ({"q": "x" * 201}, "q", "200 or fewer"),
        ({"before": "abc"}, "before", "Load more"),
        ({"before": "9" * 30}, "before", "Load more"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it_on_the_page_the_fragment_and_the_stream(
    gallery, params: dict[str, str], field: str, says: str
) -> None:
    portal, _ = gallery
    page = get(portal, "/", **params)
    assert page.status_code == 400 and page.headers["content-type"].startswith("text/html")
    error = re.search(r'id="filter-error">(.*?)</p>', page.text, re.S)[1]
    assert error.startswith(f"{field}: ") and says in error
    assert "<article" not in page.text and "sse-connect" not in page.text
    for path in ("/fragments/jobs", "/events/jobs"):
        answer = get(portal, path, **params)
        assert answer.status_code == 400, path
        (problem,) = answer.json()["errors"]
        assert problem["field"] == field and says in problem["message"]


def test_an_empty_parameter_counts_as_absent(gallery) -> None:
    """What the filter form sends for "all" and an empty search box."""
    portal, _ = gallery
    assert cards(get(portal, "/", status="", model="", q="").text) == cards(get(portal, "/").text)


def test_the_stream_sends_the_filtered_page_then_takes_a_new_job_only_where_it_matches(gallery) -> None:
    portal, made = gallery
    failed = portal.stream("/events/jobs?status=failed")
    zebras = portal.stream("/events/jobs?q=ZEBRA")
    first = next(failed)
    assert first.event == sse_names.JOB_LIST and first.data.startswith('<div id="job-cards" hx-swap-oob="innerHTML">')
    assert cards(first.data) == [*reversed(made["squares"])] and 'id="load-more"' in first.data
    assert cards(next(zebras).data) == []

    job_id = portal.submit(prompt="a zebra clip", steps=1)["id"]

    def until_it_ends(stream: Iterator) -> list[str]:
        pushed = []
        for message in stream:
            assert message.event == sse_names.JOB_ROW
            pushed.append(message.data)
            if "status-succeeded" in message.data:
                return pushed
        raise AssertionError("the stream ended")

    to_zebras, to_failed = until_it_ends(zebras), until_it_ends(failed)
    zebras.close()
    failed.close()
    assert to_zebras[0].startswith(f'<div hx-swap-oob="afterbegin:#job-cards"><article id="job-{job_id}"')
    assert not any("afterbegin" in html for html in to_failed), "a new job the filter leaves out is not inserted"
    # A change of a card is sent to every list: htmx replaces it where the page shows it, and drops it elsewhere.
    assert all(html.startswith(f'<article id="job-{job_id}"') for html in to_zebras[1:] + to_failed)
    assert 'hx-swap-oob="true"' in to_failed[-1]
