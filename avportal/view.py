"""What the command line's progress line shows of a job: its state, changed only by the job's events."""

from __future__ import annotations

from dataclasses import dataclass, replace

from avportal.client import TERMINAL, Job
from avportal.stream import Event

QUEUE_FIELDS = ("queue_position", "eta_start_s", "eta_finish_s")


def _seconds(value: float) -> str:
    value = max(0, round(value))
    return f"{value // 60} min {value % 60:02d} s" if value >= 60 else f"{value} s"


@dataclass(frozen=True)
class JobView:
    id: str
    status: str
    stage: str | None = None
    step: int = 0  # of the denoising stage under way
    total: int = 0
    stage_number: int = 1  # which of the job's denoising stages: "stage 2 of 2"
    stages: int = 1
    eta_s: float | None = None  # seconds of denoising left, as the runner reckons
    previews: int = 0
    tiles: tuple[int, int] | None = None  # the video decode's (done, total)
    queue_position: int | None = None
    eta_start_s: float | None = None
    eta_finish_s: float | None = None

    @classmethod
    def of(cls, job: Job) -> JobView:
        """The job as its JSON has it; the rest comes from its events, which a follower reads from the first."""
        return cls(id=job.id, status=job.status, **{name: job.data.get(name) for name in QUEUE_FIELDS})

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def apply(self, event: Event) -> JobView:
        d = event.data
        # Queue position and ETA come with whichever event carries them, on portals that send them.
        view = replace(self, **{name: d[name] for name in QUEUE_FIELDS if name in d})
        match event.type:
            case "queued" | "running" | "interrupted" | "succeeded" | "failed" | "cancelled":
                return replace(view, status=event.type)
            case "stage":
                return replace(view, stage=d["name"])
            case "step":
                return replace(
                    view,
                    step=d["step"],
                    total=d["total"],
                    stage_number=d.get("stage_number", 1),
                    stages=d.get("stages", 1),
                    eta_s=d.get("eta_s"),
                )
            case "preview" if d.get("file"):  # one with no file only says why there is no picture
                return replace(view, previews=view.previews + 1)
            case "tile":
                return replace(view, tiles=(d["done"], d["total"]))
        return view

    @property
    def fraction(self) -> float:
        """How far the bar is: the denoising steps, which take most of a job's time; full once it succeeded."""
        if self.status == "succeeded":
            return 1.0
        if not self.total:
            return 0.0
        return (self.stage_number - 1 + self.step / self.total) / max(self.stages, 1)

    def describe(self) -> str:
        """One line: "denoise: stage 1 of 2, step 3/8 · ETA 12 s · 3 previews", "queued: 2nd in line, ..."."""
        if self.status == "queued":
            parts = ["queued"]
            if self.queue_position is not None:
                parts.append("next in line" if self.queue_position == 1 else f"position {self.queue_position}")
            if self.eta_start_s is not None:
                parts.append(f"starts in ~{_seconds(self.eta_start_s)}")
            if self.eta_finish_s is not None:
                parts.append(f"done in ~{_seconds(self.eta_finish_s)}")
            return ", ".join(parts)
        if self.status != "running":
            return self.status
        parts = [self.stage or "starting"]
        if self.total and self.stage in ("denoise", "upsample", "refine"):
            where = f"stage {self.stage_number} of {self.stages}, " if self.stages > 1 else ""
            parts[0] += f": {where}step {self.step}/{self.total}"
            parts.append("ETA …" if self.eta_s is None else f"ETA {_seconds(self.eta_s)}")
        if self.stage == "decode_video" and self.tiles:
            parts[0] += f": tile {self.tiles[0]}/{self.tiles[1]}"
        if self.previews:
            parts.append(f"{self.previews} preview{'s' if self.previews > 1 else ''}")
        return " · ".join(parts)
