"""Webhooks: job events into the outbox, and delivery from the outbox with signatures, retries and an SSRF guard.

Two steps, both run by the periodic tick (`run_webhook_tick`, called from `catalogan beat`):

1. `emit_job_events` looks at jobs that have a webhook target (the job's `webhook_url`, else the tenant's
   default) and writes outbox rows for what happened since the last tick: `job.started`, `job.progress`
   (at most one per `webhook_progress_interval_seconds` and only when the counts moved), and one terminal
   event — `job.completed`, `job.completed_with_failures`, `job.failed` or `job.cancelled`. Each event is
   written once per job, and only when the job subscribed to it (`jobs.webhook_events`, None = every event; `db.webhook_events`).
2. `dispatch_due` POSTs due outbox rows, signed the Standard Webhooks way (`scheduler.signatures`) with the
   tenant's secret. A 2xx marks the row delivered; anything else retries with exponential backoff
   until `webhook_max_attempts`, then the row is failed. `webhook-id` is the outbox row id, the same on
   every retry, so receivers can deduplicate.

SSRF guard: a target must be http(s) and every address its host resolves to must be public — loopback,
private, link-local, multicast, reserved and unspecified addresses are refused unless the operator sets
`CATALOGAN_WEBHOOK_ALLOW_PRIVATE_TARGETS=true`. The check runs at submit and again before every delivery
(DNS may change in between). Each attempt resolves the name once, checks every address and connects to the
address it checked (`pin_target`), keeping the name for `Host` and TLS SNI, so a DNS answer that changes between
the check and the connection (rebinding) cannot redirect a signed POST. Redirects are not followed, and no
proxy from the environment is used.
A host that does not resolve at delivery is retried like a failed attempt (`WebhookHostUnresolvedError`); a
refused address or a URL httpx cannot send fails the row at once. Whatever goes wrong in one row's attempt is
that row's outcome: it never cancels the other attempts of the tick.

Delivery: the due rows of one tick run concurrently (`webhook_concurrency`), at most
`webhook_concurrency_per_tenant` rows of one tenant per tick; each attempt has one total deadline
(`webhook_timeout_seconds`, resolving to reading the answer) and reads at most `webhook_max_response_bytes`.
A slow or silent receiver therefore costs its own tenant's events, and others' at most one deadline per tick.
A tenant may also run the DNS server of its webhook host and answer slowly: a timed-out `getaddrinfo` cannot be
cancelled and keeps its thread after the attempt has given up, so lookups run on their own threads
(`DeliveryLookups`, shared by every tick of the process) and a tenant has at most one running at a time; its
next attempt waits for that one, within its own deadline, instead of taking another thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import logging
import math
import random
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import httpx
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.errors import LimitExceededError
from db.status import DeliveryStatus, JobStatus
from db.tables import Job, Tenant, WebhookDelivery, utcnow
from db.urls import split_url
from db.webhook_events import WEBHOOK_EVENT_ALIASES, WEBHOOK_EVENTS, job_event_data, wants_event
from scheduler.errors import UnsafeWebhookTargetError
from scheduler.settings import WebhookSettings
from scheduler.signatures import signed_headers

EVENT_STARTED = "job.started"
EVENT_PROGRESS = "job.progress"
TERMINAL_EVENTS = {
    JobStatus.SUCCEEDED: "job.completed",
    JobStatus.COMPLETED_WITH_FAILURES: "job.completed_with_failures",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}
EVENT_REVIEWED = "job.reviewed"  # written by the console when every delivered image has a decision
EVENTS = (EVENT_STARTED, EVENT_PROGRESS, *TERMINAL_EVENTS.values(), EVENT_REVIEWED)
assert EVENTS == WEBHOOK_EVENTS  # one vocabulary with what a job may subscribe to (db.webhook_events)
EVENT_ALIASES = WEBHOOK_EVENT_ALIASES
# Finished jobs are looked at for this long after they finish, so a missed terminal event is still sent.
TERMINAL_LOOKBACK_SECONDS = 24 * 3600
MAX_ERROR_CHARS = 500
USER_AGENT = "catalogan-webhooks/1"

logger = logging.getLogger(__name__)

Resolver = Callable[[str, int], Sequence[str]]
T = TypeVar("T")
# How often a delivery attempt looks again whether its tenant's earlier host lookup has returned.
LOOKUP_TURN_POLL_SECONDS = 0.05


class WebhookHostUnresolvedError(UnsafeWebhookTargetError):
    """Raised when a webhook host does not resolve now: a 422 at submit, a retried attempt at delivery (a DNS
    outage is not an unsafe target, and giving up on the first one would lose the event)."""


def resolve_host(host: str, port: int) -> list[str]:
    """Every IP address `host` resolves to (IPv4 and IPv6); `WebhookHostUnresolvedError` when none."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookHostUnresolvedError(f"webhook_url host {host!r} does not resolve: {exc}") from exc
    return sorted({str(info[4][0]) for info in infos})


