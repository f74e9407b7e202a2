"""Security headers on every console response: a strict Content-Security-Policy, no framing, no sniffing.

The console serves tenant-controlled strings (SKUs, job labels, error messages) inside pages that carry the
session's CSRF token, and image bytes read from the tenant's own prefix. Jinja escapes the strings; these
headers are the second line:

- `Content-Security-Policy`: scripts, styles, images and fetches from the console's own origin only — the
  pages have no inline script or style (`console.js` and `console.css` are files) —, forms post only to it,
  no `<base>`, no plugins, and `frame-ancestors 'none'`.
- `X-Frame-Options: DENY` (clickjacking, for browsers that ignore `frame-ancestors`).
- `X-Content-Type-Options: nosniff`: an image or a manifest download is never sniffed into HTML or script.
- `Referrer-Policy: same-origin`: console URLs (job ids) are not sent to other sites.
- `Cache-Control: no-store` on pages and JSON that set no caching of their own: a signed-out browser's back
  button or a shared cache does not show another session's page (image bytes keep their own `private`).
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONSOLE_PREFIX = "/console"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
UNCACHED_MEDIA_TYPES = ("text/html", "application/json", "application/problem+json")


class ConsoleHeadersMiddleware:
    """Adds `SECURITY_HEADERS` (and `Cache-Control: no-store` on pages) to responses under `/console`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != CONSOLE_PREFIX and not path.startswith(CONSOLE_PREFIX + "/"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                media_type = headers.get("content-type", "").split(";")[0].strip().lower()
                if "cache-control" not in headers and media_type in UNCACHED_MEDIA_TYPES:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)
