"""lgpt-plot draws a real run's CSV log as a PNG, and says in one line what is wrong with a bad path."""

from __future__ import annotations

import math

import pytest

from lightning_gpt.apps.plot import main, read_curves
from lightning_gpt.apps.train import main as train_main

from .support.config import TINY, TINY_SHAKESPEARE
from .support.runs import train_tiny

DATA = ["data=local", f"data.path={TINY_SHAKESPEARE}"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny(
        tmp_path_factory.mktemp("plot"),
        tmp_path_factory.mktemp("cache"),
        "trainer.log_every_n_steps=2",
        "trainer.val_check_interval=5",
    )


@pytest.mark.slow
def test_plots_train_and_val_loss_of_a_run_to_a_png(run, tmp_path, capsys):
    curves = read_curves(run / "csv" / "metrics.csv")
    assert [step for step, _ in curves["train/loss"]][:3] == [1, 3, 5]  # logged every 2 steps (0-based steps)
    assert len(curves["val/loss"]) == 2

    out = tmp_path / "loss.png"
    assert main([str(run), str(run / "csv" / "metrics.csv"), "-o", str(out)]) == 0  # a run folder and a CSV path
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)  # after the table of the two runs


@pytest.mark.slow
def test_a_sweep_folder_plots_one_line_per_job_labelled_by_its_overrides_and_prints_a_table(
    tmp_path, cache_dir, capsys
):
    steps = ["trainer.max_steps=8", "trainer.val_check_interval=4", "trainer.log_every_n_steps=2"]
    sweep = ["-m", "optim.lr=1e-3,3e-3", "model.dropout=0.0,0.1", *steps, *TINY, *DATA]
    assert train_main([*sweep, f"paths.cache_dir={cache_dir}", f"paths.root_dir={tmp_path}"]) == 0
    (folder,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    out = tmp_path / "sweep.png"
    capsys.readouterr()
    assert main([str(folder), "-o", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(out) and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = [line.split() for line in lines[1:-1]]
    assert [row[:3] for row in table] == [
        ["0", "optim.lr=0.001", "model.dropout=0"],
        ["1", "optim.lr=0.001", "model.dropout=0.1"],
        ["2", "optim.lr=0.003", "model.dropout=0"],
        ["3", "optim.lr=0.003", "model.dropout=0.1"],
    ]
    best = {row[0]: float(row[3]) for row in table}
    for job, value in best.items():  # the lowest val/loss of each job's CSV log
        curve = read_curves(folder / job / "csv" / "metrics.csv")["val/loss"]
        assert len(curve) == 2 and value == pytest.approx(min(v for _, v in curve), abs=5e-5)
    starred = [row[0] for row in table if row[-1] == "*"]
    assert len(starred) == 1 and best[starred[0]] == min(best.values())


@pytest.mark.slow
def test_a_path_without_a_log_is_a_one_line_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: no metrics.csv at {tmp_path}: give a run folder (with csv/metrics.csv) or a CSV file"
    ]


def test_runs_without_a_log_are_skipped_among_others(run, tmp_path, capsys):
    (tmp_path / "failed").mkdir()
    out = tmp_path / "loss.png"
    assert main([str(run), str(tmp_path / "failed"), "-o", str(out)]) == 0
    assert out.is_file()
    assert capsys.readouterr().err == f"skipping {tmp_path / 'failed'}: no metrics.csv in it\n"


def test_bits_per_byte_is_a_metric_away_and_a_metric_not_logged_is_named(run, tmp_path, capsys):
    curves = read_curves(run / "csv" / "metrics.csv", "val/bpb")
    loss = read_curves(run / "csv" / "metrics.csv")["val/loss"]
    assert list(curves) == ["val/bpb"]  # no train line: training logs no train/bpb
    assert curves["val/bpb"] == [(s, pytest.approx(v / math.log(2), rel=1e-6)) for s, v in loss]  # char, ASCII
    assert main([str(run), str(run / "csv" / "metrics.csv"), "--metric", "val/bpb", "-o", str(tmp_path / "a.png")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[-2:] == ["best", "val/bpb"] and lines[-1] == str(tmp_path / "a.png")
    assert main([str(run), "--metric", "val/bpb"]) == 0  # without -o: named after the metric, in the run folder
    assert capsys.readouterr().out.strip() == str(run / "val_bpb.png")
    assert (run / "val_bpb.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(run), "--metric", "val/accuracy"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {run / 'csv' / 'metrics.csv'} holds no val/accuracy; plot one of its columns: "
        "val/bpb, val/loss, val/ppl"
    )
