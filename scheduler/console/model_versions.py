"""The console's models page: registered versions, metrics, sample grids, training curves; promote and retire.

Files shown for a version are read from the object store, in the folder of its checkpoint
(`checkpoint_uri` under the configured store): `history.jsonl` (training curves, drawn as inline SVG),
`samples[-<step>].png` (one row per category) and `loss[-<step>].png`. A version whose checkpoint lives
elsewhere, or whose folder holds none of them, says so. The shipped `fashion-cgan` (checkpoint sha256 equal
to `models/weights/fashion-cgan/generator.sha256`) shows the `samples.png` and `loss.png` shipped with it.

Promote and retire are for operator keys only (`CATALOGAN_CONSOLE_OPERATOR_KEY_IDS`); tenant keys see the
page without the buttons, and a POST from them is a 403. Promotion applies the same metric gates as
`catalogan models promote` (`db.promotion.promote_version`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import and_, or_, select

from db.console_sessions import SignedIn
from db.engine import transaction
from db.errors import CataloganError, NotFoundError
from db.job_specs import MAX_MODEL_VERSION
from db.model_versions import describe_model_version, get_model_version, transition_model_version
from db.promotion import finite_metric, promote_version
from db.status import ModelVersionStatus
from db.storage.base import ObjectStore
from db.tables import ModelVersion
from scheduler.api.cursors import MAX_CURSOR_CHARS, decode_cursor, encode_cursor
from scheduler.console.auth import Console, ConsoleDep, CsrfUserDep, UserDep
from scheduler.console.curves import curves_svg, parse_history
from scheduler.console.pages import ConsoleNotFoundError, NotAllowedError, render
from scheduler.errors import RequestValidationError

router = APIRouter(prefix="/console", include_in_schema=False)

MODELS_PAGE_SIZE = 10  # versions per page of the models page: each costs a folder listing and a history read
MAX_HISTORY_BYTES = 32 * 1024 * 1024  # a history larger than this is not drawn (checked before reading)
SHIPPED_WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights"
_STEP_FILE = re.compile(r"^(samples|loss)(?:-(\d+))?\.png$")
NameParam = Annotated[str, PathParam(max_length=64)]
# model_versions.version is a 32-bit column: a bigger number is a 422 here, not a database error (500).
VersionParam = Annotated[int, PathParam(ge=0, le=2**31 - 1)]


@dataclass(frozen=True)
class VersionFiles:
    """The keys (in the store) or shipped paths of one version's pictures and history."""

    samples_key: str | None = None
    loss_key: str | None = None
    history_key: str | None = None
    history_bytes: int = 0
    shipped_dir: Path | None = None


def _folder(store: ObjectStore, uri: str) -> str | None:
    """The folder key of `uri` in `store` (as `store.uri(key)` writes URIs), or None when it is elsewhere."""
    for base in {store.url.rstrip("/") + "/", store.url if store.url.endswith("/") else store.url + "/"}:
        if uri.startswith(base):
            folder = uri[len(base) :].lstrip("/").rpartition("/")[0]
            return folder or None
    return None


def _shipped_dir(row: ModelVersion) -> Path | None:
    folder = SHIPPED_WEIGHTS / row.name
    stated = folder / "generator.sha256"
    if row.checkpoint_sha256 and stated.is_file() and stated.read_text().split()[0] == row.checkpoint_sha256:
        return folder
    return None


def version_files(store: ObjectStore, row: ModelVersion) -> VersionFiles:
    """Find the newest samples and loss pictures and the history next to the version's checkpoint."""
    folder = _folder(store, row.checkpoint_uri)
    best: dict[str, tuple[int, str]] = {}
    history_key, history_bytes = None, 0
    if folder is not None:
        for info in store.list(folder + "/"):
            name = info.key[len(folder) + 1 :]
            if name == "history.jsonl":
                history_key, history_bytes = info.key, info.size_bytes
                continue
            match = _STEP_FILE.match(name)
            if match:
                step = int(match.group(2) or 1 << 62)  # the unnumbered final picture wins
                if match.group(1) not in best or step > best[match.group(1)][0]:
                    best[match.group(1)] = (step, info.key)
    return VersionFiles(
        samples_key=best.get("samples", (0, None))[1],
        loss_key=best.get("loss", (0, None))[1],
        history_key=history_key,
        history_bytes=history_bytes,
        shipped_dir=_shipped_dir(row),
    )