# IPv6 prefixes that carry an IPv4 address in their last 32 bits, reached through a translator (NAT64, RFC 6052
# and RFC 8215): the IPv4 address inside must be public too.
NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address inside an IPv6 one (mapped, 6to4, NAT64) reaches that IPv4 host: judge it instead.
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        else:
            inner = ip.sixtofour
            if inner is None and any(ip in prefix for prefix in NAT64_PREFIXES):
                inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            if inner is not None and not _is_public(str(inner)):
                return False
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def _host_and_port(url: str) -> tuple[str, int]:
    """`url`'s host and port; `UnsafeWebhookTargetError` unless it is an http(s) URL with a host, no credentials."""
    parts = split_url(url, error=UnsafeWebhookTargetError, field="webhook_url")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeWebhookTargetError(f"webhook_url {url!r}: must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise UnsafeWebhookTargetError(f"webhook_url {url!r}: must not carry credentials")
    try:
        # What the dispatcher will send to must be a URL httpx builds a request for: urllib keeps characters
        # (e.g. non-printable ASCII in the path) that httpx refuses, and such a row could never be sent.
        httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeWebhookTargetError(f"webhook_url {url!r}: not a URL ({exc})") from exc
    try:
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeWebhookTargetError(f"webhook_url {url!r}: invalid port") from exc


def _check_addresses(url: str, addresses: Sequence[str]) -> None:
    refused = [address for address in addresses if not _is_public(address)]
    if refused or not addresses:
        raise UnsafeWebhookTargetError(
            f"webhook_url {url!r}: resolves to a loopback, private or link-local address ({', '.join(refused)}); "
            "refused unless the operator sets CATALOGAN_WEBHOOK_ALLOW_PRIVATE_TARGETS"
        )


def check_target(url: str, *, allow_private: bool, resolver: Resolver = resolve_host) -> None:
    """Raise `UnsafeWebhookTargetError` unless `url` is http(s) and (unless allowed) resolves to public addresses only.

    Blocking (the lookup); on an event loop use `SubmitResolver.check`.
    """
    host, port = _host_and_port(url)
    if not allow_private:
        _check_addresses(url, resolver(host, port))


class TenantLookups:
    """Host lookups on this object's own threads, at most `per_tenant` of one tenant's running at once.

    A tenant names the webhook host, so it may also run the DNS server that answers for it, slowly, and a
    timed-out `getaddrinfo` cannot be cancelled: a lookup keeps its thread and its tenant's turn until it
    returns, so one tenant holds at most `per_tenant` threads and the others' lookups keep theirs. Thread-safe:
    a lookup's end is counted on the executor's thread (the dispatcher's ticks are separate event loops).
    """

    def __init__(self, *, threads: int, per_tenant: int, thread_name_prefix: str) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=thread_name_prefix)
        self.per_tenant = per_tenant
        self._lock = threading.Lock()
        self.running: Counter[str] = Counter()  # tenant id → lookups not yet returned (under _lock)

    def try_start(
        self, tenant_id: str, function: Callable[..., T], *args: Any, **kwargs: Any
    ) -> Future[T] | None:
        """`function(*args, **kwargs)` on this object's threads in the tenant's turn; None while the tenant
        already has `per_tenant` lookups running."""
        with self._lock:
            if self.running[tenant_id] >= self.per_tenant:
                return None
            self.running[tenant_id] += 1
        try:
            lookup = self.executor.submit(function, *args, **kwargs)
        except BaseException:
            self._finished(tenant_id)
            raise
        lookup.add_done_callback(lambda _: self._finished(tenant_id))  # when it returns, even after a timeout
        return lookup

    def _finished(self, tenant_id: str) -> None:
        with self._lock:
            self.running[tenant_id] -= 1
            if self.running[tenant_id] <= 0:
                del self.running[tenant_id]


