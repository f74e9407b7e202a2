"""Object-key rules: every key is checked here before any backend sees it.

A key is relative and `/`-separated: `tenant/jobs/<job>/<category>/00000001.png`. Rejected, never rewritten:
empty keys, absolute keys (leading `/`), empty segments (`a//b`, a trailing `/`), `.` and `..` segments,
backslashes, NUL and other control characters, and keys longer than S3 allows. The error message names the
key (as `repr`) and the rule it broke, so a user can fix the request.
"""

from __future__ import annotations

import unicodedata

from db.errors import InvalidKeyError

# S3 limits a key to 1024 bytes of UTF-8; a local folder or a store prefix must fit in that too.
MAX_KEY_BYTES = 1024
# One user-provided segment (SKU, tenant, category) must leave room for the rest of the key.
MAX_SEGMENT_BYTES = 128


def _is_control(char: str) -> bool:
    # Cc = C0/C1 controls (NUL, \n, \t, DEL, ...); Cf = invisible format characters (RTL override, ZWJ, ...).
    return unicodedata.category(char) in {"Cc", "Cf"}


def _check_characters(value: str, what: str) -> None:
    if "\x00" in value:
        raise InvalidKeyError(f"{what} {value!r}: contains a NUL character")
    if any(_is_control(char) for char in value):
        raise InvalidKeyError(f"{what} {value!r}: contains a control character")
    if "\\" in value:
        raise InvalidKeyError(f"{what} {value!r}: contains a backslash; use '/' between segments")
    if any(unicodedata.category(char) == "Cs" for char in value):
        raise InvalidKeyError(f"{what} {value!r}: contains a lone surrogate, which is not valid UTF-8")


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a valid object key; raise `InvalidKeyError` naming the rule otherwise."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"key {key!r}: must be a string, not {type(key).__name__}")
    if not key:
        raise InvalidKeyError("key '': must not be empty")
    _check_characters(key, "key")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"key {key[:64]!r}...: longer than {MAX_KEY_BYTES} bytes of UTF-8")
    if key.startswith("/"):
        raise InvalidKeyError(f"key {key!r}: must be relative, not start with '/'")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidKeyError(f"key {key!r}: has an empty segment ('//' or a trailing '/')")
        if segment in {".", ".."}:
            raise InvalidKeyError(f"key {key!r}: has a {segment!r} segment")
    return key


def validate_prefix(prefix: str) -> str:
    """Return a listing prefix unchanged if valid: empty, or a key optionally ending in one `/`."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def validate_key_segment(value: str, field: str) -> str:
    """Return `value` unchanged if it can be one key segment (a SKU, tenant or category name).

    `field` names the input in the error (e.g. "sku"), so an API can turn the message into a 422 as is.
    Rejected: empty, `.`/`..`, any `/` or backslash, control characters, leading/trailing whitespace and
    values over `MAX_SEGMENT_BYTES` bytes.
    """
    if not isinstance(value, str):
        raise InvalidKeyError(f"{field} {value!r}: must be a string, not {type(value).__name__}")
    if not value:
        raise InvalidKeyError(f"{field} '': must not be empty")
    _check_characters(value, field)
    if "/" in value:
        raise InvalidKeyError(f"{field} {value!r}: must not contain '/'")
    if value in {".", ".."}:
        raise InvalidKeyError(f"{field} {value!r}: must not be '.' or '..'")
    if value != value.strip():
        raise InvalidKeyError(f"{field} {value!r}: must not start or end with whitespace")
    if len(value.encode("utf-8")) > MAX_SEGMENT_BYTES:
        raise InvalidKeyError(f"{field} {value[:32]!r}...: longer than {MAX_SEGMENT_BYTES} bytes of UTF-8")
    return value


# Names a job keeps for its own files directly under `<tenant>/jobs/<job>/` (`db.images.manifest_keys`,
# `workers.shards`): a SKU or category folder may not take one, so image keys and the job's own keys never meet
# (a SKU `manifest.jsonl` made a folder where the manifest file goes: the job could never finalize).
RESERVED_JOB_FOLDERS = frozenset({"manifest.jsonl", "manifest.parquet", "shards"})


def validate_job_folder(value: str, field: str) -> str:
    """`validate_key_segment`, and not one of `RESERVED_JOB_FOLDERS` (a SKU or category names a folder).

    Compared as a case-insensitive folder compares names (macOS's default, the embedded local store's usual
    home, and Windows, which also drops trailing dots): `SHARDS` or `Manifest.JSONL.` is the reserved name there.
    """
    validate_key_segment(value, field)
    if value.rstrip(".").casefold() in RESERVED_JOB_FOLDERS:
        raise InvalidKeyError(
            f"{field} {value!r}: reserved for the job's own files ({', '.join(sorted(RESERVED_JOB_FOLDERS))})"
        )
    return value
