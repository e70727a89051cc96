"""Resuming continues *that* run: its own config plus the new overrides, in its folder, logs appended."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

import lightning_gpt
from lightning_gpt.apps.train import main
from lightning_gpt.checkpoints import latest_run
from lightning_gpt.errors import UserError
from lightning_gpt.runs import Resume, RunLock

from .support.config import TINY, TINY_SHAKESPEARE

DATA = ["data=local", f"data.path={TINY_SHAKESPEARE}"]


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def series(run: Path, key: str) -> dict[int, float]:
    """step -> value; each step must appear once."""
    found = [(int(r["step"]), float(r[key])) for r in rows(run) if r.get(key)]
    assert len({s for s, _ in found}) == len(found), f"{key} logged twice at a step"
    return dict(found)


def cli_args(tmp_path: Path, cache_dir: Path) -> list[str]:
    return [*TINY, f"paths.root_dir={tmp_path}", f"paths.cache_dir={cache_dir}"]


def check_continued(run: Path, first_steps: int, total: int, warmup: int) -> None:
    """One folder holds the whole run: every step once, and the learning rate never rises after warmup."""
    assert sorted(series(run, "train/loss")) == list(range(total))
    lr = [v for _, v in sorted(series(run, "train/lr").items())]
    assert len(lr) == total
    assert all(b <= a + 1e-12 for a, b in zip(lr[warmup:], lr[warmup + 1 :]))
    assert lr[-1] == pytest.approx(1e-4)  # optim.min_lr, reached at the original horizon and kept
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == total


@pytest.mark.slow
def test_resuming_a_run_folder_continues_it_with_its_own_config(tmp_path, cache_dir, capsys, monkeypatch):
    """The README's case, shorter: nanogpt_baby on local data for 30 steps, then `ckpt_path=<folder>
    trainer.max_steps=40` from another folder."""
    args = [*cli_args(tmp_path, cache_dir), "trainer.log_every_n_steps=1", "trainer.val_check_interval=10"]
    assert main(["experiment=nanogpt_baby", *DATA, *args, "trainer.max_steps=30", "optim.warmup_steps=5"]) == 0
    [run] = (tmp_path / "outputs" / "nanogpt_baby" / "runs").iterdir()
    config = (run / "config.yaml").read_text()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main([f"ckpt_path={run}", "trainer.max_steps=40"]) == 0
    assert [p.name for p in (tmp_path / "outputs" / "nanogpt_baby" / "runs").iterdir()] == [run.name]
    assert not (tmp_path / "outputs" / "train").exists()  # no stray folder under the default task
    check_continued(run, 30, 40, warmup=5)
    assert "keeps its schedule, decaying to optim.min_lr at step 30" in capsys.readouterr().out
    assert (run / "config.yaml").read_text() == config  # the original stays
    assert yaml.safe_load((run / "config-resumed.yaml").read_text())["trainer"]["max_steps"] == 40
    [entry] = yaml.safe_load((run / "resumes.yaml").read_text())
    assert entry["step"] == 30 and entry["overrides"] == [f"ckpt_path={run}", "trainer.max_steps=40"]
    assert len(list((run / ".hydra").glob("resume-*/overrides.yaml"))) == 1  # Hydra's record of each launch kept


@pytest.mark.slow
def test_a_resume_in_place_keeps_the_logs_and_the_schedule(lgpt_train, tmp_path):
    """30 steps, then 40 in the same folder (ckpt_path=auto, as a requeued job), in this process."""
    args = [
        *TINY,
        *DATA,
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=10",
        "optim.warmup_steps=5",
        "ckpt_path=auto",
    ]
    lgpt_train(*args, "trainer.max_steps=30")
    metrics_before = rows(tmp_path / "run")
    lgpt_train(*args, "trainer.max_steps=40")
    assert rows(tmp_path / "run")[: len(metrics_before)] == metrics_before  # appended, nothing rewritten
    check_continued(tmp_path / "run", 30, 40, warmup=5)


@pytest.mark.slow
def test_resuming_a_run_folder_in_process_uses_its_config_in_a_new_folder(lgpt_train, tmp_path, capsys):
    lgpt_train(
        *TINY,
        *DATA,
        "model.n_layer=1",
        "trainer.max_steps=10",
        "trainer.val_check_interval=10",
        run_dir=tmp_path / "a",
    )
    # Nothing repeated but the new step count: model, data and tokenizer come from the run's config.
    lgpt_train("ckpt_path=" + str(tmp_path / "a"), "trainer.max_steps=15", run_dir=tmp_path / "b")
    saved = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert saved["model"]["n_layer"] == 1 and saved["data"]["path"] == str(TINY_SHAKESPEARE)
    assert saved["callbacks"]["model_checkpoint"]["dirpath"] == str(tmp_path / "b" / "checkpoints")
    assert saved["optim"]["decay_steps"] == 10  # the original horizon
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 15
    lgpt_train(
        f"ckpt_path={tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}",
        "trainer.max_steps=12",
        run_dir=tmp_path / "c",
    )
    assert yaml.safe_load((tmp_path / "c" / "config.yaml").read_text())["model"]["n_layer"] == 1  # its run's config
    lgpt_train(f"ckpt_path={tmp_path / 'a'}", "experiment=nanogpt_baby", run_dir=tmp_path / "d", code=2)
    assert "experiment=nanogpt_baby cannot change when resuming" in capsys.readouterr().err


@pytest.mark.slow
def test_an_explicit_decay_steps_stretches_the_schedule(lgpt_train, tmp_path):
    lgpt_train(*TINY, *DATA, "trainer.max_steps=10", "trainer.val_check_interval=10", run_dir=tmp_path / "a")
    lgpt_train(f"ckpt_path={tmp_path / 'a'}", "trainer.max_steps=12", "optim.decay_steps=50", run_dir=tmp_path / "b")
    assert (
        torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["optim"][
            "decay_steps"
        ]
        == 50
    )


@pytest.mark.slow
def test_latest_stays_in_its_task_and_skips_runs_still_training(lgpt_train, tmp_path):
    runs = tmp_path / "outputs"
    for task_name, name in [("train", "old"), ("train", "new"), ("other", "newest")]:
        lgpt_train(
            *TINY,
            *DATA,
            "trainer.max_steps=5",
            "trainer.val_check_interval=5",
            f"task_name={task_name}",
            run_dir=runs / task_name / "runs" / name,
        )
    assert latest_run(str(runs), "train") == runs / "train" / "runs" / "new"
    with RunLock(runs / "train" / "runs" / "new"):  # as a run still training holds it
        assert latest_run(str(runs), "train") == runs / "train" / "runs" / "old"
        with pytest.raises(UserError, match="in use by another lgpt-train"), RunLock(runs / "train" / "runs" / "new"):
            pass
        with RunLock(runs / "train" / "runs" / "old"), pytest.raises(UserError, match=r"\(2 still training\)"):
            latest_run(str(runs), "train")
    lgpt_train(*TINY, *DATA, "ckpt_path=latest", "trainer.max_steps=8", run_dir=runs / "x")
    resumed_from = yaml.safe_load((runs / "x" / "config.yaml").read_text())["ckpt_path"]
    assert resumed_from == str(runs / "train" / "runs" / "new" / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_a_damaged_last_checkpoint_falls_back_to_the_newest_whole_one(lgpt_train, tmp_path, capsys):
    run = tmp_path / "run"
    lgpt_train(
        *TINY,
        *DATA,
        "trainer.max_steps=10",
        "trainer.val_check_interval=10",
        "callbacks.model_checkpoint.every_n_train_steps=4",
        run_dir=run,
    )
    last = run / "checkpoints" / "last.ckpt"
    damaged = last.read_bytes()[:5000]  # as if killed during its first write (a new file: the others are links)
    last.unlink()
    last.write_bytes(damaged)
    assert lightning_gpt.find_checkpoint(run).name.startswith("best-step000010")  # the newest whole one
    [p.unlink() for p in run.glob("checkpoints/best-*.ckpt")]
    step8 = run / "checkpoints" / "step000008.ckpt"
    assert lightning_gpt.find_checkpoint(run) == step8
    assert Resume.resolve("auto", str(tmp_path), "train", run).file == step8
    assert Resume.resolve(str(run), str(tmp_path), "train", run).file == step8
    last.unlink()
    assert lightning_gpt.find_checkpoint(run) == step8
    assert lightning_gpt.find_checkpoint(last.parent) == step8
    for p in run.glob("checkpoints/*.ckpt"):
        p.unlink()
    assert Resume.resolve("auto", str(tmp_path), "train", run) is None  # nothing to resume: a fresh start
    with pytest.raises(UserError, match="no checkpoint that loads in"):
        lightning_gpt.find_checkpoint(run)


@pytest.mark.slow
def test_the_progress_bar_of_a_resumed_run_counts_steps_out_of_max_steps(lgpt_train, tmp_path, capfd):
    lgpt_train(*TINY, *DATA, "trainer.max_steps=10", "trainer.val_check_interval=10", run_dir=tmp_path / "a")
    capfd.readouterr()
    lgpt_train(
        f"ckpt_path={tmp_path / 'a'}",
        "trainer.max_steps=20",
        "trainer.enable_progress_bar=true",
        "callbacks.progress_bar.plain=false",  # the bar, as a terminal shows it
        run_dir=tmp_path / "b",
    )
    bars = capfd.readouterr().out.replace("\r", "\n")
    assert "10/20 [00:00<" in bars and "20/20 [" in bars  # starts at the resumed step, ends at max_steps
    assert "20/?" not in bars and "40/20" not in bars
