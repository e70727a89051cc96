"""The fast tier (`-m "not slow"`) runs the first cases of a long matrix; the full run runs every case."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest


def fast_first(cases: Iterable[Any], keep: int = 2) -> list[Any]:
    """Cases for `pytest.mark.parametrize`: the first `keep` as they are, the others marked slow. A tuple is
    one case's several arguments, a `pytest.param` keeps its own marks and id; anything else is one argument."""
    return [case if i < keep else _slow(case) for i, case in enumerate(cases)]


def _slow(case: Any) -> Any:
    if isinstance(case, type(pytest.param(None))):
        return pytest.param(*case.values, marks=[*case.marks, pytest.mark.slow], id=case.id)
    return pytest.param(*(case if isinstance(case, tuple) else (case,)), marks=pytest.mark.slow)
