"""Every command block marked ```bash runnable in README.md and docs/cli.md runs and succeeds.

Each block runs with `bash -euo pipefail` in an empty folder with no CATALOGAN_* variable set (the embedded
default under ./catalogan-data/), with the project's `catalogan` first on PATH. Blocks of a file share nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/cli.md")
MARKER = "bash runnable"
BLOCK = re.compile(r"^```" + MARKER + r"\n(.*?)^```", re.M | re.S)


def runnable_blocks() -> list[tuple[str, int, str]]:
    """(document, line number, script) of every runnable block."""
    found = []
    for name in DOCUMENTS:
        text = (ROOT / name).read_text()
        for match in BLOCK.finditer(text):
            found.append((name, text.count("\n", 0, match.start()) + 1, match.group(1)))
    return found


BLOCKS = runnable_blocks()


def test_each_document_has_a_runnable_block() -> None:
    """Given README.md and docs/cli.md, when their blocks are collected, then each has at least one runnable."""
    assert {name for name, _, _ in BLOCKS} == set(DOCUMENTS)


@pytest.mark.parametrize(("document", "line", "script"), BLOCKS, ids=[f"{d}:{n}" for d, n, _ in BLOCKS])
def test_the_documented_commands_run(document: str, line: int, script: str, tmp_path: Path) -> None:
    """Given a runnable block, when it runs in an empty folder on the embedded default, then it exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CATALOGAN_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (
        f"{document}:{line} failed:\n{script}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    )
