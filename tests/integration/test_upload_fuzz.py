"""Fuzzing POST /api/uploads on a real portal: random and mutated uploads never get a 5xx.

Hypothesis sends random bytes, valid images with bytes flipped, inserted, cut or spliced,
hostile filenames, broken multipart envelopes and wrong content types. Every answer must be
201, 400, 413 or 415; afterwards nothing outside the uploads directory has changed, no
temporary file is left, and every 201 left exactly its two files.

AVP_UPLOAD_FUZZ_EXAMPLES sets the number of uploads (default 2000, about 15 s on a 2-core machine).
"""

from __future__ import annotations

import os
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import upload_corpus as corpus
from tests.portal import NO_JOBS, Portal, prepare_data_dir

FUZZ_EXAMPLES = int(os.environ.get("AVP_UPLOAD_FUZZ_EXAMPLES", "2000"))
ANSWERS = {201, 400, 413, 415}

SEEDS = [
    corpus.encode(corpus.photo(24, 16), "PNG"),
    corpus.encode(corpus.photo(24, 16).convert("P"), "PNG"),
    corpus.encode(corpus.photo(24, 16), "JPEG"),
    corpus.encode(corpus.photo(24, 16), "JPEG", progressive=True),
    corpus.encode(corpus.photo(24, 16), "WEBP"),
    corpus.encode(corpus.photo(24, 16), "WEBP", lossless=True),
    corpus.rotated_jpeg(6),
    corpus.jpeg_with_gps(),
    corpus.png_claiming(100_000, 100_000),
    corpus.gif(),
    corpus.SVG,
]


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        match draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"])):
            case "flip" if data:
                data[at] ^= 1 << draw(st.integers(0, 7))
            case "set" if data:
                data[at] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
            case "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=64))
            case "delete":
                del data[at : at + draw(st.integers(1, 64))]
            case "truncate":
                del data[at:]
            case "splice":
                other = draw(st.sampled_from(SEEDS))
                data[at:] = other[draw(st.integers(0, len(other) - 1)) :]
    return bytes(data)


contents = st.one_of(st.binary(max_size=2048), mutated_images(), st.sampled_from(SEEDS))
filenames = st.one_of(st.text(max_size=300), st.sampled_from(["../../etc/passwd", "a\x00b.png", "..", "/", "\\"]))


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80).map(str.strip)  # h11 rules


@st.composite
def requests(draw) -> tuple[bytes, str]:
    """(body, content type): mostly a well-formed envelope around fuzzed content, sometimes a broken one."""
    filename = draw(filenames).encode("utf-8", "surrogatepass")
    body = corpus.part_head("").replace(b'filename=""', b'filename="' + filename + b'"')
    body += draw(contents) + f"\r\n--{corpus.BOUNDARY}--\r\n".encode()
    content_type = corpus.MULTIPART_TYPE
    match draw(st.sampled_from(["ok"] * 8 + ["mangled envelope", "wrong type", "wrong boundary"])):
        case "mangled envelope":
            cut = draw(st.integers(0, len(body)))
            body = body[:cut] + draw(st.binary(max_size=32)) + body[cut + draw(st.integers(0, 16)) :]
        case "wrong type":
            content_type = draw(st.sampled_from(["image/png", "text/plain", "multipart/form-data", ""]))
        case "wrong boundary":
            content_type = "multipart/form-data; boundary=" + draw(header_text)
    return body, content_type


@pytest.fixture(scope="module")
def fuzz_portal(tmp_path_factory, demo_model_dir):
    root = tmp_path_factory.mktemp("fuzz")
    portal = Portal(data_dir=prepare_data_dir(root / "data", demo_model_dir), env={"AVP_MAX_UPLOAD_MB": "1", **NO_JOBS})
    yield portal.start()
    portal.stop()


def test_random_and_mutated_uploads_never_get_a_5xx(fuzz_portal: Portal) -> None:
    root, uploads_dir = fuzz_portal.data_dir.parent, fuzz_portal.data_dir / "uploads"
    before = corpus.files_outside(root, uploads_dir)
    answers: Counter[int] = Counter()
    client = httpx.Client(base_url=fuzz_portal.base_url, timeout=30)

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests())
    def upload(request: tuple[bytes, str]) -> None:
        body, content_type = request
        headers = {"content-type": content_type} if content_type else {}
        status = client.post("/api/uploads", content=body, headers=headers).status_code
        answers[status] += 1
        assert status in ANSWERS, f"{status} for a {len(body)}-byte upload ({content_type!r})"

    with client:
        upload()

    print(f"{sum(answers.values())} uploads: {dict(sorted(answers.items()))}")
    assert sum(answers.values()) >= FUZZ_EXAMPLES
    assert answers[201] and answers[400] and answers[415], answers
    assert corpus.files_outside(root, uploads_dir) == before
    stored = sorted(path.name for path in uploads_dir.iterdir())
    assert not [name for name in stored if name.startswith(".")], "a temporary file was left"
    assert len(stored) == 2 * answers[201]
