"""The API's documentation at /schema: Swagger UI from the portal's own static files.

Litestar's render plugins load their viewers from a CDN and start them with inline script, which the
CSP (app/security.py) blocks and a portal without internet cannot reach. This page has neither: the
vendored bundle and static/openapi.js, which starts it on /schema/openapi.json.
"""

from __future__ import annotations

import html
from typing import Any

from litestar import Request
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.openapi.spec import Server

from app.config import Settings

SWAGGER_UI = "/static/vendor/swagger-ui-5.36.0"  # swagger-ui-dist from npm: its bundle and its CSS


class SwaggerUI(OpenAPIRenderPlugin):
    def __init__(self, settings: Settings) -> None:
        super().__init__(path="/", favicon="", style="")
        self.url = settings.url

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        url = self.url
        title = html.escape(openapi_schema["info"]["title"])
        document = html.escape(url(self.get_openapi_json_route(request)))
        return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title} API</title>
  <link rel="icon" href="{url("/static/favicon.svg")}" type="image/svg+xml">
  <link rel="stylesheet" href="{url(SWAGGER_UI + ".css")}">
  <script src="{url(SWAGGER_UI + "-bundle.js")}" defer></script>
  <script src="{url("/static/openapi.js")}" defer></script>
</head>
<body><div id="swagger-ui" data-openapi-url="{document}"></div></body>
</html>
""".encode()


def openapi_config(settings: Settings) -> OpenAPIConfig:
    """/schema (the page) and /schema/openapi.json; "Try it out" calls the API under the root path."""
    return OpenAPIConfig(
        title="AV Portal",
        version="0.1.0",
        path="/schema",
        render_plugins=[SwaggerUI(settings)],
        servers=[Server(url=settings.root_path or "/")],
    )
