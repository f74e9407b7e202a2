"""The `catalogan` command.

The root lives here and never imports torch. Command groups that need torch (`train`, `evaluate`,
`worker`, `generate`, ...) are defined next to their code and imported by name only when invoked
(Click's lazy-group pattern), so `catalogan --help`, `catalogan jobs ...` and the API start fast.
"""

from __future__ import annotations

from scheduler.cli.root import main

__all__ = ["main"]
