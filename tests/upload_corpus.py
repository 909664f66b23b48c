"""Files and requests for the upload tests, all generated here: valid photos and hostile ones.

Also the raw HTTP an honest client would never send (a Content-Length that lies, an endless
chunked body), written to a socket by hand because httpx refuses to send such requests.
"""

from __future__ import annotations

import contextlib
import io
import math
import socket
import struct
import threading
import zlib
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, ImageDraw

from app.uploads import MAX_PIXELS

GPS_IFD = 0x8825
ORIENTATION = 0x0112


def photo(width: int = 96, height: int = 64) -> Image.Image:
    """A picture whose way up can be read from its pixels: red top half, blue bottom half, green left strip."""
    image = Image.new("RGB", (width, height), (30, 60, 220))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, width - 1, height // 2 - 1), fill=(220, 30, 30))
    draw.rectangle((0, 0, width // 8, height - 1), fill=(30, 200, 40))
    return image


def upload_photo(client, width: int = 64, height: int = 64) -> str:
    """A `photo` uploaded through `client` (an httpx client on a portal): its upload id."""
    response = client.post("/api/uploads", files={"file": ("k.png", encode(photo(width, height), "PNG"), "image/png")})
    assert response.status_code == 201, response.text
    return response.json()["upload_id"]


def just_under_the_pixel_limit() -> bytes:
    """A PNG of a few hundred KB that decodes to just under the upload pixel limit (the corpus photo, square)."""
    side = math.isqrt(MAX_PIXELS - 1)
    return encode(photo(side, side), "PNG", compress_level=9)


def encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def jpeg_with_gps() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "PhoneModel 12"
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    return encode(photo(), "JPEG", exif=exif.tobytes(), quality=95)


def rotated_jpeg(orientation: int) -> bytes:
    """What a phone held sideways writes: pixels stored turned, and an EXIF tag saying how to turn them back.

    Orientation 6 means "rotate 90 degrees clockwise to view", so the sensor stored the upright
    picture turned 90 degrees counter-clockwise (PIL's ROTATE_90); 8 is the other way round.
    """
    stored = photo().transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(stored, "JPEG", exif=exif.tobytes(), quality=95)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels (a decompression bomb's calling card)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect width="10" height="10"/></svg>'
HTML = b"<!doctype html><html><body><script>fetch('/api/jobs').then(r => r.text()).then(alert)</script></body></html>"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def gif() -> bytes:
    return encode(photo(), "GIF")


def truncated_jpeg() -> bytes:
    data = encode(photo(256, 256), "JPEG", quality=95)
    return data[: len(data) // 2]


def png_with_html_after() -> bytes:
    """A polyglot: a valid PNG, then an HTML page that a browser sniffing the bytes might run."""
    return encode(photo(), "PNG") + HTML


def html_then_png() -> bytes:
    return HTML + encode(photo(), "PNG")


# ---- requests by hand ---------------------------------------------------------------


BOUNDARY = "avp-test-boundary"
MULTIPART_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def part_head(filename: str = "photo.png") -> bytes:
    """The opening of a multipart body up to where the `file` part's bytes begin."""
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()


def multipart(data: bytes, filename: str = "photo.png") -> bytes:
    """A multipart/form-data body (of MULTIPART_TYPE) with one `file` part."""
    return part_head(filename) + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def raw_upload(port: int, head: bytes, body: Iterable[bytes], timeout: float = 30) -> int:
    """Send a hand-written request (`head` ends with the blank line) and return the response's status.

    The body is sent from another thread while the response is read, as a real client does: a
    server that answers early and closes must not leave this test waiting on a full send buffer.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(head)

        def send_body() -> None:
            try:
                for chunk in body:
                    connection.sendall(chunk)
            except OSError:
                pass  # the server closed the connection: it stopped reading, which is the point

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        response = b""
        while b"\r\n" not in response:
            received = connection.recv(4096)
            if not received:
                break
            response += received
        with contextlib.suppress(OSError):  # already closed by the server
            connection.shutdown(socket.SHUT_RDWR)
        sender.join(timeout)
    status_line = response.split(b"\r\n", 1)[0].split()
    assert len(status_line) >= 2, f"no HTTP response, got {response[:200]!r}"
    return int(status_line[1])


def chunked(parts: Iterable[bytes]) -> Iterable[bytes]:
    for part in parts:
        yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
    yield b"0\r\n\r\n"


def files_outside(root: Path, uploads_dir: Path) -> set[str]:
    """Every file under `root` except those in the uploads directory, as relative paths."""
    return {
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and not path.resolve().is_relative_to(uploads_dir.resolve())
    }
