"""The command-line options of creative control: one set of rules for `catalogan generate` and `catalogan jobs
submit` (docs/controlling.md, "Which options go together").

    --truncation PSI                          with items or a variation, not with --interpolate
    --variation-of SOURCE --strength S --count N
    --interpolate SOURCE SOURCE --frames N
    SOURCE = JOB_ID/INDEX, or the path of a PNG a job delivered (its job id, index and sha256 are read locally)

Torch- and SQL-free (the API-only CLI runs on the light install). Errors are `PlanningError`s whose message
names the option as typed, e.g. `--variation-of 'abc/²': must be JOB_ID/INDEX ...`; `option_as_typed` renames
a request field the API or planning refused (`variation.source.index`) after the option that set it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from db.errors import PlanningError
from db.job_specs import MAX_JOB_ID_CHARS
from db.source_files import MAX_SOURCE_FILE_BYTES, SourceFileError, read_source_file

# JOB_ID/INDEX as typed: a job id as the API makes them, an index of 1 to 9 ASCII digits (`str.isdigit` let
# '²' through to `int()`, and '٣' in as index 3), as `db.job_specs.MODEL_VERSION_PATTERN` for name@version.
IMAGE_REF_PATTERN = re.compile(rf"([A-Za-z0-9_-]{{1,{MAX_JOB_ID_CHARS}}})/([0-9]{{1,9}})")
IMAGE_REF_RULE = (
    "must be JOB_ID/INDEX (JOB_ID of letters, digits, '_' and '-'; INDEX of 1 to 9 digits 0-9), e.g. 4f0c.../3, "
    f"or the path of a PNG a job delivered (at most {MAX_SOURCE_FILE_BYTES >> 20} MiB)"
)

# Options that mean something only next to another. Alone they were dropped without a word, and a plain job of
# items ran instead of the variations or frames asked for.
OPTION_NEEDS = (
    ("--strength", "--variation-of"),
    ("--count", "--variation-of"),
    ("--frames", "--interpolate"),
)
CONTROL_NEEDS = (("--variation-of", ("--strength", "--count")), ("--interpolate", ("--frames",)))
ITEM_OPTIONS = ("--category", "--sku-file")  # where a job of items gets them (jobs submit has no --sku-file)

# Request fields one control option sets (its sources: `source_option`).
OPTION_OF_FIELD = {
    "truncation": "--truncation",
    "variation.strength": "--strength",
    "variation.count": "--count",
    "interpolation.frames": "--frames",
}
SOURCE_FIELDS = (
    ("variation.source", "--variation-of", 0),
    ("interpolation.start", "--interpolate", 0),
    ("interpolation.end", "--interpolate", 1),
)


def parse_image_ref(option: str, value: str) -> dict[str, Any]:
    """A source image as typed: `JOB_ID/INDEX` as `{"job_id", "index"}`, or a catalogan PNG's path as `{"job_id",
    "index", "sha256"}` read from the file (`db.source_files`: bounded, local, the bytes are not sent).

    `PlanningError` naming the option and the value as typed: rule `image_ref` for a value that is neither,
    `image_file` for a file that cannot name an image (missing, too large, not a catalogan PNG)."""
    match = IMAGE_REF_PATTERN.fullmatch(value)
    if match is not None:
        return {"job_id": match.group(1), "index": int(match.group(2))}
    # A value that is no JOB_ID/INDEX is a file when it says so (.png) or is there; else the typo is named.
    if not (value.lower().endswith(".png") or os.path.lexists(value)):
        raise PlanningError(option, "image_ref", f"{option} {value!r}: {IMAGE_REF_RULE}")
    try:
        return read_source_file(value).to_json()
    except SourceFileError as exc:
        raise PlanningError(option, "image_file", f"{option} {value!r}: {exc}") from None


def check_option_combinations(given: Mapping[str, bool]) -> None:
    """`PlanningError` naming the options as typed when they do not go together: --variation-of with
    --interpolate; --strength/--count without --variation-of, --frames without --interpolate (or a control
    without them); --category/--sku-file with a control (its images come from its source images);
    --truncation with --interpolate (each end keeps its own ψ).

    `given`: whether each option was given, for --truncation, --variation-of, --strength, --count,
    --interpolate, --frames and the command's item options (--category, and --sku-file where it has one)."""
    if given["--variation-of"] and given["--interpolate"]:
        raise PlanningError(
            "--variation-of", "one_control", "--variation-of: not with --interpolate (one job, one kind)"
        )
    for option, needed in OPTION_NEEDS:
        if given[option] and not given[needed]:
            raise PlanningError(option, "needs_option", f"{option}: only with {needed}")
    for control, options in CONTROL_NEEDS:
        missing = [option for option in options if not given[option]]
        if given[control] and missing:
            raise PlanningError(missing[0], "required", f"{' and '.join(missing)}: required with {control}")
    sources = [option for option in ITEM_OPTIONS if given.get(option)]
    for control, _ in CONTROL_NEEDS:
        if given[control] and sources:
            raise PlanningError(
                sources[0],
                "one_source",
                f"{'/'.join(sources)}: not with {control} (its images' category comes from the source images)",
            )
    if given["--truncation"] and given["--interpolate"]:
        raise PlanningError(
            "--truncation",
            "not_with_interpolation",
            "--truncation: not with --interpolate (the frames lie between the two images' own latents)",
        )


def _typed(value: Any) -> str:
    """A value as the command line showed it: `0.8`, `'abc/3'`, `5`."""
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def option_as_typed(field: str, typed: Mapping[str, Any]) -> str | None:
    """`--option VALUE` as typed for a request field one control option set (`variation.source.index` →
    `--variation-of 'abc/3'`, `interpolation.end` → `--interpolate 'abc/5'`, `truncation` → `--truncation 0.2`),
    or None for any other field. `typed` maps each option to its value as given (`--interpolate`: both)."""
    for prefix, option, position in SOURCE_FIELDS:
        if (field == prefix or field.startswith(f"{prefix}.")) and typed.get(option) is not None:
            value = typed[option]
            return f"{option} {_typed(value[position] if isinstance(value, tuple | list) else value)}"
    named = OPTION_OF_FIELD.get(field)
    if named is None or typed.get(named) is None:
        return None
    return f"{named} {_typed(typed[named])}"
