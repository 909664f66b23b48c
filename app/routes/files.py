"""A job's files: the finished video, with HTTP Range support so browsers can seek and start playing at once, its
poster (a frame of the clip, for the gallery) and the preview while it runs."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from anyio import AsyncFile
from litestar import Request, Response, get, route
from litestar.di import NamedDependency
from litestar.enums import HttpMethod
from litestar.exceptions import NotFoundException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, HeaderParameter
from litestar.response import Stream

from app.jobs import Jobs
from app.routes.api import load_job
from app.schemas import ErrorResponse
from contract.jobdir import POSTER_FILE, PREVIEW_FILE

CHUNK = 256 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """(first, last) inclusive for a single satisfiable range; None for the whole file; False if unsatisfiable."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None  # several ranges or another unit: answer with the whole file, as RFC 9110 allows
    start, end = match.groups()
    if not start and not end:
        return None
    if not start:  # suffix: the last N bytes
        length = int(end)
        return (max(size - length, 0), size - 1) if length and size else False
    first = int(start)
    last = min(int(end), size - 1) if end else size - 1
    if first >= size or last < first:
        return False
    return first, last


async def _read(file: AsyncFile[bytes], first: int, last: int) -> AsyncIterator[bytes]:
    async with file as f:
        await f.seek(first)
        remaining = last - first + 1
        while remaining > 0:
            chunk = await f.read(min(CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


@get("/api/jobs/{job_id:str}/preview", summary="The latest preview of a running job (JPEG)", tags=["jobs"])
async def job_preview(job_id: FromPath[str], jobs: NamedDependency[Jobs]) -> Response[bytes]:
    job = await load_job(jobs, job_id)
    path = jobs.job_dir(job.id) / PREVIEW_FILE
    try:
        content = await anyio.Path(path).read_bytes()
    except FileNotFoundError:
        raise NotFoundException(f"Job {job_id} has no preview yet.") from None
    return Response(content, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@get(
    "/api/jobs/{job_id:str}/poster",
    summary="A frame of the finished clip (JPEG, at most 640 px wide), for galleries",
    tags=["jobs"],
    media_type="image/jpeg",
    responses={404: ResponseSpec(ErrorResponse, description="No such job, or it has no poster (the detail says why)")},
)
async def job_poster(job_id: FromPath[str], jobs: NamedDependency[Jobs]) -> Response[bytes]:
    """The clip's middle frame, written with the MP4; kept when retention removes the job's other files."""
    job = await load_job(jobs, job_id)
    if job.status != "succeeded":
        raise NotFoundException(f"Job {job_id} has no poster: it is {job.status}.")
    try:
        content = await anyio.Path(jobs.job_dir(job.id) / POSTER_FILE).read_bytes()
    except FileNotFoundError:
        if job.files_removed_at is not None:
            why = "its files were removed (retention) before it had one"
        else:
            why = "none was made yet (the portal makes the missing posters of older clips when it starts)"
        raise NotFoundException(f"Job {job_id} has no poster: {why}.") from None
    return Response(content, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@route(
    "/api/jobs/{job_id:str}/video",
    http_method=[HttpMethod.GET, HttpMethod.HEAD],
    summary="The job's MP4 (supports Range)",
    tags=["jobs"],
)
async def job_video(
    request: Request,
    job_id: FromPath[str],
    jobs: NamedDependency[Jobs],
    range_header: Annotated[str | None, HeaderParameter(name="Range")] = None,
    download: FromQuery[bool] = False,
) -> Response[bytes] | Stream:
    """The MP4, played inline by the page's <video>, or saved as a file with `?download=true`.

    HEAD answers as GET would, ranges included, without the body (a download manager asks first).
    """
    job = await load_job(jobs, job_id)
    path = jobs.video_path(job)
    if path is None:
        why = "its files were removed (retention)" if job.files_removed_at is not None else f"it is {job.status}"
        raise NotFoundException(f"Job {job_id} has no video: {why}.")
    try:  # opened before answering: removed from now on (a delete, retention), the open file still reads whole
        video = await anyio.open_file(path, "rb")
    except FileNotFoundError:
        raise NotFoundException(f"Job {job_id} has no video: its files were removed a moment ago.") from None
    size = os.fstat(video.wrapped.fileno()).st_size
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'{"attachment" if download else "inline"}; filename="{job.id}.mp4"',
        "Cache-Control": "private, max-age=3600",
    }
    wanted = parse_range(range_header, size)
    if wanted is False or request.method == HttpMethod.HEAD:
        await video.aclose()  # no body to send
    if wanted is False:
        return Response(b"", status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    first, last = wanted if wanted else (0, size - 1)
    if wanted:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(last - first + 1)
    status = 206 if wanted else 200
    if request.method == HttpMethod.HEAD:
        return Response(b"", status_code=status, media_type="video/mp4", headers=headers)
    return Stream(_read(video, first, last), status_code=status, media_type="video/mp4", headers=headers)
