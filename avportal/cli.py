"""The `avportal` command: generate a clip with a live progress bar, list, watch and cancel jobs.

The portal's own commands (`avportal serve`, `avportal hash-password`) are the web process's, in app/__main__.py:
any first word that is not a client command is handed to it, so the client itself never imports the portal.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.prompt import Confirm
from rich.table import Table

from avportal.client import DEFAULT_URL, AVPortal, Job
from avportal.errors import APIError, InvalidInput, PortalError
from avportal.view import JobView

# Exit codes (README, "From scripts and the command line").
EXIT_OK = 0
EXIT_FAILED = 1  # the job failed
EXIT_INVALID = 2  # invalid input: the portal's 400 (its field errors printed), or a malformed option
EXIT_CANCELLED = 3  # the job was cancelled
EXIT_PORTAL = 4  # the portal could not be reached, or refused otherwise (a token, a full queue, an unknown job)
EXIT_LEFT_RUNNING = 130  # Ctrl-C: answered "leave it running", or before there was a job to ask about

CLIENT_COMMANDS = ("generate", "jobs", "watch", "cancel")
# generate's options that are request fields as they are (dest names); --size is two
REQUEST_OPTIONS = (
    "model",
    "mode",
    "num_frames",
    "fps",
    "steps",
    "guidance_scale",
    "seed",
    "negative_prompt",
    "image_strength",
    "enhance_prompt",
)
# The request fields set by an option of another name, for error messages that point at what the user typed.
OPTION_OF_FIELD = {
    "prompt": "PROMPT",
    "loras": "--lora",
    "negative_prompt": "--negative",
    "num_frames": "--frames",
    "width": "--size",
    "height": "--size",
    "guidance_scale": "--guidance",
    "image_upload_id": "--image",
    "file": "--image",
    "image_strength": "--image-strength",
    "keyframes": "--keyframe",
    "extend_from": "--extend",
    "enhance_prompt": "--enhance-prompt",
}
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")


def _lora(text: str) -> dict[str, Any]:
    """--lora NAME[:SCALE] as a request's LoRA choice (the portal checks the name and the scale)."""
    name, colon, scale = text.rpartition(":") if ":" in text else (text, "", "")
    if not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME or NAME:SCALE, e.g. demo-huge:0.8")
    if not colon:
        return {"name": name.strip()}
    try:
        return {"name": name.strip(), "scale": float(scale)}
    except ValueError:
        message = f"{text!r}: the scale {scale!r} is not a number, e.g. demo-huge:0.8"
        raise argparse.ArgumentTypeError(message) from None


def _frames(text: str) -> int | str:
    """--frames: a frame count, or "auto" (the model picks the length: a model with a duration head)."""
    if text.strip() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a frame count (8k+1, e.g. 49) or auto") from None


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 320x192")
    return int(match[1]), int(match[2])


_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


def _keyframe(text: str) -> dict[str, Any]:
    """--keyframe FILE_OR_UPLOAD_ID@FRAME[:STRENGTH]: an image file (uploaded on submit) or an upload's id, the
    output frame it stands at (0 the first, -1 the last) and, optionally, its strength."""
    source, at, where = text.rpartition("@")
    frame_text, _, strength_text = where.partition(":")
    try:
        if not at or not source:
            raise ValueError
        keyframe: dict[str, Any] = {"frame": int(frame_text)}
        if strength_text:
            keyframe["strength"] = float(strength_text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not IMAGE@FRAME[:STRENGTH], e.g. first.png@0 or last.png@-1:0.9"
        ) from None
    if _UPLOAD_ID.fullmatch(source):
        return {"upload_id": source, **keyframe}
    return {"file": Path(source), **keyframe}


