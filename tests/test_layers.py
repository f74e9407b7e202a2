"""The layers of DESIGN.md hold: db ← models ← workers, db ← scheduler, and no import circles.

    db          imports nothing of ours
    models      imports db
    workers     imports db, models
    scheduler   imports db (the CLI root loads the torch command groups of models/ and workers/ lazily, by
                name, never with an import statement)

The import statements are read from the source (module level and inside functions alike), so a lazy import
that breaks a layer or closes a circle is caught too; the torch-free check imports every module for real.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("db", "models", "workers", "scheduler")
ALLOWED: dict[str, set[str]] = {
    "db": {"db"},
    "models": {"db", "models"},
    "workers": {"db", "models", "workers"},
    "scheduler": {"db", "scheduler"},
}
# Alembic runs db/migrations/env.py inside its own context; it is not importable on its own.
NOT_IMPORTABLE_ALONE = {"db.migrations.env"}
HEAVY = {"torch", "torchvision", "ray", "models", "workers"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(*packages: str) -> dict[str, Path]:
    """Every module of `packages`, by dotted name."""
    return {
        _module_name(path): path
        for package in packages
        for path in sorted((ROOT / package).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The modules of ours that `path` imports (`from a.b import c` is `a.b.c` when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                yield target


def _graph() -> dict[str, set[str]]:
    modules = _modules(*PACKAGES)
    known = set(modules)
    return {name: set(_imports(name, path, known)) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_each_package_imports_only_the_layers_below_it() -> None:
    """Given every import statement of db, models, workers and scheduler (lazy ones included), then none
    reaches a package its layer may not import: models and workers never import scheduler, db imports none."""
    wrong = [
        f"{module} imports {target}"
        for module, targets in sorted(_graph().items())
        for target in sorted(targets)
        if target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    ]
    assert wrong == []


def test_only_the_http_layer_imports_the_wire_schemas() -> None:
    """Given every module of db, models, workers and scheduler, then only the HTTP front door (scheduler.api and
    the console that renders its pages) imports `scheduler.api.schemas`: services take and return domain types."""
    modules = _modules(*PACKAGES)
    known = set(modules)
    front_doors = ("scheduler.api", "scheduler.console")
    offenders = sorted(
        name
        for name, path in modules.items()
        if not name.startswith(front_doors) and "scheduler.api.schemas" in set(_imports(name, path, known))
    )
    assert offenders == [], f"service modules import wire schemas: {offenders}"


def test_no_module_of_ours_is_part_of_an_import_circle() -> None:
    """Given the import graph of our four packages, then it has no circle (a lazy import inside a function
    counts: it is the same circle, only deferred)."""
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    """Given a graph a → b → c → a plus a tail, then the finder reports exactly the circle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert sorted(_cycles(graph)) == [["a", "b", "c"], ["e"]]


PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy})))
"""


def test_every_db_and_scheduler_module_loads_without_torch_or_models(tmp_path: Path) -> None:
    """Given a fresh interpreter, when it imports every module of db and scheduler, then no torch, Ray,
    models or workers module is loaded (the API and the admin CLI start small)."""
    names = sorted(set(_modules("db", "scheduler")) - NOT_IMPORTABLE_ALONE)
    env = {"CATALOGAN_DATA_DIR": str(tmp_path), "CATALOGAN_STORAGE_URL": "memory://", "PATH": "/usr/bin:/bin"}
    probe = PROBE.replace("{heavy}", repr(HEAVY))
    result = subprocess.run(
        [sys.executable, "-c", probe, *names], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert len(names) > 40  # the walk found the packages' modules
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


# What bench/gpu_throughput.py and gpu_bench.py's sections 1, 2 and 4 import: torch-level modules only.
TORCH_LEVEL = (
    "models.build",
    "models.config",
    "models.ema",
    "models.evaluator",
    "models.inference",
    "models.latent_control",
    "models.memorization_index",
    "models.sampling",
    "models.steps",
    "workers.pixels",
)
SERVICE_LIBRARIES = {
    "sqlalchemy",
    "pydantic",
    "pydantic_settings",
    "alembic",
    "boto3",
    "celery",
    "ray",
    "redis",
}


def test_the_generator_and_inference_modules_load_without_sql_pydantic_or_services(tmp_path: Path) -> None:
    """Given a fresh interpreter, when it imports the generator, inference and training-step modules, then no
    SQLAlchemy, pydantic, boto3, Celery, Ray or Redis module is loaded (a bare CUDA image with torch runs them:
    issue 19 point 6)."""
    probe = PROBE.replace("{heavy}", repr(SERVICE_LIBRARIES))
    env = {"CATALOGAN_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", probe, *TORCH_LEVEL],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
