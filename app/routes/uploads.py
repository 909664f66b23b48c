"""Image uploads: the JSON endpoint, the thumbnail it points to, and the create form's upload fragment.

The body is read here from the raw ASGI stream (not through Litestar's form parsing, which
would buffer it) and handed to app.uploads, where the guards are.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery, HeaderParameter
from litestar.plugins.htmx import HTMXTemplate
from litestar.response import File, Template

from app.config import Settings
from app.schemas import UploadOut
from app.uploads import Upload, UploadRejected, Uploads
from contract.request import MAX_KEYFRAMES

ContentType = Annotated[str | None, HeaderParameter(name="Content-Type", required=False)]
ContentLength = Annotated[str | None, HeaderParameter(name="Content-Length", required=False)]


def upload_out(upload: Upload, settings: Settings) -> UploadOut:
    return UploadOut(
        upload_id=upload.id,
        filename=upload.filename,
        width=upload.width,
        height=upload.height,
        thumbnail_url=settings.url(f"/api/uploads/{upload.id}/thumbnail"),
    )


@post(
    "/api/uploads",
    status_code=201,
    summary="Upload a JPEG, PNG or WebP image (multipart field `file`)",
    tags=["uploads"],
)
async def create_upload(
    request: Request,
    uploads: NamedDependency[Uploads],
    settings: NamedDependency[Settings],
    content_type: ContentType,
    content_length: ContentLength,
) -> UploadOut:
    return upload_out(await uploads.receive(content_type, content_length, request.receive), settings)


@get("/api/uploads/{upload_id:str}/thumbnail", summary="A small JPEG of the upload", tags=["uploads"])
async def upload_thumbnail(upload_id: FromPath[str], uploads: NamedDependency[Uploads]) -> File:
    upload = await uploads.find(upload_id)
    if upload is None:
        raise NotFoundException(f"No upload with id {upload_id!r}; it may have expired.")
    return File(
        uploads.thumbnail_path(upload.id),
        media_type="image/jpeg",
        filename=f"{upload.id}.jpg",
        content_disposition_type="inline",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"},
    )


@post("/fragments/upload", name="upload_fragment", status_code=200, include_in_schema=False)  # the form's, no API
async def upload_fragment(
    request: Request,
    uploads: NamedDependency[Uploads],
    settings: NamedDependency[Settings],
    content_type: ContentType,
    content_length: ContentLength,
) -> Template:
    """The form's image field after a file was chosen: a preview and the id, or why it was refused.

    Answers 200 either way, so htmx swaps the message in beside the field.
    """
    context: dict[str, object] = {"upload_error": None, "upload": None}
    try:
        context["upload"] = upload_out(await uploads.receive(content_type, content_length, request.receive), settings)
    except UploadRejected as rejected:
        context["upload_error"] = rejected.message
    return HTMXTemplate(
        template_name="fragments/_image_field.html",
        context=context,
        headers={"Connection": "close"} if context["upload_error"] else None,
    )


@post("/fragments/keyframe", name="keyframe_fragment", status_code=200, include_in_schema=False)
async def keyframe_fragment(
    request: Request,
    uploads: NamedDependency[Uploads],
    settings: NamedDependency[Settings],
    content_type: ContentType,
    content_length: ContentLength,
    slot: FromQuery[int] = 0,
) -> Template:
    """The keyframe timeline after an image was added: its row at `slot` (or why the image was refused) and, out of
    band, the add control for the next slot. Answers 200 either way, so htmx shows it in the timeline."""
    slot = min(max(slot, 0), MAX_KEYFRAMES - 1)
    context: dict[str, object] = {"upload_error": None, "upload": None, "slot": slot, "keyframe": None}
    try:
        context["upload"] = upload_out(await uploads.receive(content_type, content_length, request.receive), settings)
    except UploadRejected as rejected:
        context["upload_error"] = rejected.message
    taken = slot + 1 if context["upload"] else slot
    context |= {"next_slot": taken, "max_keyframes": MAX_KEYFRAMES, "oob": True}
    return HTMXTemplate(
        template_name="fragments/_keyframe_row.html",
        context=context,
        headers={"Connection": "close"} if context["upload_error"] else None,
    )


@get("/fragments/keyframe/removed", name="keyframe_removed", include_in_schema=False)
async def keyframe_removed() -> str:
    """What a timeline row's Remove button fetches: nothing (htmx deletes the row)."""
    return ""


handlers = [create_upload, upload_thumbnail, upload_fragment, keyframe_fragment, keyframe_removed]