class SubmitResolver(TenantLookups):
    """`check_target` for the API's event loop: the lookup off the loop (`TenantLookups`), bounded in time and
    per tenant: the submit gets a 422 after `timeout_seconds`, and a tenant whose earlier lookup is still
    running gets a 429 instead of another thread.
    """

    def __init__(
        self,
        *,
        threads: int = 8,
        per_tenant: int = 1,
        timeout_seconds: float = 5.0,
        resolver: Resolver = resolve_host,
    ) -> None:
        super().__init__(threads=threads, per_tenant=per_tenant, thread_name_prefix="webhook-dns")
        self.timeout_seconds, self.resolver = timeout_seconds, resolver

    async def check(self, url: str, *, allow_private: bool, tenant_id: str) -> None:
        """As `check_target`, awaited; `LimitExceededError` while this tenant's earlier lookup still runs."""
        host, port = _host_and_port(url)
        if allow_private:
            return
        lookup = self.try_start(tenant_id, self.resolver, host, port)
        if lookup is None:
            raise LimitExceededError(
                "webhook_url: an earlier lookup of your webhook host has not returned yet; retry later",
                retry_after_seconds=math.ceil(self.timeout_seconds),
            )
        try:
            addresses = await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(lookup)), self.timeout_seconds
            )
        except TimeoutError as exc:
            raise UnsafeWebhookTargetError(
                f"webhook_url host {host!r} did not resolve within {self.timeout_seconds:g} s"
            ) from exc
        _check_addresses(url, addresses)


class DeliveryLookups(TenantLookups):
    """`pin_target` for the dispatcher (`TenantLookups`, shared by every tick of the process, so a lookup left
    running by one tick still counts in the next): a tenant's next attempt waits for its running lookup, within
    its own deadline, instead of taking another thread.
    """

    def __init__(self, *, threads: int = 16, per_tenant: int = 1) -> None:
        super().__init__(threads=threads, per_tenant=per_tenant, thread_name_prefix="webhook-delivery-dns")

    async def pin(self, url: str, tenant_id: str, *, allow_private: bool, resolver: Resolver) -> PinnedTarget:
        """`pin_target(url)` off the event loop, in the tenant's turn; cancelled by the caller's deadline."""
        while (
            lookup := self.try_start(
                tenant_id, pin_target, url, allow_private=allow_private, resolver=resolver
            )
        ) is None:
            await anyio.sleep(LOOKUP_TURN_POLL_SECONDS)  # the tenant's earlier lookup has not returned yet
        return await asyncio.wrap_future(lookup)


_PROCESS_LOOKUPS: dict[int, DeliveryLookups] = {}
_PROCESS_LOOKUPS_LOCK = threading.Lock()


def delivery_lookups(settings: WebhookSettings) -> DeliveryLookups:
    """This process's `DeliveryLookups` for `settings.webhook_concurrency` threads (made on first use): every
    tick shares it, so a lookup left running by one tick still counts in the next."""
    with _PROCESS_LOOKUPS_LOCK:
        lookups = _PROCESS_LOOKUPS.get(settings.webhook_concurrency)
        if lookups is None:
            lookups = DeliveryLookups(threads=settings.webhook_concurrency)
            _PROCESS_LOOKUPS[settings.webhook_concurrency] = lookups
        return lookups


def event_envelope(event: str, created_at: dt.datetime, payload: dict[str, Any]) -> dict[str, Any]:
    """The body sent for one outbox row: Standard Webhooks' `type`, `timestamp` and `data`.

    The workers' finalize step names success `job.succeeded`, and rows it wrote before it used
    `db.webhook_events.job_event_data` carry an `event` key in the payload; both are normalised here so
    receivers see one shape and one vocabulary.
    """
    data = {key: value for key, value in payload.items() if key != "event"}
    return {"type": EVENT_ALIASES.get(event, event), "timestamp": created_at.isoformat(), "data": data}


