"""Property tests: specs and job records from anywhere never crash the validators or escape the root."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from datagen.store.format import PREFIX_RE, ManifestError, validate_record, validate_spec

VALID = {
    "name": "balls-3",
    "generator": "balls",
    "params": {"n_balls": 3},
    "seed": 20080101,
    "n": 100000,
    "shard_size": 1000,
    "formats": ["wds"],
    "digest": "sha256:" + "a" * 64,
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_is_accepted_or_refused_in_one_line(value):
    for validate in (validate_spec, validate_record):
        try:
            validate(value, "x.json")
        except ManifestError as e:
            assert "\n" not in str(e) and str(e).startswith("x.json: ")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(VALID)), json_values)
def test_one_mutated_field_never_passes_an_unsafe_name(key, value):
    spec = dict(VALID, **{key: value})
    try:
        out = validate_spec(json.loads(json.dumps(spec)), "s.json")
    except (ManifestError, ValueError):  # ValueError: json cannot carry NaN round trip safely
        return
    assert PREFIX_RE.fullmatch(out["name"]) and "/" not in out["name"] and ".." not in out["name"]
    assert isinstance(out["seed"], int) and not isinstance(out["seed"], bool) and out["seed"] >= 0


@given(st.text(max_size=40))
def test_names_with_path_parts_are_refused(name):
    spec = dict(VALID, name=name)
    try:
        validate_spec(spec, "s.json")
    except ManifestError:
        return
    assert not any(part in name for part in ("/", "\\", "..", "\x00", " ", ":")) and name[0] not in ".-_"
