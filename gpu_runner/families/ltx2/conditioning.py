"""Image-to-video: the job's normalised image becomes the first-frame condition of the denoising pipeline.

A text-only job runs diffusers' LTX2Pipeline; a job with an image runs LTX2ConditionPipeline
(families/ltx2/loading.py picks it), the same components with a per-condition strength, so
`image_strength` maps onto it directly (1 keeps the first latent frame exactly the encoded
image; lower values let it be re-noised).
"""

from __future__ import annotations

from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition
from PIL import Image

from gpu_runner.job import Job, JobError

# LTX-2.0 to 2.3 were trained on stills re-compressed with H.264 at CRF 33. diffusers reads this
# default from the text encoder, which is freed before denoising, so it is passed explicitly.
IMAGE_CRF = 33


def image_conditions(job: Job) -> dict:
    """The pipeline's `conditions` argument for a job with an image, nothing for a text-only job."""
    if job.file.image_file is None:
        return {}
    request = job.request
    try:
        with Image.open(job.path(job.file.image_file), formats=["PNG"]) as image:
            frame = image.convert("RGB")
    except OSError as error:
        raise JobError("invalid_input", f"image_file is not a readable PNG: {error}") from None
    if frame.size != (request.width, request.height):
        # The web process fits the image to the job's size; anything else was not made by it.
        raise JobError("invalid_input", f"image_file is {frame.width}x{frame.height}, not the job's size")
    condition = LTX2VideoCondition(frames=frame, index=0, strength=request.image_strength, crf=IMAGE_CRF)
    return {"conditions": [condition]}