def _new_delivery(job: Job, url: str, event: str, now: dt.datetime) -> WebhookDelivery:
    return WebhookDelivery(
        id=uuid.uuid4().hex,
        tenant_id=job.tenant_id,
        job_id=job.id,
        event=event,
        url=url,
        payload=job_event_data(job),
        status=DeliveryStatus.PENDING,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )


def job_reviewed_target(session: Session, job: Job) -> str | None:
    """Where the job's `job.reviewed` event would go (the job's webhook, else the tenant's), or None when it
    would not be written: the job does not want it, no URL, or it is already in the outbox. Cheap (two index
    probes), so the caller asks it before the exact count of a large job's reviews that the event needs."""
    if not wants_event(job.webhook_events, EVENT_REVIEWED):
        return None
    url = job.webhook_url or session.scalar(select(Tenant.webhook_url).where(Tenant.id == job.tenant_id))
    if not url:
        return None
    sent = session.scalar(
        select(WebhookDelivery.id)
        .where(WebhookDelivery.job_id == job.id, WebhookDelivery.event == EVENT_REVIEWED)
        .limit(1)
    )
    return None if sent is not None else str(url)


def enqueue_job_reviewed(
    session: Session, job: Job, reviews: dict[str, int], *, now: dt.datetime | None = None
) -> bool:
    """Put the `job.reviewed` event (every delivered image has a review decision) in the outbox, once per job,
    for the job's webhook target (else the tenant's); `reviews` are the approved/rejected counts it carries.
    Returns True when a row was written. The caller holds the job's row lock, so two last decisions made
    at once write one event."""
    url = job_reviewed_target(session, job)
    if url is None:
        return False
    delivery = _new_delivery(job, url, EVENT_REVIEWED, now or utcnow())
    delivery.payload = {**delivery.payload, "reviews": dict(reviews)}
    session.add(delivery)
    return True


def emit_job_events(session: Session, settings: WebhookSettings, *, now: dt.datetime | None = None) -> int:
    """Write the outbox rows for events that happened since the last call; returns how many were written."""
    now = now or utcnow()
    target = func.coalesce(Job.webhook_url, Tenant.webhook_url)
    lookback = now - dt.timedelta(seconds=TERMINAL_LOOKBACK_SECONDS)
    rows = session.execute(
        select(Job, target)
        .join(Tenant, Tenant.id == Job.tenant_id)
        .where(target.is_not(None), Job.status != JobStatus.QUEUED)
        .where(or_(Job.finished_at.is_(None), Job.finished_at > lookback))
        .execution_options(populate_existing=True)  # counters move under us: read them fresh
    ).all()
    if not rows:
        return 0
    sent: dict[tuple[str, str], dt.datetime] = {
        (str(job_id), event): last
        for job_id, event, last in session.execute(
            select(WebhookDelivery.job_id, WebhookDelivery.event, func.max(WebhookDelivery.created_at))
            .where(WebhookDelivery.job_id.in_([job.id for job, _ in rows]))
            .group_by(WebhookDelivery.job_id, WebhookDelivery.event)
        ).all()
    }
    last_progress = _last_progress_counts(session, [job.id for job, _ in rows])
    written = 0
    interval = dt.timedelta(seconds=settings.webhook_progress_interval_seconds)
    for job, url in rows:
        wanted = partial(wants_event, job.webhook_events)
        if (job.id, EVENT_STARTED) not in sent and job.started_at is not None and wanted(EVENT_STARTED):
            session.add(_new_delivery(job, url, EVENT_STARTED, now))
            written += 1
        terminal = TERMINAL_EVENTS.get(job.status)
        if terminal is not None:
            names = {terminal, f"job.{job.status.value}"}  # the finalize step may have written it already
            if not any((job.id, name) in sent for name in names) and wanted(terminal):
                session.add(_new_delivery(job, url, terminal, now))
                written += 1
            continue
        if job.status is not JobStatus.RUNNING or not wanted(EVENT_PROGRESS):
            continue
        # The first progress event comes an interval after the start: the job.started row, or the start itself
        # when the job did not subscribe to job.started.
        started = None if wanted(EVENT_STARTED) else job.started_at
        previous = sent.get((job.id, EVENT_PROGRESS)) or sent.get((job.id, EVENT_STARTED)) or started
        counts = (job.images_done, job.images_failed, job.images_rejected)
        moved = counts != (0, 0, 0) and last_progress.get(job.id) != counts
        if previous is not None and now - previous >= interval and moved:
            session.add(_new_delivery(job, url, EVENT_PROGRESS, now))
            written += 1
    return written


