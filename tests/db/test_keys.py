"""Object-key and key-segment validation: each rule, with the key and the rule named in the error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from db.errors import InvalidKeyError
from db.storage.keys import MAX_KEY_BYTES, validate_key, validate_key_segment, validate_prefix

REJECTED = [
    ("", "empty"),
    ("/etc/passwd", "relative"),
    ("a//b", "empty segment"),
    ("a/b/", "empty segment"),
    ("..", "'..' segment"),
    ("a/../b", "'..' segment"),
    ("./a", "'.' segment"),
    ("a\\b", "backslash"),
    ("a\x00b", "NUL"),
    ("a\nb", "control character"),
    ("a\tb", "control character"),
    ("a\x7fb", "control character"),
    ("a\u202eb", "control character"),  # right-to-left override: hides the real name
    ("a\ud800b", "surrogate"),
    ("x" * (MAX_KEY_BYTES + 1), "longer than 1024 bytes"),
    ("é" * 513, "longer than 1024 bytes"),  # 1026 bytes of UTF-8, only 513 characters
]


@pytest.mark.parametrize(("key", "rule"), REJECTED)
def test_invalid_keys_are_rejected_naming_key_and_rule(key: str, rule: str) -> None:
    """Given a key that breaks a rule, validate_key raises InvalidKeyError mentioning the rule and the key."""
    with pytest.raises(InvalidKeyError, match=rule) as caught:
        validate_key(key)
    assert repr(key[:20])[1:-1][:10] in str(caught.value)


@pytest.mark.parametrize(
    "key",
    ["a", "tenant/jobs/0123abcd/Sneaker/00000007.png", "a..b/c", ".hidden/x", "Größe 42/北京", "x" * 1024],
)
def test_valid_keys_are_returned_unchanged(key: str) -> None:
    """Given a well-formed key (dots inside names, unicode, exactly 1024 bytes), it is accepted as is."""
    assert validate_key(key) == key


def test_prefixes_may_end_with_one_slash() -> None:
    """Given a listing prefix, "" and "a/b/" are valid while "a//" is not."""
    assert validate_prefix("") == ""
    assert validate_prefix("a/b/") == "a/b/"
    with pytest.raises(InvalidKeyError):
        validate_prefix("a//")


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("", "empty"),
        ("a/b", "'/'"),
        ("..", "'.' or '..'"),
        (" sku", "whitespace"),
        ("a\x00", "NUL"),
        ("a\\b", "backslash"),
        ("s" * 129, "longer than 128 bytes"),
    ],
)
def test_key_segments_name_the_field_and_rule(value: str, rule: str) -> None:
    """Given a user string unfit for one key segment, the error starts with the field name and states the rule."""
    with pytest.raises(InvalidKeyError, match=rule) as caught:
        validate_key_segment(value, "sku")
    assert str(caught.value).startswith("sku ")


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6))
def test_any_accepted_key_is_safe_to_join_under_a_root(segments: list[str]) -> None:
    """For any key that validate_key accepts: relative, no empty, '.' or '..' segment, no control chars."""
    key = "/".join(segments)
    try:
        validate_key(key)
    except InvalidKeyError:
        return
    parts = key.split("/")
    assert not key.startswith("/")
    assert all(part not in {"", ".", ".."} for part in parts)
    assert "\x00" not in key and "\\" not in key
    assert all(ord(char) >= 0x20 and char != "\x7f" for char in key)
    assert len(key.encode("utf-8")) <= MAX_KEY_BYTES


@given(st.text(max_size=40))
def test_validation_either_accepts_unchanged_or_raises_invalid_key(key: str) -> None:
    """For any text, validate_key returns it unchanged or raises InvalidKeyError, never anything else."""
    try:
        assert validate_key(key) == key
    except InvalidKeyError as exc:
        assert repr(key)[:8] in str(exc) or key == ""


@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zs", "Zl", "Zp")),
        min_size=1,
        max_size=30,
    ).filter(lambda s: "/" not in s and "\\" not in s and s not in {".", ".."})
)
def test_ordinary_names_are_valid_segments_and_keys(name: str) -> None:
    """For any printable name without separators, it is a valid segment and a valid key under a prefix."""
    assert validate_key_segment(name, "category") == name
    assert validate_key(f"tenant/{name}/00000000.png")


@pytest.mark.parametrize(
    "value", ["SHARDS", "Manifest.JSONL", "manifest.Parquet", "shards.", "manifest.jsonl.."]
)
def test_a_job_folder_equal_to_the_jobs_own_files_on_a_case_insensitive_store_is_refused(value: str) -> None:
    """Given a SKU that differs from one of the job's own names only by case or trailing dots (one and the same
    name on a case-insensitive folder, the macOS default for the embedded local store, or on Windows), when it
    is checked as a job folder, then it is refused as reserved: its folder would take the manifest's place
    there, and the job could never finalize."""
    from db.storage.keys import validate_job_folder

    with pytest.raises(InvalidKeyError, match="reserved"):
        validate_job_folder(value, "sku")


def test_job_folders_that_only_resemble_reserved_names_are_kept() -> None:
    """Given SKUs that merely contain a reserved name, when checked, then they pass unchanged."""
    from db.storage.keys import validate_job_folder

    for value in ("shards-2024", "my.manifest.jsonl", "SHARDSX", ".shards"):
        assert validate_job_folder(value, "sku") == value
