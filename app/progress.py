"""A job's progress: one struct, changed only by applying the runner's events to it.

Stored as JSON in `jobs.progress`, shown as is in the API's job JSON, read by the templates.
"""

from __future__ import annotations

import math

import msgspec

from contract import protocol

# The overall percentage in three bands: the stages before denoising share 0-5 %, the denoising
# steps 5-90 % (they dominate a job's time), the stages after it 90-100 %.
DENOISE_START, DENOISE_END = 5.0, 90.0
_DENOISE = protocol.STAGES.index("denoise")
_BEFORE, _AFTER = protocol.STAGES[:_DENOISE], protocol.STAGES[_DENOISE + 1 :]


class JobProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: str | None = None
    stage_note: str | None = None  # the runner's note on the current stage, e.g. that its first step compiles
    step: int = 0
    total: int = 0
    percent: float = 0.0
    eta_s: float | None = None  # None: not known yet (the first step compiled)
    tiles_done: int = 0
    tiles_total: int = 0
    preview_step: int = 0

    @property
    def whole_percent(self) -> int:
        """The percentage as a job list shows it (half up, as people round)."""
        return math.floor(self.percent + 0.5)

    def apply(self, event: protocol.Event) -> JobProgress | None:
        """The progress once `event` has happened, or None when the event does not change it."""
        match event:
            case protocol.Stage(name=name, note=note):
                return msgspec.structs.replace(self, stage=name, stage_note=note, percent=self._entering(name))
            case protocol.Step(step=step, total=total, eta_s=eta):
                percent = DENOISE_START + (DENOISE_END - DENOISE_START) * step / max(total, 1)
                eta = None if eta is None else round(eta, 1)
                return msgspec.structs.replace(self, step=step, total=total, eta_s=eta, percent=round(percent, 1))
            case protocol.Preview(step=step):
                return msgspec.structs.replace(self, preview_step=step)
            case protocol.Tile(done=done, total=total):
                return msgspec.structs.replace(self, tiles_done=done, tiles_total=total)
            case protocol.Result():
                return msgspec.structs.replace(self, percent=100.0, eta_s=0.0)
        return None

    def _entering(self, stage: str) -> float:
        if stage in _BEFORE:
            return round(DENOISE_START * (_BEFORE.index(stage) + 1) / (len(_BEFORE) + 1), 1)
        if stage in _AFTER:
            return round(DENOISE_END + (100 - DENOISE_END) * _AFTER.index(stage) / len(_AFTER), 1)
        return self.percent  # denoise itself: its steps move the percentage


decode_progress = msgspec.json.Decoder(JobProgress).decode
