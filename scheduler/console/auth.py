"""Signing in to the console with an API key, the session cookie, and the CSRF check.

- `POST /console/sign-in` takes an API key from a form, opens a server-side session (`db.console_sessions`)
  and sets the cookie `catalogan_console`: a random token (never the key), HttpOnly, SameSite=Strict,
  Path=/console, Max-Age = the session lifetime, and Secure when the request came over HTTPS (directly,
  or per `X-Forwarded-Proto` when `CATALOGAN_CONSOLE_TRUST_FORWARDED_PROTO` is on).
- Every state-changing request (POST) carries the session's CSRF token (form field `csrf_token` or header
  `X-CSRF-Token`); without it, or with another, the answer is 403 and nothing changes. The sign-in form has
  its own token (double submit: a short-lived cookie and the same value in the form), so another site cannot
  sign a browser in to its own account either.
- A missing, expired or signed-out session, or one whose key was revoked, sends the browser to the sign-in
  page (303) on a GET and answers 401 otherwise.
- Signing in always opens a new session with a new token (a token the browser brings is never adopted) and
  ends the session the browser held before; signing out is not counted against the tenant's rate limit.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from db.console_sessions import (
    SignedIn,
    authenticate_console_key,
    create_console_session,
    end_console_session,
    find_console_session,
)
from db.engine import transaction
from db.errors import AuthenticationError, LimitExceededError
from scheduler.api.deps import Services
from scheduler.console.settings import ConsoleSettings
from scheduler.console.shard_reads import StoreReads, new_image_reads, new_shard_reads

SESSION_COOKIE = "catalogan_console"
SIGN_IN_COOKIE = "catalogan_console_sign_in"
SIGN_IN_FORM_SECONDS = 1800  # how long a sign-in form stays usable
COOKIE_PATH = "/console"
MAX_API_KEY_CHARS = 200

router = APIRouter(prefix="/console", include_in_schema=False)


class SignInRequiredError(Exception):
    """Raised when a console request has no live session (missing, expired, signed out, revoked key)."""


class CsrfRejectedError(Exception):
    """Raised when a state-changing console request lacks the session's CSRF token."""


@dataclass
class Console:
    """What the console's routes share: the API's services, the console settings and the templates."""

    services: Services
    settings: ConsoleSettings
    templates: Jinja2Templates
    shard_reads: StoreReads = field(default_factory=new_shard_reads)  # tar jobs' images: their own threads
    image_reads: StoreReads = field(default_factory=new_image_reads)  # other images: lookup + GET, one call


def get_console(request: Request) -> Console:
    """The console built by `install_console`."""
    console: Console = request.app.state.console
    return console


ConsoleDep = Annotated[Console, Depends(get_console)]


def is_https(request: Request, settings: ConsoleSettings) -> bool:
    """True when the browser talks HTTPS to us: the request's scheme, or a trusted proxy's X-Forwarded-Proto."""
    if request.url.scheme == "https":
        return True
    if settings.trust_forwarded_proto:
        forwarded = request.headers.get("x-forwarded-proto", "")
        return forwarded.split(",")[0].strip().lower() == "https"
    return False


async def signed_in_user(request: Request, console: ConsoleDep) -> SignedIn:
    """The signed-in tenant and key of the request's session cookie (`SignInRequiredError` without one).

    The lookup runs on the authentication threads, after the client's address is checked for failures left
    (`Services.auth_gate`); a cookie that opens no session counts as a failure."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise SignInRequiredError

    def check() -> SignedIn:
        with console.services.read_sessions() as session:
            user = find_console_session(session, token)
            session.expunge_all()
        if user is None:
            raise SignInRequiredError
        return user

    return await console.services.auth_gate.run(_client_host(request), check, failures=(SignInRequiredError,))


def _client_host(request: Request) -> str | None:
    return request.client.host if request.client else None


# Image bytes (one object per tile, cached by the browser for a day) are not counted against the tenant's
# requests-per-minute: a person scrolling a grid fetches dozens a second, as a client would from presigned URLs.
ViewerDep = Annotated[SignedIn, Depends(signed_in_user)]


def current_user(user: ViewerDep, console: ConsoleDep) -> SignedIn:
    """The signed-in user, after the tenant's rate limit (the same limit and window as the API's)."""
    services = console.services
    window = services.settings.rate_limit_window_seconds
    limit = max(1, user.tenant.requests_per_minute * window // 60)
    services.rate_limiter.hit(user.tenant.id, limit=limit, window_seconds=window)
    return user


UserDep = Annotated[SignedIn, Depends(current_user)]


async def check_csrf(request: Request, user: SignedIn) -> SignedIn:
    """`user`, once the request carries its session's CSRF token (else `CsrfRejectedError`)."""
    sent = request.headers.get("x-csrf-token")
    if sent is None:
        form = await request.form()
        value = form.get("csrf_token")
        sent = value if isinstance(value, str) else None
    if not sent or not hmac.compare_digest(sent.encode(), user.csrf_token.encode()):
        raise CsrfRejectedError
    return user


