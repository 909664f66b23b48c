"""The upload guards' pieces on their own: names, formats, sizes, what is kept."""

from __future__ import annotations

import pytest
from PIL import Image

from app.uploads import MAX_DISPLAY_NAME, UploadRejected, decode_image, display_name, fit_for_job, sniff_format
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
