"""HTTP handlers: pages (HTMX), api (JSON), events (SSE), files (video download)."""
