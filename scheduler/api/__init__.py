"""The catalogan HTTP API (FastAPI): `create_app(settings...)` builds it.

`create_app` is imported on first access, so that modules the routes import (`scheduler.previews`, which
needs `scheduler.api.schemas`) can be imported on their own without a cycle through the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scheduler.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from scheduler.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