def _version_view(store: ObjectStore, row: ModelVersion) -> dict[str, Any]:
    files = version_files(store, row)
    curves: list[str] = []
    curves_note = "no curves recorded"
    if files.history_key is not None:
        if files.history_bytes > MAX_HISTORY_BYTES:
            curves_note = f"history.jsonl is over {MAX_HISTORY_BYTES // (1024 * 1024)} MiB: not drawn"
        else:
            history = parse_history(store.get(files.history_key))
            if history.losses():
                curves.append(curves_svg(f"{row.name}@{row.version}: losses against step", history.losses()))
            if history.fid():
                curves.append(curves_svg(f"{row.name}@{row.version}: FID_fm against step", history.fid()))
            if not curves:
                curves_note = "history.jsonl holds no loss or FID_fm values"
    base = f"/console/models/{row.name}/{row.version}"
    has_samples = files.samples_key is not None or (
        files.shipped_dir is not None and (files.shipped_dir / "samples.png").is_file()
    )
    has_loss_png = files.loss_key is not None or (
        files.shipped_dir is not None and (files.shipped_dir / "loss.png").is_file()
    )
    view = describe_model_version(row)
    return {
        **view,
        # Numbers only: the stored card also holds tables, file paths and storage URIs (the memorization
        # index, the closest-pairs picture) that are the operator's business, not a tenant's.
        "metrics": {
            key: value
            for key, value in view["metrics"].items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        },
        "per_category": per_category_rows(view["metrics"], view["categories"]),
        "samples_url": f"{base}/samples.png" if has_samples else None,
        "loss_url": f"{base}/loss.png" if has_loss_png and not curves else None,
        "curves": curves,
        "curves_note": curves_note,
        "shipped": files.shipped_dir is not None,
    }


PER_CATEGORY_KEYS = (  # the per-category tables `catalogan evaluate` records, in the table's column order
    "per_class_accuracy",
    "real_per_class_accuracy",
    "per_class_fid_fm",
    "per_class_precision",
    "per_class_recall",
)


def per_category_rows(metrics: dict[str, Any], categories: list[str]) -> list[dict[str, Any]]:
    """The stored per-category evaluation as table rows, one per category of the model (or of the recorded
    table when the row names none): generated conditional accuracy, the evaluator's accuracy on real images
    of the category, their ratio (what `min_category_accuracy_ratio` gates), FID_fm, precision, recall.
    Numbers only; a value that is missing or not a finite number is None (shown as a dash)."""
    tables = {key: metrics.get(key) for key in PER_CATEGORY_KEYS}
    accuracy = tables["per_class_accuracy"]
    if not isinstance(accuracy, dict) or not accuracy:
        return []
    rows = []
    for category in categories or [name for name in accuracy if isinstance(name, str)]:
        row: dict[str, Any] = {"category": category}
        for key, table in tables.items():
            row[key] = finite_metric(table.get(category)) if isinstance(table, dict) else None
        generated, real = row["per_class_accuracy"], row["real_per_class_accuracy"]
        row["ratio"] = generated / real if generated is not None and real else None
        rows.append(row)
    return rows


def _after_cursor(cursor: str) -> Any:
    """The keyset condition of a models-page cursor: versions after (name, version) in the page's order."""
    name, version = decode_cursor(cursor, arity=2)
    if (
        not isinstance(name, str)
        or not isinstance(version, int)
        or isinstance(version, bool)
        or not 0 <= version <= MAX_MODEL_VERSION  # the version column is a 32-bit integer
    ):
        raise RequestValidationError("cursor", "opaque_cursor", "cursor: not a cursor this console issued")
    return or_(ModelVersion.name > name, and_(ModelVersion.name == name, ModelVersion.version < version))


