"""Image uploads: three independent guards, then normalisation (README, "Using it").

1. Size: a declared Content-Length over the limit is refused before the body is read, and the
   bytes actually received are counted while they stream to a temporary file, so a lying or
   absent Content-Length (chunked bodies) is cut off the moment it passes the limit.
2. Type: JPEG, PNG or WebP recognised from the bytes (magic numbers, then Pillow verifies and
   fully decodes); the filename and the declared content type are never trusted. The width x
   height limit is checked from the header, before any pixel is decoded.
3. Location: every file has a name the server makes, and every path is resolved and checked to
   lie inside the uploads directory before use. The client's filename is display text only.

What is kept is not the client's file but a re-encoded one (upright, no metadata), so nothing
the client smuggled into a valid image (EXIF GPS, a polyglot's payload) survives.
"""

from __future__ import annotations

import io
import logging
import os
import re
import secrets
import struct
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec
from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header
from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from app.disk import DataDisk, DiskFull
from app.store import Store
from contract.disk import is_disk_full

log = logging.getLogger(__name__)

FILE_FIELD = "file"
MULTIPART_ENVELOPE = 64 * 1024  # boundaries, part headers and small fields around the file
MAX_PIXELS = 50_000_000  # a 48 MP phone photo fits; decoding one costs ~150 MB of RGB
MAX_SIDE = 20_000
# Full-size images decoded at once, however many uploads and submits arrive together: each holds
# 150-350 MB at the pixel limit (README, "Using it"), and the rest wait their turn.
DECODES_AT_ONCE = 1
THUMBNAIL_SIDE = 256
MAX_DISPLAY_NAME = 200
STORED_SUFFIX = ".png"  # lossless: the stored copy loses nothing but the metadata
THUMBNAIL_SUFFIX = ".thumb.jpg"
INCOMING_PREFIX = ".incoming-"
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")

# Magic numbers, and the Pillow plugin opened for each, so no other decoder ever sees the bytes.
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_FORMATS: dict[str, type[Image.Image]] = {
    "JPEG": JpegImagePlugin.JpegImageFile,
    "PNG": PngImagePlugin.PngImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
}


class UploadRejected(Exception):
    """An upload the portal refuses: an HTTP status and a message the user can act on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Upload(msgspec.Struct, frozen=True):
    id: str
    filename: str  # the client's name, display text only
    width: int
    height: int
    created_at: float


def sniff_format(head: bytes) -> str | None:
    """The image format the first bytes announce, if it is one we accept."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(_PNG_MAGIC):
        return "PNG"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def display_name(raw: str | None) -> str:
    """The client's filename reduced to printable text of bounded length (escaped again when shown)."""
    name = "".join(ch for ch in unicodedata.normalize("NFC", raw or "") if unicodedata.category(ch)[0] != "C")
    name = name.replace("/", "_").replace("\\", "_").strip() or "image"
    return name[:MAX_DISPLAY_NAME]


def _trailing_bytes(data: bytes, image_format: str) -> int:
    """How many bytes follow the image's own end: a polyglot hides its second format there.

    PNG ends at IEND and a WebP RIFF declares its size, so extra bytes there are refused.
    JPEG is not checked: phones append secondary images after the end marker, and the
    stored copy is re-encoded anyway, so nothing after the image is ever kept.
    """
    if image_format == "PNG":
        offset = len(_PNG_MAGIC)
        while offset + 8 <= len(data):
            (length,) = struct.unpack(">I", data[offset : offset + 4])
            kind = data[offset + 4 : offset + 8]
            offset += 12 + length
            if kind == b"IEND":
                return max(len(data) - offset, 0)
        return 0
    if image_format == "WEBP":
        (riff_size,) = struct.unpack("<I", data[4:8])
        return max(len(data) - (8 + riff_size + (riff_size & 1)), 0)
    return 0


def decode_image(data: bytes) -> Image.Image:
    """The upright, metadata-free pixels of one JPEG, PNG or WebP image of a sane size.

    Raises UploadRejected with 415 (not an accepted type), 413 (too many pixels) or 400
    (corrupt, truncated, or carrying another file after the image).
    """
    image_format = sniff_format(data[:16])
    if image_format is None:
        raise UploadRejected(415, "not a JPEG, PNG or WebP image; upload a photo or picture in one of those formats")
    opener = _FORMATS[image_format]
    try:
        # The plugin's own constructor reads only the header: the size is known before any decoding,
        # and Pillow's global bomb check (which would refuse without naming the size) is not involved.
        width, height = opener(io.BytesIO(data)).size
        if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
            raise UploadRejected(
                413, f"image too large: {width} x {height}; the limit is {MAX_PIXELS // 1_000_000} megapixels"
            )
        if _trailing_bytes(data, image_format):
            raise UploadRejected(
                400, f"the file carries other data after the {image_format} image; send the image alone"
            )
        opener(io.BytesIO(data)).verify()
        with opener(io.BytesIO(data)) as image:
            image.load()
            return upright(image)
    except UploadRejected:
        raise
    except Exception:  # any failure to decode untrusted bytes is the file's fault, not ours
        log.debug("refused a %s upload that does not decode", image_format, exc_info=True)
        raise UploadRejected(
            400, f"the {image_format} image is truncated or corrupt; export it again and retry"
        ) from None


