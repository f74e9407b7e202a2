"""Splitting a URL that came from outside, with urllib's ValueError turned into the caller's own error."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

# A webhook URL as the API and the CLI accept it before the host is resolved (what the SSRF guard,
# scheduler.webhooks.check_target, takes): http(s), a DNS name or IPv4 host, an optional port 0-65535.
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
WEBHOOK_URL_PATTERN = rf"^https?://[A-Za-z0-9.-]+(:{_PORT})?([/?#].*)?$"


def split_url(url: str, *, error: type[Exception], field: str = "") -> SplitResult:
    """`urlsplit(url)`; a URL urllib cannot split (e.g. an unbalanced "[" in the host: "Invalid IPv6 URL") is
    raised as `error("<field> '<url>': not a URL (...)")`, so an API can name the field in a 422."""
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise error(f"{field + ' ' if field else ''}{url!r}: not a URL ({exc})") from exc
