"""Policy: validation, JSON round trip, name-keyed lookups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwsearch.errors import PolicyError
from hwsearch.policy import LayerBits, Policy, uniform_policy
from hwsearch.policy_formats import load_policy, save_policy

NAMES = ["features.conv1", "features.conv2", "classifier.fc"]


@pytest.mark.parametrize(
    "layers",
    [
        {"features.conv1": LayerBits(2, 3), "features.conv2": LayerBits(8, 8), "classifier.fc": LayerBits(32, 32)},
        {"a": [1, 1]},
        {"b": {"w": 5, "a": 7}},
    ],
)
def test_json_round_trip_is_identical(layers: dict, tmp_path: Path) -> None:
    p = Policy(layers, {"source": "test"})
    assert Policy.from_json(p.to_json()) == p
    path = save_policy(p, tmp_path / "policy.json")
    back = load_policy(path)
    assert back == p and back.meta == {"source": "test"} and back.names() == list(layers)


def test_lookup_is_by_name_and_order_is_kept() -> None:
    p = Policy({"z": LayerBits(2, 2), "a": LayerBits(8, 4)})
    assert p["a"] == LayerBits(8, 4) and p.names() == ["z", "a"]
    assert p.key() == (("z", 2, 2), ("a", 8, 4))
    assert hash(p) == hash(Policy({"z": [2, 2], "a": [8, 4]}))


@pytest.mark.parametrize("bits", [0, 9, 16, 33, -1, 4.5, "4", None, True])
def test_bits_out_of_range_or_not_integer_are_refused(bits: object) -> None:
    with pytest.raises(PolicyError, match="bits"):
        LayerBits(bits, 8)  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="bits"):
        LayerBits(8, bits)  # type: ignore[arg-type]


def test_integral_floats_from_json_are_accepted() -> None:
    assert LayerBits(4.0, 8.0) == LayerBits(4, 8)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"schema": 2, "layers": {"a": {"w": 4, "a": 4}}}), "schema 2"),
        (json.dumps({"layers": {"a": {"w": 4, "a": 4}}}), "schema None"),
        (json.dumps({"schema": 1}), "no 'layers'"),
        (json.dumps({"schema": 1, "layers": {}}), "at least one layer"),
        (json.dumps({"schema": 1, "layers": {"a": {"w": 4}}}), "must be"),
        (json.dumps({"schema": 1, "layers": {"a": {"w": 4, "a": 12}}}), "out of range"),
    ],
)
def test_malformed_policy_files_give_clear_errors(text: str, match: str, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(PolicyError, match=match):
        load_policy(path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "nope.json")


def test_check_against_names_unknown_and_missing_layers() -> None:
    p = uniform_policy(NAMES, 4)
    p.check_against(NAMES)
    with pytest.raises(PolicyError, match="classifier.fc"):
        p.check_against(NAMES[:2])
    with pytest.raises(PolicyError, match="misses layer"):
        p.check_against([*NAMES, "extra"])


def test_uniform_policy() -> None:
    p = uniform_policy(NAMES, 4, 8)
    assert all(b == LayerBits(4, 8) for b in p.layers.values())
    assert p.meta["kind"] == "fixed W4A8"
