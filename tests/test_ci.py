"""HWSEARCH_CI=1 turns skips for missing data into failures; without it they stay skips."""

from __future__ import annotations

import pytest

from tests.ci import CI_VAR, check_requirements, import_or_skip, in_ci, requires


class _Item:
    """Stands in for a pytest item carrying the given marks."""

    def __init__(self, *marks: pytest.MarkDecorator) -> None:
        self.marks = [m.mark for m in marks]

    def iter_markers(self, name: str):  # type: ignore[no-untyped-def]
        return (m for m in self.marks if m.name == name)


@pytest.mark.parametrize(("value", "ci"), [("1", True), ("yes", True), ("0", False), ("", False), (None, False)])
def test_missing_data_fails_under_ci_and_skips_otherwise(monkeypatch: pytest.MonkeyPatch, value, ci: bool) -> None:  # type: ignore[no-untyped-def]
    if value is None:
        monkeypatch.delenv(CI_VAR, raising=False)
    else:
        monkeypatch.setenv(CI_VAR, value)
    assert in_ci() is ci
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match="reference data not found"):
        check_requirements(_Item(requires(True, "present"), requires(False, "reference data not found")))
    with pytest.raises(outcome, match="not installed"):
        import_or_skip("no_such_module_hwsearch", "no_such_module is not installed")
    check_requirements(_Item(requires(True, "present")))  # nothing raised
    assert import_or_skip("json", "json").__name__ == "json"
