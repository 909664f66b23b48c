"""What the web process (app/) and the diffusion process (gpu_runner/) share, and nothing else.

Torch-free and litestar-free: `request` (the generation request, defined once, and its rules),
`library` (what a model directory is, from its configs), `models` (model specs, the registry of model
kinds and the models an installation offers), `protocol` (the runner's protocol events,
exit codes and stages) and `jobdir` (the job directory's files and job.json).
docs/architecture.md shows where each is used.
"""
