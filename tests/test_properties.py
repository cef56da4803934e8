"""Property-based tests of the parsers that read user files, and of the env's action-to-bits mapping.

Contract of each parser: any JSON-ish input either parses into a valid object or raises the parser's own
``HwsearchError`` subclass (one line for the CLI); never another exception type. Valid objects round-trip.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hwsearch.envs import action_to_index
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwsearch.errors import PolicyError, TableError
from hwsearch.hardware.table import CostTable, TableEntry, load_table, save_table
from hwsearch.policy import VALID_BITS, LayerBits, Policy
from hwsearch.policy_formats import load_policy, save_policy

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------ strategies
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_ish = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
bits_ish = st.one_of(
    st.sampled_from(VALID_BITS),
    st.integers(min_value=-3, max_value=40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([4.0, 8.0, 32.0, "4", None, True, [4]]),
)
layer_bits_ish = st.one_of(
    st.fixed_dictionaries({"w": bits_ish, "a": bits_ish}),
    st.lists(bits_ish, min_size=1, max_size=3),
    st.dictionaries(st.sampled_from(["w", "a", "x"]), bits_ish, max_size=3),
    json_ish,
)
names = st.text(min_size=0, max_size=12)
policy_ish = st.one_of(
    json_ish,
    st.fixed_dictionaries(
        {
            "schema": st.sampled_from([1, 1.0, 2, "1", None]),
            "layers": st.dictionaries(names, layer_bits_ish, max_size=5),
        },
        optional={"meta": json_ish},
    ),
)
valid_policies = st.builds(
    Policy,
    layers=st.dictionaries(
        st.text(min_size=1, max_size=12),
        st.builds(LayerBits, st.sampled_from(VALID_BITS), st.sampled_from(VALID_BITS)),
        min_size=1,
        max_size=6,
    ),
    meta=st.dictionaries(
        st.text(max_size=6),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
        max_size=3,
    ),
)


def _parse_policy(data: Any) -> Policy | None:
    try:
        policy = Policy.from_dict(data)
    except PolicyError as exc:
        assert "\n" not in str(exc) and str(exc)
        return None
    return policy


def _assert_valid_policy(policy: Policy) -> None:
    assert len(policy) >= 1
    for name, lb in policy.layers.items():
        assert isinstance(name, str) and name
        assert type(lb.w) is int and lb.w in VALID_BITS
        assert type(lb.a) is int and lb.a in VALID_BITS


# -------------------------------------------------------------------------------------------- policies
@FAST
@given(policy_ish)
def test_policy_from_dict_parses_or_raises_policy_error(data: Any) -> None:
    policy = _parse_policy(data)
    if policy is not None:
        _assert_valid_policy(policy)
        assert Policy.from_dict(policy.to_dict()) == policy


@FAST
@given(st.one_of(st.text(max_size=40), json_ish.map(json.dumps), policy_ish.map(json.dumps)))
def test_policy_from_json_parses_or_raises_policy_error(text: str) -> None:
    try:
        policy = Policy.from_json(text)
    except PolicyError as exc:
        assert "\n" not in str(exc)
        return
    _assert_valid_policy(policy)


@FAST
@given(valid_policies)
def test_valid_policy_round_trips_through_json(policy: Policy) -> None:
    back = Policy.from_json(policy.to_json())
    assert back == policy and back.key() == policy.key()
    assert back.names() == policy.names()  # forward order kept
    assert back.to_dict() == policy.to_dict()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(valid_policies.map(lambda p: p.to_json()), policy_ish.map(json.dumps), st.binary(max_size=30)))
def test_load_policy_file_parses_or_raises_policy_error(tmp_path_factory: pytest.TempPathFactory, body: Any) -> None:
    path = tmp_path_factory.mktemp("pol") / "p.json"
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body, encoding="utf-8")
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        assert "\n" not in str(exc)
        return
    _assert_valid_policy(policy)
    save_policy(policy, path)
    assert load_policy(path) == policy


# ---------------------------------------------------------------------------------------- cost tables
bit_keys = st.one_of(
    st.builds(lambda w, a: f"W{w}A{a}", st.sampled_from(VALID_BITS), st.sampled_from(VALID_BITS)),
    st.text(max_size=6),
    st.sampled_from(["W9A8", "W0A0", "w8a8", "W8A8 ", "W08A8"]),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=1e-6, max_value=1e6),
    st.integers(min_value=-5, max_value=10**6),
    st.sampled_from([None, True, "1.0", [1.0]]),
)
cells = st.one_of(
    st.fixed_dictionaries({"latency": numbers}, optional={"energy": numbers}),
    st.dictionaries(st.sampled_from(["latency", "energy", "power"]), numbers, max_size=3),
    json_ish,
)
table_ish = st.one_of(
    json_ish,
    st.fixed_dictionaries(
        {
            "schema": st.sampled_from([1, 1, 2, None]),
            "device": st.one_of(st.just("dev"), st.text(max_size=4), st.none()),
            "batch": st.one_of(st.integers(min_value=-2, max_value=64), st.floats(), st.none()),
            "method": st.sampled_from(["analytical", "measured", "imported", "guessed"]),
            "units": st.one_of(
                st.fixed_dictionaries(
                    {"latency": st.sampled_from(["ms", "cycles", "s", None])},
                    optional={"energy": st.sampled_from(["mJ", "J"])},
                ),
                json_ish,
            ),
            "entries": st.dictionaries(st.text(max_size=10), st.dictionaries(bit_keys, cells, max_size=3), max_size=3),
        },
        optional={
            "clock_hz": numbers,
            "source": st.one_of(st.text(max_size=5), st.integers()),
            "generator": json_ish,
            "model": st.one_of(st.none(), st.text(max_size=5)),
            "extra": st.none(),
        },
    ),
)
valid_tables = st.builds(
    CostTable,
    device=st.text(min_size=1, max_size=8),
    batch=st.integers(min_value=1, max_value=256),
    method=st.sampled_from(["analytical", "measured", "imported"]),
    source=st.text(max_size=8),
    entries=st.dictionaries(
        st.text(min_size=1, max_size=10),
        st.dictionaries(
            st.builds(lambda w, a: f"W{w}A{a}", st.sampled_from(VALID_BITS), st.sampled_from(VALID_BITS)),
            st.builds(
                TableEntry,
                st.floats(min_value=1e-9, max_value=1e9),
                st.one_of(st.none(), st.floats(min_value=1e-9, max_value=1e9)),
            ),
            min_size=1,
            max_size=4,
        ),
        min_size=1,
        max_size=3,
    ),
)


def _check_table(table: CostTable) -> None:
    assert table.entries and table.batch >= 1
    for row in table.entries.values():
        for cell in row.values():
            assert math.isfinite(cell.latency) and cell.latency > 0
            assert cell.energy is None or (math.isfinite(cell.energy) and cell.energy > 0)


@FAST
@given(table_ish)
def test_table_from_dict_parses_or_raises_table_error(data: Any) -> None:
    try:
        table = CostTable.from_dict(data)
    except TableError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    _check_table(table)
    assert CostTable.from_dict(table.to_dict()).to_dict() == table.to_dict()


def test_table_huge_integer_latency_is_a_table_error() -> None:
    with pytest.raises(TableError):
        TableEntry(10**400)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(valid_tables)
def test_valid_table_round_trips_through_a_file(tmp_path_factory: pytest.TempPathFactory, table: CostTable) -> None:
    path = tmp_path_factory.mktemp("tab") / "t.json"
    save_table(table, path)
    back = load_table(path)
    assert back.to_dict() == table.to_dict()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(table_ish.map(lambda d: json.dumps(d)), st.text(max_size=30)))
def test_load_table_file_parses_or_raises_table_error(tmp_path_factory: pytest.TempPathFactory, body: str) -> None:
    path = tmp_path_factory.mktemp("tab") / "t.json"
    path.write_text(body, encoding="utf-8")
    try:
        _check_table(load_table(path))
    except TableError as exc:
        assert "\n" not in str(exc)


# ------------------------------------------------------------------------------------ action -> index
any_float = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
choices = st.integers(min_value=1, max_value=64)


@FAST
@given(any_float, choices)
def test_action_to_index_is_total_and_in_range(action: float, n: int) -> None:
    i = action_to_index(action, n)
    assert type(i) is int and 0 <= i < n


@FAST
@given(any_float.filter(lambda v: not math.isnan(v)), any_float.filter(lambda v: not math.isnan(v)), choices)
def test_action_to_index_is_monotone(a: float, b: float, n: int) -> None:
    lo, hi = min(a, b), max(a, b)
    assert action_to_index(lo, n) <= action_to_index(hi, n)


@FAST
@given(choices)
def test_action_to_index_ends_and_bins(n: int) -> None:
    assert action_to_index(-1.0, n) == 0 == action_to_index(float("-inf"), n) == action_to_index(float("nan"), n)
    assert action_to_index(1.0, n) == n - 1 == action_to_index(float("inf"), n)
    centres = [-1 + (2 * k + 1) / n for k in range(n)]  # every bin is reachable, in order
    assert [action_to_index(c, n) for c in centres] == list(range(n))