def _last_progress_counts(session: Session, job_ids: list[str]) -> dict[str, tuple[int, int, int]]:
    latest = (
        select(WebhookDelivery.job_id, func.max(WebhookDelivery.created_at).label("at"))
        .where(WebhookDelivery.job_id.in_(job_ids), WebhookDelivery.event == EVENT_PROGRESS)
        .group_by(WebhookDelivery.job_id)
        .subquery()
    )
    rows = session.execute(
        select(WebhookDelivery.job_id, WebhookDelivery.payload).join(
            latest, (latest.c.job_id == WebhookDelivery.job_id) & (latest.c.at == WebhookDelivery.created_at)
        )
    ).all()
    counts = {}
    for job_id, payload in rows:
        data = payload.get("data", payload)
        counts[job_id] = (data.get("images_done"), data.get("images_failed"), data.get("images_rejected"))
    return counts


@dataclass(frozen=True, slots=True)
class DispatchReport:
    """What one `dispatch_due` call did."""

    delivered: int = 0
    retrying: int = 0
    failed: int = 0


def backoff_seconds(attempts: int, settings: WebhookSettings, *, rng: random.Random | None = None) -> float:
    """Delay before attempt `attempts + 1`: base · 2^(attempts-1), capped, with up to 10 % jitter."""
    delay = min(
        settings.webhook_backoff_max_seconds,
        settings.webhook_backoff_base_seconds * 2 ** max(0, attempts - 1),
    )
    return delay * (1 + 0.1 * (rng or random).random())


@dataclass(frozen=True, slots=True)
class _Due:
    id: str
    tenant_id: str
    url: str
    body: dict[str, Any]
    attempts: int
    secret: str | None
    previous_secret: str | None  # a rotated secret still in its grace period: it signs too


def _claim_due(factory: sessionmaker[Session], settings: WebhookSettings, now: dt.datetime) -> list[_Due]:
    # At most `webhook_concurrency_per_tenant` rows per tenant per tick: a tenant whose receiver is slow has its
    # backlog spread over ticks instead of filling the batch (each tick waits for at most one attempt deadline).
    # Rows are claimed by pushing their next attempt past the deadline, so a second dispatcher skips them.
    lease_until = now + dt.timedelta(seconds=settings.webhook_timeout_seconds * 3)
    ranked = (
        select(
            WebhookDelivery.id,
            func.row_number()
            .over(
                partition_by=WebhookDelivery.tenant_id,
                order_by=(WebhookDelivery.next_attempt_at, WebhookDelivery.created_at),
            )
            .label("rank"),
        )
        .where(WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= now)
        .subquery()
    )
    candidates = select(ranked.c.id).where(ranked.c.rank <= settings.webhook_concurrency_per_tenant)
    with transaction(factory) as session:
        ids = session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.id.in_(candidates))
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.created_at)
            .limit(settings.webhook_batch_size)
            .with_for_update(skip_locked=True)
        ).all()
        if not ids:
            return []
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(ids))
            .values(next_attempt_at=lease_until)
            .execution_options(synchronize_session=False)
        )
        rows = session.execute(
            select(
                WebhookDelivery.id,
                WebhookDelivery.tenant_id,
                WebhookDelivery.event,
                WebhookDelivery.created_at,
                WebhookDelivery.url,
                WebhookDelivery.payload,
                WebhookDelivery.attempts,
                Tenant.webhook_secret,
                Tenant.previous_webhook_secret,
                Tenant.previous_webhook_secret_until,
            )
            .join(Tenant, Tenant.id == WebhookDelivery.tenant_id)
            .where(WebhookDelivery.id.in_(ids))
            .order_by(WebhookDelivery.created_at)
        ).all()
        return [
            _Due(
                id_,
                tenant_id,
                url,
                event_envelope(event, created, payload),
                attempts,
                secret,
                previous if previous_until is not None and previous_until > now else None,
            )
            for id_, tenant_id, event, created, url, payload, attempts, secret, previous, previous_until in rows
        ]


