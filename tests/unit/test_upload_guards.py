"""The upload guards' pieces on their own: names, formats, sizes, what is kept."""

from __future__ import annotations

import threading
import time

import anyio
import pytest
from PIL import Image

from app import uploads as uploads_module
from app.disk import DataDisk
from app.store import Store
from app.uploads import MAX_DISPLAY_NAME, UploadRejected, Uploads, decode_image, display_name, fit_for_job, sniff_format
from tests import upload_corpus as corpus


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("../../etc/passwd", ".._.._etc_passwd"), ("a\x00b.png", "ab.png"), ("", "image"), ("фото.png", "фото.png")],
)
def test_a_client_filename_becomes_bounded_printable_text(raw: str, shown: str) -> None:
    assert display_name(raw) == shown
    assert len(display_name("x" * 5000)) == MAX_DISPLAY_NAME


def test_formats_are_recognised_by_their_bytes_alone() -> None:
    assert sniff_format(corpus.encode(corpus.photo(), "WEBP")) == "WEBP"
    assert sniff_format(corpus.encode(corpus.photo(), "JPEG")) == "JPEG"
    assert sniff_format(b"RIFF\0\0\0\0WAVEfmt ") is None
    assert sniff_format(corpus.gif()) is None


def test_a_webp_with_another_file_after_it_is_refused() -> None:
    with pytest.raises(UploadRejected) as refused:
        decode_image(corpus.encode(corpus.photo(), "WEBP") + corpus.HTML)
    assert refused.value.status == 400 and "after the WEBP image" in refused.value.message


def test_a_side_beyond_the_limit_is_too_large_even_with_few_pixels() -> None:
    with pytest.raises(UploadRejected) as refused:
        decode_image(corpus.png_claiming(30_000, 1))
    assert refused.value.status == 413 and "30000 x 1" in refused.value.message


def test_transparency_is_kept_in_the_stored_copy_and_flattened_for_the_job(tmp_path) -> None:
    rgba = Image.new("RGBA", (40, 20), (255, 0, 0, 128))
    kept = decode_image(corpus.encode(rgba, "PNG"))
    assert kept.mode == "RGBA" and not kept.info

    kept.save(tmp_path / "stored.png")
    fitted = fit_for_job(tmp_path / "stored.png", 64, 64)
    assert (fitted.mode, fitted.size) == ("RGB", (64, 64)) and not fitted.info


class DecodeCounter:
    """Wraps the full-size decodes (an upload's, a job image's) and records how many ever ran at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self.most_at_once = 0

    def wrap(self, decode):
        def counted(*args):
            with self._lock:
                self._active += 1
                self.most_at_once = max(self.most_at_once, self._active)
            try:
                time.sleep(0.1)  # room for any other decode allowed to start meanwhile to overlap this one
                return decode(*args)
            finally:
                with self._lock:
                    self._active -= 1

        return counted


def test_uploads_and_job_images_decode_one_at_a_time_however_many_arrive_together(tmp_path, monkeypatch) -> None:
    counter = DecodeCounter()
    monkeypatch.setattr(uploads_module, "decode_image", counter.wrap(decode_image))
    monkeypatch.setattr(uploads_module, "fit_for_job", counter.wrap(fit_for_job))
    store = Store(tmp_path / "portal.sqlite3")
    uploads = Uploads(tmp_path / "uploads", store, max_bytes=2**20, ttl_s=60, disk=DataDisk(tmp_path, 0))
    body = corpus.multipart(corpus.encode(corpus.photo(), "PNG"))

    async def upload():
        chunks = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive():
            return next(chunks)

        return await uploads.receive(corpus.MULTIPART_TYPE, str(len(body)), receive)

    async def together() -> tuple[list, list]:
        first = await upload()
        received, fitted = [], []

        async def one_upload() -> None:
            received.append(await upload())

        async def one_job_image() -> None:
            fitted.append(await uploads.fitted(first, 64, 40))

        async with anyio.create_task_group() as group:
            for _ in range(6):
                group.start_soon(one_upload)
                group.start_soon(one_job_image)
        return received, fitted

    received, fitted = anyio.run(together)
    store.close()

    assert [(u.width, u.height) for u in received] == [(96, 64)] * 6
    assert all(uploads.stored_path(u.id).is_file() and uploads.thumbnail_path(u.id).is_file() for u in received)
    assert [(image.mode, image.size) for image in fitted] == [("RGB", (64, 40))] * 6
    assert counter.most_at_once == 1