def build_parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    parser = argparse.ArgumentParser(
        prog="avportal",
        description="A client for the AV Portal: generate clips, follow and cancel jobs.",
        epilog="The portal itself: avportal serve --help, avportal hash-password, avportal import-model FILE... "
        f"Exit codes: {EXIT_OK} done, {EXIT_FAILED} job failed, {EXIT_INVALID} invalid input, "
        f"{EXIT_CANCELLED} job cancelled, {EXIT_PORTAL} portal unreachable or refusing, "
        f"{EXIT_LEFT_RUNNING} interrupted with the job left running.",
    )
    for target, default in ((parser, None), (connection, argparse.SUPPRESS)):
        # Before or after the command word, as people type them; the environment when neither.
        target.add_argument("--url", default=default, help=f"the portal (AVP_URL; default {DEFAULT_URL})")
        target.add_argument("--token", default=default, help="bearer token, when the portal has one (AVP_API_TOKEN)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser(
        "generate", parents=[connection], help="submit a prompt, show its progress, download the MP4"
    )
    generate.add_argument("prompt", help="what the clip shows and sounds like")
    generate.add_argument("--model", help="a model id (GET /api/models); default: the portal's first")
    generate.add_argument("--mode", help="fast or quality; default: the model's")
    generate.add_argument(
        "--frames",
        type=_frames,
        dest="num_frames",
        help="frames, 8k+1 (e.g. 25, 49, 97), or auto: the model picks the length (a model with a duration head)",
    )
    generate.add_argument(
        "--enhance-prompt",
        action="store_const",
        const=True,
        dest="enhance_prompt",
        help="the model's prompt enhancer rewrites the prompt first (a model with one)",
    )
    generate.add_argument("--size", type=_size, metavar="WxH", help="width x height in pixels, e.g. 320x192")
    generate.add_argument("--fps", type=float, help="frames per second")
    generate.add_argument("--steps", type=int, help="denoising steps (quality mode)")
    generate.add_argument("--guidance", type=float, dest="guidance_scale", help="guidance scale (quality mode)")
    generate.add_argument("--seed", type=int, help="seed; default: a random one, shown on the job")
    generate.add_argument("--negative", dest="negative_prompt", help="what the clip should not show")
    generate.add_argument("--image", type=Path, help="an image (JPEG, PNG, WebP) for the clip's first frame")
    generate.add_argument("--image-strength", type=float, dest="image_strength", help="1 keeps the image as it is")
    generate.add_argument(
        "--keyframe",
        type=_keyframe,
        action="append",
        dest="keyframes",
        metavar="IMAGE@FRAME[:STRENGTH]",
        help="an image (a file, or an upload's id) the clip passes through at an output frame (0 the first, -1 the "
        "last), with a strength (default 1); repeat it, e.g. --keyframe first.png@0 --keyframe last.png@-1",
    )
    generate.add_argument("--extend", dest="extend_from", metavar="JOB_ID", help="continue this finished job's clip")
    generate.add_argument(
        "--lora",
        type=_lora,
        action="append",
        dest="loras",
        metavar="NAME[:SCALE]",
        help="apply a LoRA of the portal's library (GET /api/loras) at SCALE (default 1); up to 4 times",
    )
    generate.add_argument("-o", "--output", type=Path, help="where to write the MP4 (default: JOB_ID.mp4)")

    commands.add_parser("jobs", parents=[connection], help="list the newest jobs").add_argument(
        "--limit", type=int, default=20, help="how many (default 20)"
    )
    watch = commands.add_parser("watch", parents=[connection], help="follow a job's progress to its end")
    watch.add_argument("id", help="the job's id")
    watch.add_argument("-o", "--output", type=Path, help="write its MP4 here once it succeeds")
    commands.add_parser("cancel", parents=[connection], help="cancel a queued or running job").add_argument(
        "id", help="the job's id"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and not argv[0].startswith("-") and argv[0] not in CLIENT_COMMANDS:
        from app.__main__ import main as portal_main  # the portal's commands need the portal's packages

        return portal_main(argv)
    args = build_parser().parse_args(argv)
    out, err = Console(), Console(stderr=True)
    try:
        with AVPortal(args.url, args.token) as portal:
            return COMMANDS[args.command](portal, args, out, err)
    except InvalidInput as error:
        _say(err, _invalid(error))
        return EXIT_INVALID
    except APIError as error:
        hint = " (give the portal's token: --token or AVP_API_TOKEN)" if error.status_code == 401 else ""
        _say(err, f"avportal: the portal refused: {error}{hint}")
        return EXIT_PORTAL
    except PortalError as error:
        _say(err, f"avportal: {error}")
        return EXIT_PORTAL
    except KeyboardInterrupt:  # before a job was made, or while its MP4 downloads: nothing to ask
        _say(err, "avportal: interrupted")
        return EXIT_LEFT_RUNNING


def _say(console: Console, text: str) -> None:
    """Print as is: no markup or highlighting of what the portal or the user wrote."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _invalid(error: InvalidInput) -> str:
    lines = [f"avportal: invalid input ({error.status_code}): {error.detail}"]
    for field in error.errors:
        name = field.field.split("[")[0]  # loras[1].scale: the --lora option
        option = OPTION_OF_FIELD.get(name, f"--{name.replace('_', '-')}")
        lines.append(f"  {option} ({field.field}): {field.message}")
    return "\n".join(lines)


def _generate(portal: AVPortal, args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.image is not None and not args.image.is_file():
        _say(err, f"avportal: --image: no such file: {args.image}")
        return EXIT_INVALID
    for keyframe in args.keyframes or ():
        if "file" in keyframe and not keyframe["file"].is_file():
            _say(err, f"avportal: --keyframe: no such file: {keyframe['file']}")
            return EXIT_INVALID
    fields: dict[str, Any] = {name: getattr(args, name) for name in (*REQUEST_OPTIONS, "keyframes", "extend_from")}
    if args.size is not None:
        fields["width"], fields["height"] = args.size
    if args.loras:
        fields["loras"] = args.loras
    job = portal.submit(args.prompt, image=args.image, **{k: v for k, v in fields.items() if v is not None})
    _say(err, f"job {job.id} submitted")
    output = args.output or Path(f"{job.id if _SAFE_ID.fullmatch(job.id) else 'clip'}.mp4")
    return _follow(portal, job, output, err, out)


def _watch(portal: AVPortal, args: argparse.Namespace, out: Console, err: Console) -> int:
    return _follow(portal, portal.job(args.id), args.output, err, out)


def _follow(portal: AVPortal, job: Job, output: Path | None, err: Console, out: Console) -> int:
    """Show the job's progress to its end; on Ctrl-C, ask whether to cancel it. Fetches the MP4 if it succeeds."""
    view, last_id = JobView.of(job), None
    while True:
        try:
            with Progress(
                TextColumn("{task.fields[job]}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.description}"),
                console=err,
            ) as bar:
                task = bar.add_task(view.describe(), total=1.0, completed=view.fraction, job=job.id)
                for event in portal.events(job.id, last_event_id=last_id):
                    last_id = event.id if event.id is not None else last_id
                    view = view.apply(event)
                    # Drawn at once, not at the next tick: a quick stage would otherwise never show.
                    bar.update(task, completed=view.fraction, description=view.describe(), refresh=True)
            return _ended(portal, portal.job(job.id), output, err, out)
        except KeyboardInterrupt:
            if not _ask_cancel(err, job.id):
                again = ["avportal", "watch", job.id, *(["-o", str(output)] if output else [])]
                again += ["--url", portal.url] if portal.url != DEFAULT_URL else []
                _say(err, f"Job {job.id} goes on. Watch it again with: {shlex.join(again)}")
                return EXIT_LEFT_RUNNING
            try:
                portal.cancel(job.id)
            except APIError as refused:
                if refused.status_code != 409:  # 409: it ended meanwhile; how, the stream tells
                    raise
            _say(err, f"cancelling job {job.id} ...")


def _ask_cancel(err: Console, job_id: str) -> bool:
    try:
        return Confirm.ask(f"Cancel job {job_id}?", console=err, default=False)
    except (KeyboardInterrupt, EOFError):  # a second Ctrl-C, or no terminal to ask on: leave it running
        return False


def _ended(portal: AVPortal, job: Job, output: Path | None, err: Console, out: Console) -> int:
    error = job.error or {}
    if job.status == "succeeded":
        if output is None:
            _say(out, str(httpx.URL(portal.url).join(job.links.get("video") or "")))
        else:
            _say(out, str(portal.download(job.id, output)))
        return EXIT_OK
    if job.status == "cancelled":
        _say(err, f"job {job.id} cancelled")
        return EXIT_CANCELLED
    _say(err, f"job {job.id} failed: {error.get('code', '')}: {error.get('message', '')}")
    return EXIT_FAILED


def _jobs(portal: AVPortal, args: argparse.Namespace, out: Console, err: Console) -> int:
    rows = []
    for job in portal.jobs(limit=args.limit):
        state = f"{job.progress.get('percent', 0):.0f} %" if job.status == "running" else ""
        if job.status == "queued":
            state = JobView.of(job).describe().removeprefix("queued").lstrip(", ")
        created = (job.data.get("created_at") or "")[:16].replace("T", " ")
        rows.append((job.id, job.status, state, created, job.request.get("prompt", "")))
    table = Table(box=None, pad_edge=False)
    for i, name in enumerate(("id", "status", "progress", "created")):  # shown whole; the prompt gets what is left
        table.add_column(name, no_wrap=True, min_width=max([len(name)] + [len(row[i]) for row in rows]))
    table.add_column("prompt", no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(*row)
    out.print(table)
    return EXIT_OK


def _cancel(portal: AVPortal, args: argparse.Namespace, out: Console, err: Console) -> int:
    job = portal.cancel(args.id)
    out.print(f"job {job.id}: {job.status}")
    return EXIT_OK


COMMANDS = {"generate": _generate, "jobs": _jobs, "watch": _watch, "cancel": _cancel}


if __name__ == "__main__":
    sys.exit(main())