def upright(image: Image.Image) -> Image.Image:
    """The pixels turned as EXIF says, in a plain image that carries no metadata at all.

    Each step replaces the pixels before it instead of copying them, so a full-size image is held
    twice only while it is turned or converted, and the plain image shares the final pixels.
    """
    ImageOps.exif_transpose(image, in_place=True)
    mode = "RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    bare = image._new(image.im)  # Pillow's own wrapper of the same pixels: no file, no EXIF
    bare.info = {}
    return bare


def fit_for_job(source: Path, width: int, height: int) -> Image.Image:
    """The stored upload (upright, no metadata: we wrote it) cropped and scaled to the job's size, in RGB."""
    with Image.open(source, formats=["PNG"]) as stored:
        stored.load()
        pixels = stored if stored.mode == "RGB" else stored.convert("RGB")
        fitted = ImageOps.fit(pixels, (width, height), method=Image.Resampling.LANCZOS)
    fitted.info = {}
    return fitted


def write_job_image(image: Image.Image, destination: Path) -> None:
    """Write a job's conditioning image (from `Uploads.fitted`) as the PNG its runner reads."""
    _save_atomically(image, destination, "PNG")


class Uploads:
    """Receives, stores, finds, normalises and expires uploads under one directory."""

    def __init__(self, directory: Path, store: Store, max_bytes: int, ttl_s: float, disk: DataDisk) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory.resolve()
        self._store = store
        self.max_bytes = max_bytes
        self.disk = disk
        self.ttl_s = ttl_s
        self._decoding = anyio.CapacityLimiter(DECODES_AT_ONCE)
        for leftover in self.directory.glob(INCOMING_PREFIX + "*"):  # a crash mid-upload left it
            leftover.unlink(missing_ok=True)

    # ---- receiving ---------------------------------------------------------------------

    async def receive(
        self, content_type: str | None, content_length: str | None, receive: Callable[[], Awaitable[Any]]
    ) -> Upload:
        """Read a multipart body from the ASGI `receive`, keep its `file` part if it is an image.

        A body that would eat into AVP_MIN_FREE_MB, or a write that finds no space, is refused with 507.
        """
        body_limit = self.max_bytes + MULTIPART_ENVELOPE
        declared = _declared_length(content_length)
        if declared is not None and declared > body_limit:
            raise UploadRejected(413, self._too_large(f"the request declares {declared} bytes"))
        boundary = _boundary(content_type)
        try:
            self.disk.check_room(self.max_bytes if declared is None else declared, "the upload")
            incoming = self._path(INCOMING_PREFIX + secrets.token_hex(16))
            try:
                filename = await self._stream_file_part(boundary, declared, self._body(receive, body_limit), incoming)
                data = await anyio.Path(incoming).read_bytes()
            finally:
                await anyio.Path(incoming).unlink(missing_ok=True)
            return await self._keep(data, display_name(filename))
        except DiskFull as refused:
            raise UploadRejected(507, refused.message) from None
        except Exception as error:
            if is_disk_full(error):
                raise UploadRejected(507, self.disk.full("the upload").message) from error
            raise

    async def _stream_file_part(
        self, boundary: str, declared: int | None, chunks: AsyncIterator[bytes], target: Path
    ) -> str | None:
        """Write the `file` part's bytes to `target` as they arrive; its filename as sent."""
        parser = PushMultipartParser(boundary, content_length=-1 if declared is None else declared, strict=True)
        found: MultipartSegment | None = None
        writing = False
        async with await anyio.open_file(target, "xb") as out:
            try:
                async for chunk in chunks:
                    for event in parser.parse(chunk):
                        if isinstance(event, MultipartSegment):
                            writing = event.name == FILE_FIELD
                            if writing and found is not None:
                                raise UploadRejected(400, "send one file per upload")
                            found = event if writing else found
                        elif event and writing:
                            if found.bytes_received > self.max_bytes:
                                raise UploadRejected(413, self._too_large(f"the file passed {self.max_bytes} bytes"))
                            await out.write(event)
                parser.close()  # raises if the body ended before the multipart stream did
            except MultipartError as error:
                raise UploadRejected(400, f"the body is not a complete multipart/form-data upload ({error})") from None
        if found is None:
            raise UploadRejected(400, f"no file in the upload; send it in the multipart field {FILE_FIELD!r}")
        return found.filename

    async def _body(self, receive: Callable[[], Awaitable[Any]], limit: int) -> AsyncIterator[bytes]:
        """The request body as it arrives, refused with 413 the moment it passes `limit` bytes."""
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise UploadRejected(400, "the client went away before the upload finished")
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > limit:
                raise UploadRejected(413, self._too_large(f"more than {limit} bytes were sent"))
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    def _too_large(self, what: str) -> str:
        return f"upload too large: {what}; the limit is {self.max_bytes / 2**20:g} MB"

    async def _keep(self, data: bytes, filename: str) -> Upload:
        """Decode the bytes, store an upright metadata-free copy and a thumbnail, record the upload."""
        upload_id = uuid.uuid4().hex
        stored, thumbnail = self.stored_path(upload_id), self.thumbnail_path(upload_id)
        try:
            width, height = await anyio.to_thread.run_sync(
                self._write_files, data, stored, thumbnail, limiter=self._decoding
            )
            upload = Upload(id=upload_id, filename=filename, width=width, height=height, created_at=time.time())
            await self._store.call(self._store.create_upload, *msgspec.structs.astuple(upload))
        except BaseException:
            stored.unlink(missing_ok=True)
            thumbnail.unlink(missing_ok=True)
            raise
        return upload

    @staticmethod
    def _write_files(data: bytes, stored: Path, thumbnail: Path) -> tuple[int, int]:
        image = decode_image(data)
        size = image.size
        _save_atomically(image, stored, "PNG")
        if image.mode != "RGB":
            image = image.convert("RGB")
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)  # in place: full size goes
        _save_atomically(image, thumbnail, "JPEG", quality=85)
        return size

    # ---- finding, using, expiring ------------------------------------------------------

    def _path(self, name: str) -> Path:
        """A path in the uploads directory, refused if it resolves anywhere else."""
        path = (self.directory / name).resolve()
        if not path.is_relative_to(self.directory) or path == self.directory:
            raise ValueError("upload path outside the uploads directory")
        return path

    def stored_path(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise ValueError("not an upload id")
        return self._path(upload_id + STORED_SUFFIX)

    def thumbnail_path(self, upload_id: str) -> Path:
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise ValueError("not an upload id")
        return self._path(upload_id + THUMBNAIL_SUFFIX)

    async def find(self, upload_id: str) -> Upload | None:
        """The upload, if the id is one the server made and it has not expired."""
        if not _UPLOAD_ID.fullmatch(upload_id):
            return None
        row = await self._store.call(self._store.get_upload, upload_id, time.time() - self.ttl_s)
        if row is None or not self.stored_path(upload_id).is_file():
            return None
        return Upload(*row)

    async def fitted(self, upload: Upload, width: int, height: int) -> Image.Image:
        """The upload cropped and scaled to a job's size, decoded in its turn with the uploads' decodes.

        Raises FileNotFoundError if the upload was swept away meanwhile.
        """
        source = self.stored_path(upload.id)
        return await anyio.to_thread.run_sync(fit_for_job, source, width, height, limiter=self._decoding)

    async def sweep(self) -> int:
        """Remove uploads no job uses once they are older than the time-to-live; how many went."""
        expired = await self._store.call(self._store.expired_uploads, time.time() - self.ttl_s)
        for upload_id in expired:
            for path in (self.stored_path(upload_id), self.thumbnail_path(upload_id)):
                await anyio.Path(path).unlink(missing_ok=True)
            await self._store.call(self._store.delete_upload, upload_id)
        return len(expired)

    async def sweep_forever(self) -> None:
        interval = min(max(self.ttl_s / 2, 0.5), 600)
        while True:
            try:
                swept = await self.sweep()
                if swept:
                    log.info("removed %d unused uploads older than %.0f s", swept, self.ttl_s)
            except Exception:  # a failed sweep is retried next time; it must not stop the portal
                log.exception("sweeping expired uploads failed")
            await anyio.sleep(interval)


def _save_atomically(image: Image.Image, target: Path, image_format: str, **options: Any) -> None:
    """Save under a temporary name beside `target`, then rename: readers never see half a file."""
    partial = target.with_name(INCOMING_PREFIX + secrets.token_hex(8))
    try:
        image.save(partial, format=image_format, **options)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _declared_length(header: str | None) -> int | None:
    if header is None:
        return None
    if not header.strip().isdigit():
        raise UploadRejected(400, "the Content-Length header is not a number")
    return int(header)


def _boundary(content_type: str | None) -> str:
    kind, options = parse_options_header(content_type or "")
    boundary = options.get("boundary", "")
    if kind != "multipart/form-data" or not boundary:
        raise UploadRejected(
            415, f"send the image as multipart/form-data in a field named {FILE_FIELD!r} (got {kind or 'no'} body)"
        )
    return boundary
