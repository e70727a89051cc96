"""lgpt-plot draws a real run's CSV log as a PNG, and says in one line what is wrong with a bad path."""

from __future__ import annotations

import pytest

from lightning_gpt.plot import main, read_curves

from .apps import train_tiny
from .conftest import run_cli


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("plot"), tmp_path_factory.mktemp("cache"), "trainer.log_every_n_steps=2",
                      "trainer.val_check_interval=5")  # fmt: skip


def test_plots_train_and_val_loss_of_a_run_to_a_png(run, tmp_path, capsys):
    curves = read_curves(run / "csv" / "metrics.csv")
    assert [step for step, _ in curves["train/loss"]][:3] == [1, 3, 5]  # logged every 2 steps (0-based steps)
    assert len(curves["val/loss"]) == 2

    out = tmp_path / "loss.png"
    main([str(run), str(run / "csv" / "metrics.csv"), "-o", str(out)])  # a run folder and a CSV path
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.strip() == str(out)


def test_a_path_without_a_log_is_a_one_line_error(tmp_path):
    result = run_cli(str(tmp_path), module="lightning_gpt.plot")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: no metrics.csv at {tmp_path}: give a run folder (with csv/metrics.csv) or a CSV file"
    ]


def test_runs_without_a_log_are_skipped_among_others(run, tmp_path, capsys):
    (tmp_path / "failed").mkdir()
    out = tmp_path / "loss.png"
    main([str(run), str(tmp_path / "failed"), "-o", str(out)])
    assert out.is_file()
    assert capsys.readouterr().err == f"skipping {tmp_path / 'failed'}: no metrics.csv in it\n"
