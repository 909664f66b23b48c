"""The diffusion process: `python -m gpu_runner run <job dir>` and `python -m gpu_runner demo-model <dir>`."""
