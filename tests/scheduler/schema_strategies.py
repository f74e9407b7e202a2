"""Hypothesis strategies from the JSON Schema subset FastAPI puts in its OpenAPI document.

Covers type, anyOf/oneOf, enum, const, numeric bounds, string lengths and patterns, arrays and objects
(required, optional and forbidden extra properties). Sizes are capped so a drawn job stays small enough to plan
quickly; the bounds themselves are drawn often, since that is where off-by-one bugs live.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

MAX_ARRAY_ITEMS = 4
MAX_STRING_CHARS = 80
INTEGER_SPAN = 1000


def _integers(schema: dict[str, Any]) -> st.SearchStrategy[int]:
    low = schema.get("minimum", schema.get("exclusiveMinimum", -(2**31)) + ("exclusiveMinimum" in schema))
    high = schema.get("maximum", schema.get("exclusiveMaximum", 2**31) - ("exclusiveMaximum" in schema))
    low, high = int(low), int(high)
    near = st.integers(low, min(high, low + INTEGER_SPAN))
    return st.one_of(near, st.sampled_from(sorted({low, high})))


def _strings(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    low = int(schema.get("minLength", 0))
    high = min(int(schema.get("maxLength", MAX_STRING_CHARS)), max(low, MAX_STRING_CHARS))
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True).filter(
            lambda s: low <= len(s) <= high
        ) | st.text(min_size=low, max_size=high)
    return st.text(min_size=low, max_size=high)


def _objects(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    properties: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    fixed = {name: strategy_for(sub) for name, sub in properties.items() if name in required}
    optional = {name: strategy_for(sub) for name, sub in properties.items() if name not in required}
    return st.fixed_dictionaries(fixed, optional=optional)


def strategy_for(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for `schema` (a `$ref`-free schema)."""
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([strategy_for(sub) for sub in schema[key]])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return _integers(schema)
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "string":
        return _strings(schema)
    if kind == "array":
        low = int(schema.get("minItems", 0))
        high = min(int(schema.get("maxItems", MAX_ARRAY_ITEMS)), max(low, MAX_ARRAY_ITEMS))
        return st.lists(strategy_for(schema.get("items", {})), min_size=low, max_size=high)
    if kind == "object" or "properties" in schema:
        return _objects(schema)
    return st.none() | st.booleans() | st.integers() | st.text(max_size=10)
