"""What the web process (app/) and the diffusion process (gpu_runner/) share, and nothing else.

Torch-free and litestar-free: `request` (the generation request, defined once, and its rules),
`models` (model specs and the registry of model kinds), `protocol` (the runner's protocol events,
exit codes and stages) and `jobdir` (the job directory's files and job.json).
docs/architecture.md shows where each is used.
"""