@dataclass(frozen=True, slots=True)
class PinnedTarget:
    """Where one attempt connects: the checked address, and the name the request and TLS still carry."""

    url: str  # the webhook URL with its host replaced by the checked IP address
    host_header: str  # the original host[:port], sent as Host
    server_name: str  # the original host name, sent as TLS SNI and checked against the certificate


def pin_target(url: str, *, allow_private: bool, resolver: Resolver = resolve_host) -> PinnedTarget:
    """Resolve `url`'s host once, check the addresses (see `check_target`) and pin the first one.

    The connection goes to that address, never to a second resolution of the name: a name that answers a
    public address to the check and 127.0.0.1 to the connection (DNS rebinding) reaches only what was checked.
    """
    check_target(url, allow_private=True)  # scheme, credentials, port
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = resolver(host, port)
    if not addresses:
        raise WebhookHostUnresolvedError(f"webhook_url {url!r}: host {host!r} has no address")
    if not allow_private:
        refused = [address for address in addresses if not _is_public(address)]
        if refused:
            raise UnsafeWebhookTargetError(
                f"webhook_url {url!r}: resolves to a loopback, private or link-local address "
                f"({', '.join(refused)}); refused unless the operator sets CATALOGAN_WEBHOOK_ALLOW_PRIVATE_TARGETS"
            )
    address = addresses[0].split("%", 1)[0]
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    host_header = parts.netloc.rsplit("@", 1)[-1]
    return PinnedTarget(parts._replace(netloc=netloc).geturl(), host_header, host)


async def deliver(
    http: httpx.AsyncClient,
    url: str,
    message_id: str,
    payload: dict[str, Any],
    secret: str,
    settings: WebhookSettings,
    *,
    previous_secret: str | None = None,
    resolver: Resolver = resolve_host,
    lookups: DeliveryLookups | None = None,
    tenant_id: str = "",
) -> None:
    """POST one signed event to the pinned address of `url`, all within `webhook_timeout_seconds`; raise
    `httpx.HTTPError`, `TimeoutError` or `UnsafeWebhookTargetError` when it was not accepted.

    The name is resolved through `lookups` in `tenant_id`'s turn (a fresh `DeliveryLookups` when None).

    The deadline covers resolving, connecting, sending and reading the answer (a receiver dripping bytes cannot
    hold an attempt longer); at most `webhook_max_response_bytes` of the answer are read. Redirects are not
    followed: a 3xx is a failed attempt.
    """
    lookups = lookups or DeliveryLookups(threads=1)
    with anyio.fail_after(settings.webhook_timeout_seconds):
        target = await lookups.pin(
            url, tenant_id, allow_private=settings.webhook_allow_private_targets, resolver=resolver
        )
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        headers = signed_headers(secret, message_id, body, also=[previous_secret] if previous_secret else [])
        headers["content-type"] = "application/json"
        headers["user-agent"] = USER_AGENT
        headers["host"] = target.host_header
        extensions = {"sni_hostname": target.server_name} if url.startswith("https") else {}
        request = http.build_request("POST", target.url, content=body, headers=headers, extensions=extensions)
        response = await http.send(request, stream=True)
        try:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= settings.webhook_max_response_bytes:
                    break  # the status is what counts; the rest of the body is not read
        finally:
            await response.aclose()
    if not 200 <= response.status_code < 300:
        raise httpx.HTTPStatusError(
            f"receiver answered HTTP {response.status_code}", request=response.request, response=response
        )


def _outcome(
    row: _Due, error: str | None, permanent: bool, settings: WebhookSettings
) -> tuple[dict[str, Any], str]:
    attempts = row.attempts + 1
    values: dict[str, Any] = {"attempts": attempts}
    if error is None:
        return values | {
            "status": DeliveryStatus.DELIVERED,
            "delivered_at": utcnow(),
            "last_error": None,
        }, "ok"
    if permanent or attempts >= settings.webhook_max_attempts:
        return values | {"status": DeliveryStatus.FAILED, "last_error": error[:MAX_ERROR_CHARS]}, "failed"
    retry_at = utcnow() + dt.timedelta(seconds=backoff_seconds(attempts, settings))
    return values | {"next_attempt_at": retry_at, "last_error": error[:MAX_ERROR_CHARS]}, "retrying"


