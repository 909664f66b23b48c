"""POST /api/uploads against a real portal: a hostile corpus, each file refused or kept as it should be.

After every case: no 5xx, nothing written outside the uploads directory, no temporary file
left behind, and for an accepted file a stored copy with no metadata at all.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.uploads import MAX_PIXELS
from tests import upload_corpus as corpus
from tests.portal import Portal, prepare_data_dir

MAX_UPLOAD_MB = 4
FIFTY_MB = 50 * 1024 * 1024


def png_chunk_types(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    kinds, offset = [], 8
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kinds.append(data[offset + 4 : offset + 8])
        offset += 12 + length
    return kinds


def assert_no_metadata(path: Path) -> None:
    """Only pixel data: no eXIf, tEXt, iTXt (XMP), zTXt, tIME or any other ancillary chunk."""
    assert set(png_chunk_types(path)) <= {b"IHDR", b"IDAT", b"IEND"}, png_chunk_types(path)
    with Image.open(path) as image:
        assert not image.getexif() and not image.info.get("xmp")


def assert_upright(image: Image.Image) -> None:
    """The corpus photo's way up: red at the top, blue at the bottom, the green strip on the left."""
    pixels = np.asarray(image.convert("RGB"), dtype=int)
    height, width, _ = pixels.shape
    top, bottom, left = pixels[height // 8, width // 2], pixels[height * 7 // 8, width // 2], pixels[height // 2, 2]
    assert top[0] > 150 and top[2] < 100, f"top should be red, is {top}"
    assert bottom[2] > 150 and bottom[0] < 100, f"bottom should be blue, is {bottom}"
    assert left[1] > 150 and left[0] < 100, f"left strip should be green, is {left}"


@pytest.fixture(scope="module")
def uploads_portal(tmp_path_factory, demo_model_dir):
    """A portal with a small upload limit whose runner fails at once: these tests need job dirs, not videos."""
    root = tmp_path_factory.mktemp("uploads")
    env = {"AVP_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB), "AVP_RUNNER_PYTHON": "false"}
    portal = Portal(data_dir=prepare_data_dir(root / "data", demo_model_dir), env=env).start()
    yield portal
    portal.stop()


class Guarded:
    """Checks around one upload: the file tree outside uploads/ unchanged, no temporary file left."""

    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self.root = portal.data_dir.parent
        self.uploads = portal.data_dir / "uploads"
        self.before = corpus.files_outside(self.root, self.uploads)

    def check(self) -> None:
        assert corpus.files_outside(self.root, self.uploads) == self.before
        # uvicorn may answer a lying request itself (400 for the bytes after the declared length) while
        # the handler is still finishing: give the handler a moment to remove its temporary file.
        deadline = time.monotonic() + 10
        while self.temporary_files() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.temporary_files(), "a temporary file was left"

    def temporary_files(self) -> list[str]:
        return [p.name for p in self.uploads.iterdir() if p.name.startswith(".")]


def upload(portal: Portal, data: bytes, filename: str = "photo.png") -> httpx.Response:
    with portal.client() as client:
        return client.post("/api/uploads", files={"file": (filename, data, "image/png")})


VALID = {
    "png": lambda: corpus.encode(corpus.photo(), "PNG"),
    "jpeg": lambda: corpus.encode(corpus.photo(), "JPEG"),
    "webp": lambda: corpus.encode(corpus.photo(), "WEBP", lossless=True),
    "jpeg with GPS EXIF": corpus.jpeg_with_gps,
}

REFUSED = {
    "svg named .png": (lambda: corpus.SVG, 415, "not a JPEG, PNG or WebP"),
    "html named .png": (lambda: corpus.HTML, 415, "not a JPEG, PNG or WebP"),
    "gif named .png": (corpus.gif, 415, "not a JPEG, PNG or WebP"),
    "pdf named .png": (lambda: corpus.PDF, 415, "not a JPEG, PNG or WebP"),
    "html before a png": (corpus.html_then_png, 415, "not a JPEG, PNG or WebP"),
    "png with html after": (corpus.png_with_html_after, 400, "other data after the PNG"),
    "truncated jpeg": (corpus.truncated_jpeg, 400, "truncated or corrupt"),
    "empty file": (lambda: b"", 415, "not a JPEG, PNG or WebP"),
    "png header claiming 100000 x 100000": (
        lambda: corpus.png_claiming(100_000, 100_000),
        413,
        "image too large: 100000 x 100000",
    ),
    "png header claiming 0 x 0": (lambda: corpus.png_claiming(0, 0), 400, "truncated or corrupt"),
}


@pytest.mark.parametrize("name", VALID)
def test_a_valid_image_is_stored_as_a_metadata_free_copy(uploads_portal: Portal, name: str) -> None:
    guard = Guarded(uploads_portal)
    response = upload(uploads_portal, VALID[name]())

    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (96, 64)
    stored = guard.uploads / f"{body['upload_id']}.png"
    assert_no_metadata(stored)
    with uploads_portal.client() as client:
        thumbnail = client.get(body["thumbnail_url"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert thumbnail.headers["x-content-type-options"] == "nosniff"
    with Image.open(guard.uploads / f"{body['upload_id']}.thumb.jpg") as thumb:
        assert not thumb.getexif()
    guard.check()


@pytest.mark.parametrize("name", REFUSED)
def test_a_hostile_or_broken_file_is_refused_with_a_plain_message(uploads_portal: Portal, name: str) -> None:
    make, status, message = REFUSED[name]
    guard = Guarded(uploads_portal)
    stored_before = sorted(guard.uploads.iterdir())

    response = upload(uploads_portal, make())

    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert response.json()["errors"][0]["field"] == "file"
    assert sorted(guard.uploads.iterdir()) == stored_before, "a refused file left something in uploads/"
    guard.check()


@pytest.mark.parametrize("orientation", [6, 8])
def test_a_sideways_phone_photo_is_stored_upright(uploads_portal: Portal, orientation: int) -> None:
    response = upload(uploads_portal, corpus.rotated_jpeg(orientation), "IMG_0001.JPG")

    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (96, 64), "width and height are the upright ones"
    stored = uploads_portal.data_dir / "uploads" / f"{body['upload_id']}.png"
    assert_no_metadata(stored)
    with Image.open(stored) as image:
        assert_upright(image)


@pytest.mark.parametrize(
    "filename",
    ["../../etc/passwd", "a\x00b.png", "x" * 5000 + ".png", "фото 写真 🎞️.png", '"><script>alert(1)</script>.png'],
    ids=["traversal", "nul", "very long", "non-ascii", "html"],
)
def test_the_client_filename_is_display_text_only(uploads_portal: Portal, filename: str) -> None:
    guard = Guarded(uploads_portal)
    body = corpus.multipart(corpus.encode(corpus.photo(), "PNG"), filename="")
    body = body.replace(b'filename=""', b'filename="' + filename.encode() + b'"')

    with uploads_portal.client() as client:
        response = client.post("/api/uploads", content=body, headers={"content-type": corpus.MULTIPART_TYPE})

    assert response.status_code in (201, 400), response.text
    if response.status_code == 201:
        shown = response.json()["filename"]
        assert len(shown) <= 200 and "/" not in shown and "\x00" not in shown
        assert sorted(p.name for p in guard.uploads.glob(response.json()["upload_id"] + "*")) == [
            f"{response.json()['upload_id']}.png",
            f"{response.json()['upload_id']}.thumb.jpg",
        ]
    assert not (Path("/etc/passwd").stat().st_mtime > time.time() - 60)
    guard.check()


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(uploads_portal: Portal) -> None:
    guard = Guarded(uploads_portal)
    head = (
        f"POST /api/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {corpus.MULTIPART_TYPE}\r\n"
        f"Content-Length: {FIFTY_MB}\r\n\r\n"
    ).encode()

    assert corpus.raw_upload(uploads_portal.port, head, body=[]) == 413  # answered with no body sent at all
    guard.check()


def test_a_content_length_that_lies_low_cannot_smuggle_a_large_body(uploads_portal: Portal) -> None:
    guard = Guarded(uploads_portal)
    head = (
        "POST /api/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: {corpus.MULTIPART_TYPE}\r\nContent-Length: 1024\r\n\r\n"
    ).encode()
    body = [corpus.part_head()] + [b"\0" * (1024 * 1024)] * 50  # the part never ends within the 1 KB declared

    status = corpus.raw_upload(uploads_portal.port, head, body)

    # 400 from the handler (the declared 1 KB ended mid-file) or from uvicorn (the bytes after it are no request)
    assert status == 400
    assert uploads_portal.process.poll() is None
    guard.check()


def test_a_chunked_body_without_length_is_cut_off_at_the_limit(uploads_portal: Portal) -> None:
    guard = Guarded(uploads_portal)
    head = (
        "POST /api/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: {corpus.MULTIPART_TYPE}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    began = time.monotonic()
    body = corpus.chunked([corpus.part_head()] + [b"\0" * (1024 * 1024)] * 50)
    status = corpus.raw_upload(uploads_portal.port, head, body)

    assert status == 413
    assert time.monotonic() - began < 20
    guard.check()


def test_a_body_that_is_not_multipart_is_refused(uploads_portal: Portal) -> None:
    with uploads_portal.client() as client:
        png = corpus.encode(corpus.photo(), "PNG")
        raw = client.post("/api/uploads", content=png, headers={"content-type": "image/png"})
        no_file = client.post("/api/uploads", data={"other": "field"}, files={"x": ("a.png", b"123")})
    assert raw.status_code == 415 and "multipart/form-data" in raw.json()["detail"]
    assert no_file.status_code == 400 and "'file'" in no_file.json()["detail"]


# ---- uploads in jobs -------------------------------------------------------------------


def test_a_job_gets_the_upload_normalised_to_its_size_upright_and_without_metadata(uploads_portal: Portal) -> None:
    upload_id = upload(uploads_portal, corpus.rotated_jpeg(6)).json()["upload_id"]

    job = uploads_portal.submit(image_upload_id=upload_id, image_strength=0.8, width=256, height=160, mode="quality")

    assert job["request"]["image_upload_id"] == upload_id and job["request"]["image_strength"] == 0.8
    job_dir = uploads_portal.job_dir(job["id"])
    assert (job_dir / "job.json").read_bytes().count(b'"image_file":"image.png"') == 1
    image_path = job_dir / "image.png"
    assert_no_metadata(image_path)
    with Image.open(image_path) as image:
        assert (image.mode, image.size) == ("RGB", (256, 160))
        assert_upright(image)
    uploads_portal.cancel(job["id"])


@pytest.mark.parametrize("upload_id", ["f" * 32, "../../etc/passwd", "", "x" * 5000])
def test_an_unknown_upload_id_is_a_400_naming_the_field(uploads_portal: Portal, upload_id: str) -> None:
    with uploads_portal.client() as client:
        response = client.post("/api/jobs", json={"prompt": "a red ball", "image_upload_id": upload_id})
    assert response.status_code == 400, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["image_upload_id"]


def test_unused_uploads_expire_and_used_ones_stay_until_their_job_is_deleted(make_portal) -> None:
    portal = make_portal(AVP_UPLOAD_TTL_S="1", AVP_RUNNER_PYTHON="false")
    uploads_dir = portal.data_dir / "uploads"
    unused = upload(portal, corpus.encode(corpus.photo(), "PNG")).json()["upload_id"]
    used = upload(portal, corpus.encode(corpus.photo(), "PNG")).json()["upload_id"]
    job = portal.submit(image_upload_id=used)
    portal.wait(job["id"])

    time.sleep(2.5)
    assert not list(uploads_dir.glob(unused + "*")), "the unused upload was swept"
    assert len(list(uploads_dir.glob(used + "*"))) == 2, "the used upload stays"
    with portal.client() as client:
        again = client.post("/api/jobs", json={"prompt": "a red ball", "image_upload_id": unused})
        assert again.status_code == 400 and again.json()["errors"][0]["field"] == "image_upload_id"
        assert client.get(f"/api/uploads/{unused}/thumbnail").status_code == 404

        assert client.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert not portal.job_dir(job["id"]).exists(), "the job's normalised image went with it"
    time.sleep(1.5)
    assert not list(uploads_dir.glob(used + "*")), "unused once its job was deleted, then swept"


def test_uploads_sent_together_all_succeed_in_the_memory_of_one_decode(make_portal) -> None:
    """Eight images that each decode to just under the pixel limit, at once: the web process holds one at a time."""
    portal = make_portal(AVP_RUNNER_PYTHON="false", AVP_SPARE_RUNNER="off")
    png = corpus.just_under_the_pixel_limit()
    assert upload(portal, corpus.encode(corpus.photo(), "PNG")).status_code == 201  # every import done first
    before, _ = portal.memory_mb()
    with portal.client(timeout=300) as client, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: client.post("/api/uploads", files={"file": (f"{i}.png", png)}), range(8)))
    _, peak = portal.memory_mb()

    assert [r.status_code for r in responses] == [201] * 8, [r.text for r in responses]
    assert {(r.json()["width"], r.json()["height"]) for r in responses} == {Image.open(io.BytesIO(png)).size}
    one_image_mb = MAX_PIXELS * 3 / 2**20  # RGB at the limit; a decode holds it at most twice, while turning it
    assert peak - before < 3 * one_image_mb, f"resident memory rose {peak - before:.0f} MB for 8 uploads at once"
