"""How many images one chunk may hold, and each queue's default (constants only: imported by the job spec and
by `db.pipeline_settings.ChunkSizeSettings`, where an operator overrides the defaults)."""

from __future__ import annotations

from collections.abc import Mapping

MIN_CHUNK_SIZE = 1
MAX_CHUNK_SIZE = 4096
# Built-in default per queue; `CATALOGAN_CHUNK_SIZE_<QUEUE>` overrides it where jobs are planned.
DEFAULT_CHUNK_SIZES: Mapping[str, int] = {"interactive": 32, "bulk": 256, "backfill": 1024}