async def _attempt(
    http: httpx.AsyncClient,
    row: _Due,
    settings: WebhookSettings,
    resolver: Resolver,
    lookups: DeliveryLookups,
) -> tuple[str | None, bool]:
    if not row.secret:
        return "the tenant has no webhook secret", True
    try:
        await deliver(
            http,
            row.url,
            row.id,
            row.body,
            row.secret,
            settings,
            previous_secret=row.previous_secret,
            resolver=resolver,
            lookups=lookups,
            tenant_id=row.tenant_id,
        )
    except WebhookHostUnresolvedError as exc:  # retried with backoff, up to webhook_max_attempts
        return str(exc), False
    except UnsafeWebhookTargetError as exc:
        return str(exc), True
    except TimeoutError:
        return f"no answer within {settings.webhook_timeout_seconds:g} s", False
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}", False
    except httpx.InvalidURL as exc:  # not an HTTPError: a URL no attempt can send
        return f"webhook_url {row.url!r}: not a URL ({exc})", True
    except Exception as exc:
        # Anything else is still this row's failure alone: escaping, it would cancel every other tenant's
        # attempt of this tick, and the row, never recorded, would be claimed (and fail) again each lease.
        logger.exception("webhook delivery %s to %r failed unexpectedly", row.id, row.url)
        return f"{type(exc).__name__}: {exc}", False
    return None, False


def dispatch_due(
    factory: sessionmaker[Session],
    settings: WebhookSettings,
    *,
    now: dt.datetime | None = None,
    resolver: Resolver = resolve_host,
    lookups: DeliveryLookups | None = None,
) -> DispatchReport:
    """Deliver the due outbox rows once each, concurrently; schedule retries with backoff; give up after the
    max attempts. Returns after at most about one attempt deadline.

    Up to `webhook_concurrency` attempts run at once, and at most `webhook_concurrency_per_tenant` rows of one
    tenant are claimed per call, so a receiver that is slow or never answers delays only its own tenant's
    events. Each row's outcome is written as soon as its attempt ends. Host lookups go through `lookups`
    (the process's `delivery_lookups()` when None), which outlives the tick.
    """
    now = now or utcnow()
    lookups = lookups or delivery_lookups(settings)
    rows = _claim_due(factory, settings, now)
    if not rows:
        return DispatchReport()
    outcomes: list[str] = []

    def record(row: _Due, error: str | None, permanent: bool) -> None:
        values, outcome = _outcome(row, error, permanent, settings)
        with transaction(factory) as session:
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == row.id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
        outcomes.append(outcome)

    async def run_all() -> None:
        slots = anyio.Semaphore(settings.webhook_concurrency)
        limits = httpx.Limits(max_connections=settings.webhook_concurrency, max_keepalive_connections=0)
        # trust_env=False: a proxy from the environment would resolve the name again, defeating the pin.
        timeout = httpx.Timeout(settings.webhook_timeout_seconds)
        async with httpx.AsyncClient(
            follow_redirects=False, trust_env=False, limits=limits, timeout=timeout
        ) as http:

            async def one(row: _Due) -> None:
                async with slots:
                    error, permanent = await _attempt(http, row, settings, resolver, lookups)
                await anyio.to_thread.run_sync(record, row, error, permanent)

            async with anyio.create_task_group() as group:
                for row in rows:
                    group.start_soon(one, row)

    anyio.run(run_all)
    return DispatchReport(outcomes.count("ok"), outcomes.count("retrying"), outcomes.count("failed"))


def run_webhook_tick(
    factory: sessionmaker[Session], settings: WebhookSettings, *, resolver: Resolver = resolve_host
) -> DispatchReport:
    """One periodic step: write new job events into the outbox, then deliver what is due."""
    with transaction(factory) as session:
        emit_job_events(session, settings)
    return dispatch_due(factory, settings, resolver=resolver)
