"""The web process: Litestar app, job store, queue, runner supervisor, SSE. Never imports torch."""