@router.get("/models", response_class=HTMLResponse)
async def models_page(
    request: Request,
    console: ConsoleDep,
    user: UserDep,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR_CHARS)] = None,
) -> Response:
    """The registered versions by name, newest first per name, with metrics, sample grid and curves; a page
    (`MODELS_PAGE_SIZE`) at a time."""
    limit = MODELS_PAGE_SIZE
    condition = _after_cursor(cursor) if cursor else None

    def load() -> tuple[list[dict[str, Any]], str | None]:
        query = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version.desc())
        if condition is not None:
            query = query.where(condition)
        with console.services.read_sessions() as session:
            rows = session.scalars(query.limit(limit + 1)).all()
        page = rows[:limit]
        next_cursor = encode_cursor(page[-1].name, page[-1].version) if len(rows) > limit else None
        return [_version_view(console.services.store, row) for row in page], next_cursor

    versions, next_cursor = await run_in_threadpool(load)
    return render(console, request, "models.html", user, versions=versions, next_cursor=next_cursor)


def _picture(console: Console, name: str, version: int, kind: str) -> bytes:
    with console.services.read_sessions() as session:
        try:
            row = get_model_version(session, name, version)
        except NotFoundError as exc:
            raise ConsoleNotFoundError(str(exc)) from exc
    files = version_files(console.services.store, row)
    key = files.samples_key if kind == "samples" else files.loss_key
    if key is not None:
        return console.services.store.get(key)
    if files.shipped_dir is not None and (files.shipped_dir / f"{kind}.png").is_file():
        return (files.shipped_dir / f"{kind}.png").read_bytes()
    raise ConsoleNotFoundError(f"model {name}@{version} has no {kind} picture")


@router.get("/models/{name}/{version}/samples.png")
async def samples_png(name: NameParam, version: VersionParam, console: ConsoleDep, user: UserDep) -> Response:
    """The version's newest sample grid (one row per category)."""
    data = await run_in_threadpool(_picture, console, name, version, "samples")
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.get("/models/{name}/{version}/loss.png")
async def loss_png(name: NameParam, version: VersionParam, console: ConsoleDep, user: UserDep) -> Response:
    """The version's loss picture, when training left one and no history.jsonl."""
    data = await run_in_threadpool(_picture, console, name, version, "loss")
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


def _require_operator(console: Console, user: SignedIn) -> None:
    if user.key_id not in console.settings.operator_key_ids:
        raise NotAllowedError("only operator keys may promote or retire model versions; this key may look")


@router.post("/models/{name}/{version}/promote")
def promote(name: NameParam, version: VersionParam, console: ConsoleDep, user: CsrfUserDep) -> Response:
    """Make the version production (operator keys only), through the promotion metric gates."""
    _require_operator(console, user)
    try:
        promote_version(console.services.session_factory, f"{name}@{version}")
    except NotFoundError as exc:
        raise ConsoleNotFoundError(str(exc)) from exc
    except CataloganError as exc:  # below the gates, or a transition the map refuses
        raise NotAllowedError(str(exc)) from exc
    return RedirectResponse("/console/models", status_code=303)


@router.post("/models/{name}/{version}/retire")
def retire(name: NameParam, version: VersionParam, console: ConsoleDep, user: CsrfUserDep) -> Response:
    """Retire the version (operator keys only)."""
    _require_operator(console, user)
    try:
        with transaction(console.services.session_factory) as session:
            row = get_model_version(session, name, version)
            transition_model_version(session, row, ModelVersionStatus.RETIRED)
    except NotFoundError as exc:
        raise ConsoleNotFoundError(str(exc)) from exc
    except CataloganError as exc:
        raise NotAllowedError(str(exc)) from exc
    return RedirectResponse("/console/models", status_code=303)
