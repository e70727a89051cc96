"""The training benchmark compares like with like: its hand-written loop and lgpt-train, taking turns, do the
same work (same weights, batches, optimizer and schedule give the same loss)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import child_env, lgpt_train
from benchmarks.speedrun import race, reached
from benchmarks.training import Case, _hand_loop, _lgpt_train, paired_trial

from .support.config import TINY


@pytest.mark.slow
def test_the_hand_loop_and_lgpt_train_take_turns_and_reach_the_same_loss(tmp_path, cache_dir):
    case = Case("tiny", [*TINY, f"paths.cache_dir={cache_dir}"], first=2, last=6, chunk=2, settings="")
    commands = {"loop": _hand_loop(case), "lgpt-train": _lgpt_train(case)}
    env = child_env(LGPT_ROOT=str(tmp_path))
    results = paired_trial(commands, chunks=2, env=env, timeout=120)
    for result in results.values():
        assert len(result["chunks"]) == 2 and all(seconds > 0 for seconds in result["chunks"])
        assert result["tokens_per_step"] == 8 * 32
    assert results["loop"]["loss"] == pytest.approx(results["lgpt-train"]["loss"], rel=1e-5)


@pytest.mark.slow
def test_the_speedrun_race_takes_turns_and_times_each_run_to_its_target(tmp_path, cache_dir):
    def command(name: str, *extra: str) -> list[str]:
        return [
            *(*lgpt_train(), *TINY, f"paths.cache_dir={cache_dir}"),
            *("trainer.max_steps=30", "trainer.val_check_interval=10", "callbacks=[default,stop_at_loss]"),
            *("+callbacks.race._target_=benchmarks.speedrun.race_timer", f"hydra.run.dir={tmp_path / name}", *extra),
        ]

    commands = {
        "quick": command("quick", "optim.lr=1e-2", "optim.warmup_steps=0", "callbacks.stop_at_loss.target=3.5"),
        "never": command("never", "callbacks.stop_at_loss.target=0.5"),
    }
    result = race(commands, child_env(LGPT_ROOT=str(tmp_path)), timeout=120)
    never, quick = result["never"], result["quick"]
    assert [v["step"] for v in never] == [10, 20, 30] and reached(never, 0.5) is None  # the other ran on alone
    assert all(0 < a["seconds"] < b["seconds"] for a, b in zip(never, never[1:]))
    hit = reached(quick, 3.5)
    assert hit is quick[-1] and hit["tokens"] == hit["step"] * 8 * 32  # stopped at its first validation at 3.5


@pytest.mark.slow
def test_the_gpu_check_says_when_there_is_no_gpu():
    command = [sys.executable, "-m", "benchmarks", "--gpu"]
    done = subprocess.run(command, capture_output=True, text=True, env=child_env(), cwd=Path(__file__).parents[1])
    assert done.returncode != 0
    assert "error: no CUDA GPU here; run `python -m benchmarks --gpu` on a GPU machine" in done.stderr


@pytest.mark.slow
def test_the_gpu_check_trains_resumes_and_samples_a_preset(tmp_path, monkeypatch, cache_dir):
    """The GPU check's own plumbing, on the CPU: the same launches as on a GPU, with a tiny model."""
    from benchmarks import gpu

    monkeypatch.setattr(gpu, "ON_CPU", True)
    args = gpu.presets(1)["trainer=gpu"]
    env = child_env()
    rows = gpu.check_preset("trainer=gpu (CPU)", [*args, f"paths.cache_dir={cache_dir}"], 10, tmp_path, env)
    assert rows[0]["metric"] == "val/loss at the end" and 0 < rows[0]["value"] < 5, rows
    assert rows[0]["note"] == "trained, resumed, sampled"
    [plan] = [r for r in rows if r["metric"] == "lgpt-info's plan (per process)"]
    assert 0 < plan["value"] < 1  # a tiny model: what torch.cuda.max_memory_allocated is held against on a GPU
    # GPT-2 small's speed rows, the check's headline (GPT-2's tokenizer, a tiny shape on the CPU).
    [speed] = gpu.gpt2_speed(False, 10, tmp_path, child_env(LGPT_CACHE_DIR=str(cache_dir)))  # logs at 5, 10
    assert speed["metric"] == "tokens/s" and speed["value"] > 0, speed


def test_targets_are_checked_on_the_ratio_else_the_value():
    from benchmarks.__main__ import met

    assert met({"value": 5.0, "ratio": 0.98, "target": ">= 0.97"}) == "yes"
    assert met({"value": 12.0, "target": "<= 10"}) == "NO"
    assert [met({"value": 1.0, "ratio": r, "target": "0.85 to 1.15"}) for r in (0.8, 1.0, 1.2)] == ["NO", "yes", "NO"]
    assert met({"value": 1.0}) == ""
