"""What every console page shares: its errors, template filters and the render helper."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates

from db.console_sessions import SignedIn
from scheduler.console.auth import Console


class ConsoleNotFoundError(Exception):
    """Raised when a console page names a job, image or model the signed-in tenant cannot see (a 404 page)."""


class NotAllowedError(Exception):
    """Raised when a signed-in key asks for something only operator keys may do (a 403 page)."""


def when(value: dt.datetime | None) -> str:
    """A timestamp as the console shows it: UTC, to the second; an em dash when absent."""
    if value is None:
        return "—"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def number(value: Any, digits: int = 4) -> str:
    """A metric for a table cell: floats to `digits` significant digits, others as they are."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def register_filters(templates: Jinja2Templates) -> None:
    """Add the console's filters to the template environment."""
    templates.env.filters["when"] = when
    templates.env.filters["number"] = number


def render(
    console: Console,
    request: Request,
    template: str,
    user: SignedIn | None,
    status_code: int = 200,
    **context: Any,
) -> Response:
    """Render `template` with the signed-in user (for the header and the CSRF token) and `context`."""
    is_operator = user is not None and user.key_id in console.settings.operator_key_ids
    return console.templates.TemplateResponse(
        request,
        template,
        {"user": user, "is_operator": is_operator, **context},
        status_code=status_code,
    )
