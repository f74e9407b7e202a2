"""The web console under `/console/`: jobs, image grids, review, models — served by the API's own app.

Server-rendered Jinja2 templates and a little vanilla JavaScript (no front-end build). It signs in with an
API key (`scheduler.console.auth`) and sees exactly what that key's tenant sees over the API: another
tenant's job, image or URL is a 404, as on `/v1`. `install_console(app, services)` mounts it; `create_app`
does that for every API process.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from scheduler.api.deps import Services
from scheduler.console import auth, jobs, model_versions
from scheduler.console.auth import Console, CsrfRejectedError, SignInRequiredError, sign_in_redirect
from scheduler.console.headers import ConsoleHeadersMiddleware
from scheduler.console.pages import ConsoleNotFoundError, NotAllowedError, register_filters
from scheduler.console.settings import ConsoleSettings

__all__ = ["ConsoleSettings", "install_console"]

HERE = Path(__file__).parent


def install_console(app: FastAPI, services: Services, settings: ConsoleSettings | None = None) -> None:
    """Mount the console's routes, static files and error pages on `app`."""
    templates = Jinja2Templates(directory=HERE / "templates")
    register_filters(templates)
    console = Console(services=services, settings=settings or ConsoleSettings(), templates=templates)
    app.state.console = console
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.add_middleware(ConsoleHeadersMiddleware)  # CSP, no framing, no sniffing under /console
    for module in (auth, jobs, model_versions):
        app.include_router(module.router)

    @app.get("/console", include_in_schema=False)
    @app.get("/console/", include_in_schema=False)
    def console_home() -> Response:
        return RedirectResponse("/console/jobs", status_code=303)

    async def on_sign_in_required(request: Request, exc: Exception) -> Response:
        return sign_in_redirect(request)

    async def on_csrf_rejected(request: Request, exc: Exception) -> Response:
        return templates.TemplateResponse(
            request,
            "error.html",
            {
                "user": None,
                "title": "Forbidden",
                "message": "The form's CSRF token is missing or wrong: "
                "reload the page and try again. Nothing was changed.",
            },
            status_code=403,
        )

    async def on_not_found(request: Request, exc: Exception) -> Response:
        return templates.TemplateResponse(
            request, "error.html", {"user": None, "title": "Not found", "message": str(exc)}, status_code=404
        )

    async def on_not_allowed(request: Request, exc: Exception) -> Response:
        return templates.TemplateResponse(
            request, "error.html", {"user": None, "title": "Forbidden", "message": str(exc)}, status_code=403
        )

    app.add_exception_handler(SignInRequiredError, on_sign_in_required)
    app.add_exception_handler(CsrfRejectedError, on_csrf_rejected)
    app.add_exception_handler(ConsoleNotFoundError, on_not_found)
    app.add_exception_handler(NotAllowedError, on_not_allowed)