async def require_csrf(request: Request, user: UserDep) -> SignedIn:
    """The signed-in user, after the rate limit, once the request carries the session's CSRF token."""
    return await check_csrf(request, user)


CsrfUserDep = Annotated[SignedIn, Depends(require_csrf)]


async def require_csrf_unlimited(request: Request, user: ViewerDep) -> SignedIn:
    """As `require_csrf` without the rate limit: signing out must work while the tenant's ETL uses it all."""
    return await check_csrf(request, user)


SignOutUserDep = Annotated[SignedIn, Depends(require_csrf_unlimited)]


def _safe_next(target: str | None) -> str:
    """Only console paths are followed after sign-in (never another site: no open redirect)."""
    if target and target.startswith("/console/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console/jobs"


def _sign_in_page(
    request: Request, console: Console, *, next_url: str, error: str | None = None, status_code: int = 200
) -> Response:
    token = secrets.token_urlsafe(32)
    response = console.templates.TemplateResponse(
        request,
        "sign_in.html",
        {"csrf_token": token, "next_url": next_url, "error": error, "user": None},
        status_code=status_code,
    )
    response.set_cookie(
        SIGN_IN_COOKIE,
        token,
        max_age=SIGN_IN_FORM_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=is_https(request, console.settings),
    )
    return response


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_form(request: Request, console: ConsoleDep, next: str | None = None) -> Response:
    """The sign-in form."""
    return _sign_in_page(request, console, next_url=_safe_next(next))


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(
    request: Request,
    console: ConsoleDep,
    api_key: Annotated[str, Form(max_length=MAX_API_KEY_CHARS)] = "",
    csrf_token: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/console/jobs",
) -> Response:
    """Check the API key; open a session and set its cookie, or show the form again with the reason."""
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    if not csrf_token or not expected or not hmac.compare_digest(csrf_token.encode(), expected.encode()):
        raise CsrfRejectedError
    next_url = _safe_next(next)
    if not api_key.strip():
        return _sign_in_page(
            request, console, next_url=next_url, error="api_key: enter an API key", status_code=422
        )

    previous = request.cookies.get(SESSION_COOKIE)

    def open_session() -> str:
        # A wrong key costs a read: the write transaction (on SQLite, the database's one write lock, which a
        # worker committing a chunk waits for) is opened only for a key that authenticates.
        with console.services.read_sessions() as session:
            authenticate_console_key(session, api_key.strip())
        with transaction(console.services.session_factory) as session:
            tenant, key = authenticate_console_key(session, api_key.strip())  # again: revoked since?
            # A sign-in counts against the tenant's rate limit, as an API request does (and before its row).
            services = console.services
            window = services.settings.rate_limit_window_seconds
            limit = max(1, tenant.requests_per_minute * window // 60)
            services.rate_limiter.hit(tenant.id, limit=limit, window_seconds=window)
            token, _csrf = create_console_session(
                session,
                api_key_id=key.id,
                tenant_id=tenant.id,
                ttl_seconds=console.settings.session_ttl_seconds,
            )
            # A new sign-in replaces the browser's session: the token it held before stops working too.
            if previous:
                end_console_session(session, previous)
        return token

    try:
        # On the authentication threads; a wrong key counts against the client's address (429 once spent).
        token = await console.services.auth_gate.run(_client_host(request), open_session)
    except AuthenticationError as exc:
        return _sign_in_page(request, console, next_url=next_url, error=str(exc), status_code=401)
    except LimitExceededError as exc:
        page = _sign_in_page(request, console, next_url=next_url, error=str(exc), status_code=429)
        page.headers["Retry-After"] = str(exc.retry_after_seconds)
        return page
    response = RedirectResponse(next_url, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=console.settings.session_ttl_seconds,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=is_https(request, console.settings),
    )
    response.delete_cookie(SIGN_IN_COOKIE, path=COOKIE_PATH)
    return response


@router.post("/sign-out")
def sign_out(request: Request, console: ConsoleDep, _user: SignOutUserDep) -> Response:
    """End the session (server-side) and clear the cookie (not counted against the rate limit)."""
    token = request.cookies.get(SESSION_COOKIE, "")
    with transaction(console.services.session_factory) as session:
        end_console_session(session, token)
    response = RedirectResponse("/console/sign-in", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response


def sign_in_redirect(request: Request) -> Response:
    """Where a request without a live session goes: the sign-in page (GET), or 401 (anything else)."""
    if request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/console/sign-in?next={quote(target, safe='')}", status_code=303)
    return HTMLResponse("Signed out: sign in again at /console/sign-in", status_code=401)
