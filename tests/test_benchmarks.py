"""The training benchmark compares like with like: its hand-written loop and lgpt-train, taking turns, do the
same work (same weights, batches, optimizer and schedule give the same loss)."""

from __future__ import annotations

import pytest

from benchmarks import child_env
from benchmarks.training import Case, _hand_loop, _lgpt_train, paired_trial

from .conftest import TINY


def test_the_hand_loop_and_lgpt_train_take_turns_and_reach_the_same_loss(tmp_path, cache_dir):
    case = Case("tiny", [*TINY, f"paths.cache_dir={cache_dir}"], first=2, last=6, chunk=2, settings="")
    commands = {"loop": _hand_loop(case), "lgpt-train": _lgpt_train(case)}
    results = paired_trial(commands, chunks=2, env=child_env(LGPT_ROOT=str(tmp_path)), timeout=120)
    for result in results.values():
        assert len(result["chunks"]) == 2 and all(seconds > 0 for seconds in result["chunks"])
        assert result["tokens_per_step"] == 8 * 32
    assert results["loop"]["loss"] == pytest.approx(results["lgpt-train"]["loss"], rel=1e-5)
