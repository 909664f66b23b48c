"""A job's progress: one struct, changed only by applying the runner's events to it.

Stored as JSON in `jobs.progress`, shown as is in the API's job JSON, read by the templates.
"""

from __future__ import annotations

import math

import msgspec

from contract import protocol

# The overall percentage in three bands: the stages before denoising share 0-5 %, the denoising
# steps 5-90 % (they dominate a job's time; fast mode's two stages share it equally), the stages after it 90-100 %.
DENOISE_START, DENOISE_END = 5.0, 90.0
_BEFORE = protocol.STAGES[: protocol.STAGES.index(protocol.DENOISING[0])]
_AFTER = protocol.STAGES[protocol.STAGES.index(protocol.DENOISING[-1]) + 1 :]


class JobProgress(msgspec.Struct, frozen=True, kw_only=True):
    stage: str | None = None
    stage_note: str | None = None  # the runner's note on the current stage, e.g. that its first step compiles
    step: int = 0  # of the denoising stage under way
    total: int = 0
    denoise_stage: int = 1  # which of the job's denoising stages the steps belong to: "stage 2 of 2"
    denoise_stages: int = 1
    percent: float = 0.0
    eta_s: float | None = None  # None: not known yet (the first step compiled)
    tiles_done: int = 0
    tiles_total: int = 0
    preview_step: int = 0  # the step the latest preview.jpg shows; 0: none yet
    preview_note: str | None = None  # why there is no preview (the model has no colours yet), from the runner
    tokens_done: int = 0  # the prompt enhancer's tokens so far, of at most tokens_total (enhance_prompt: true)
    tokens_total: int = 0
    weights_resident: bool = False  # warm mode: every loading stage so far took its weights from a warm runner
    weights_loaded: bool = False  # a loading stage read its weights (no WEIGHTS_RESIDENT note): never resident then

    @property
    def whole_percent(self) -> int:
        """The percentage as a job list shows it (half up, as people round)."""
        return math.floor(self.percent + 0.5)

    def apply(self, event: protocol.Event) -> JobProgress | None:
        """The progress once `event` has happened, or None when the event does not change it."""
        match event:
            case protocol.Stage(name=name, note=note):
                # warm mode: the job is marked only where each of its loading stages found its weights resident
                loaded = self.weights_loaded or (name in protocol.LOADING_STAGES and note != protocol.WEIGHTS_RESIDENT)
                resident = not loaded and (self.weights_resident or note == protocol.WEIGHTS_RESIDENT)
                return msgspec.structs.replace(
                    self,
                    stage=name,
                    stage_note=note,
                    percent=self._entering(name),
                    weights_resident=resident,
                    weights_loaded=loaded,
                )
            case protocol.Step(step=step, total=total, eta_s=eta, stage_number=number, stages=stages):
                done = (number - 1 + step / max(total, 1)) / max(stages, 1)
                percent = DENOISE_START + (DENOISE_END - DENOISE_START) * done
                return msgspec.structs.replace(
                    self,
                    step=step,
                    total=total,
                    denoise_stage=number,
                    denoise_stages=stages,
                    eta_s=None if eta is None else round(eta, 1),
                    percent=round(percent, 1),
                )
            case protocol.Preview(file=None, note=note):
                return msgspec.structs.replace(self, preview_note=note)
            case protocol.Preview(step=step):
                return msgspec.structs.replace(self, preview_step=step, preview_note=None)
            case protocol.Tile(done=done, total=total):
                return msgspec.structs.replace(self, tiles_done=done, tiles_total=total)
            case protocol.Token(done=done, total=total):
                return msgspec.structs.replace(self, tokens_done=done, tokens_total=total)
            case protocol.Result():
                return msgspec.structs.replace(self, percent=100.0, eta_s=0.0)
        return None

    def _entering(self, stage: str) -> float:
        if stage in _BEFORE:
            return round(DENOISE_START * (_BEFORE.index(stage) + 1) / (len(_BEFORE) + 1), 1)
        if stage in _AFTER:
            return round(DENOISE_END + (100 - DENOISE_END) * _AFTER.index(stage) / len(_AFTER), 1)
        return self.percent  # the denoising stages: their steps move the percentage


decode_progress = msgspec.json.Decoder(JobProgress).decode
