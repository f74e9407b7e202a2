"""Splitting a URL that came from outside, with urllib's ValueError turned into the caller's own error."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit


def split_url(url: str, *, error: type[Exception], field: str = "") -> SplitResult:
    """`urlsplit(url)`; a URL urllib cannot split (e.g. an unbalanced "[" in the host: "Invalid IPv6 URL") is
    raised as `error("<field> '<url>': not a URL (...)")`, so an API can name the field in a 422."""
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise error(f"{field + ' ' if field else ''}{url!r}: not a URL ({exc})") from exc
