"""Search presets (conf/hparams_search/), MLflow logging, and lgpt-plot on a sweep folder."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_gpt.apps.train import main

from .support.config import ROOT, TINY, TINY_SHAKESPEARE, compose

DATA = ["data=local", f"data.path={TINY_SHAKESPEARE}"]


def test_optuna_preset_composes_with_its_trial_count_and_storage_in_the_sweep_folder(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    hydra = compose(
        "train", "hparams_search=optuna", "hparams_search.n_trials=3", f"paths.root_dir={tmp_path}", hydra=True
    ).hydra
    sweeper = hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.n_trials == 3 and sweeper.direction == "minimize"
    assert sweeper.storage == f"sqlite:///{hydra.sweep.dir}/optuna.db" and sweeper.sampler.seed == 1234
    assert set(sweeper.params) == {
        "optim.lr",
        "optim.weight_decay",
        "optim.warmup_steps",
        "model.dropout",
        "data.batch_size",
    }


@pytest.mark.slow
def test_optuna_preset_runs_its_trials_prints_the_best_and_resumes_from_its_storage(
    tmp_path, cache_dir, capsys, monkeypatch
):
    optuna = pytest.importorskip("optuna")
    tiny = [o for o in TINY if not o.startswith("data.batch_size")]  # a command-line value would fix it
    args = ["-m", "hparams_search=optuna", "trainer.max_steps=10", *tiny, *DATA, f"paths.cache_dir={cache_dir}"]
    # trainer.max_steps=10 < val_check_interval=250: only the last-step validation gives each trial its objective
    monkeypatch.chdir(tmp_path)
    assert main([*args, "hparams_search.n_trials=3"]) == 0
    out = capsys.readouterr().out
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2"]
    study = optuna.load_study(study_name="lgpt", storage=f"sqlite:///{sweep}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert set(study.best_params) == {
        "optim.lr",
        "optim.weight_decay",
        "optim.warmup_steps",
        "model.dropout",
        "data.batch_size",
    }
    best = OmegaConf.load(sweep / "best_trial.yaml")
    assert best.best_value == study.best_value
    assert Path(best.job_dir).name == str(study.best_trial.number)
    assert f"optim.lr={study.best_params['optim.lr']}" in best.overrides
    assert f"best trial: val/loss {study.best_value:.4f}" in out
    assert "reproduce it with: lgpt-train optim.lr=" in out

    # An interrupted study resumes from its storage: one more trial, in a new sweep folder, the same study.
    assert main([*args, "hparams_search.n_trials=1", f"hydra.sweeper.storage=sqlite:///{sweep}/optuna.db"]) == 0
    assert len(optuna.load_study(study_name="lgpt", storage=f"sqlite:///{sweep}/optuna.db").trials) == 4
    sweeps = sorted((tmp_path / "outputs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 2
    resumed = OmegaConf.load(sweeps[1] / "best_trial.yaml")
    assert "trainer.max_steps=10" in resumed.overrides  # the best trial's fixed overrides too, wherever it ran
    assert resumed.job_dir is not None and Path(resumed.job_dir).is_dir()  # found, in whichever sweep it ran


@pytest.mark.slow
def test_optuna_preset_can_minimize_bits_per_byte(tmp_path, cache_dir, capsys, monkeypatch):
    optuna = pytest.importorskip("optuna")
    tiny = [o for o in TINY if not o.startswith("data.batch_size")]
    args = ["-m", "hparams_search=optuna", "hparams_search.n_trials=2", "hparams_search.metric=val/bpb"]
    monkeypatch.chdir(tmp_path)
    assert main([*args, "trainer.max_steps=4", *tiny, *DATA, f"paths.cache_dir={cache_dir}"]) == 0
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    study = optuna.load_study(study_name="lgpt", storage=f"sqlite:///{sweep}/optuna.db")
    for trial in study.trials:  # each trial's value: its job's last val/bpb, not its val/loss
        with open(sweep / str(trial.number) / "csv" / "metrics.csv") as f:
            last = [r for r in csv.DictReader(f) if r.get("val/bpb")][-1]
        assert trial.value == pytest.approx(float(last["val/bpb"])) and trial.value != float(last["val/loss"])
    assert f"best trial: val/bpb {study.best_value:.4f}" in capsys.readouterr().out
    assert OmegaConf.load(sweep / "best_trial.yaml").metric == "val/bpb"


@pytest.mark.slow  # a launch that imports Lightning: a second and a half
def test_a_sweep_objective_other_than_val_loss_or_val_bpb_is_refused(tmp_path, capsys):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    args = ["hparams_search=optuna", "hparams_search.metric=val/ppl", f"paths.root_dir={tmp_path}", *TINY, *DATA]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: hparams_search.metric must be one of val/loss, val/bpb, got 'val/ppl'"
    ]
    assert [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()] == []  # the run folder went too


@pytest.mark.slow  # a launch that imports Lightning
@pytest.mark.parametrize("n_trials", [0, -1])
def test_a_study_of_no_trials_is_refused_and_leaves_no_sweep_folder(tmp_path, capsys, monkeypatch, n_trials):
    """Issue 24, item 14: n_trials=0 (or -1) was Optuna's 'ValueError: Record does not exist', after the sweep
    folder and its optuna.db were made."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    monkeypatch.chdir(tmp_path)
    args = ["-m", "hparams_search=optuna", f"hparams_search.n_trials={n_trials}", f"paths.root_dir={tmp_path}", *DATA]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: hparams_search.n_trials must be >= 1, got {n_trials}"
    ]
    assert list(tmp_path.iterdir()) == []  # no outputs/, no sweep folder, no optuna.db


@pytest.mark.slow
def test_mlflow_logger_writes_metrics_params_and_sample_artifacts_that_mlflow_reads_back(
    lgpt_train, tmp_path, monkeypatch
):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    steps = ["trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.log_every_n_steps=2"]
    lgpt_train("logger=[csv,mlflow]", "callbacks=[default,attention_maps]", "tags=[baseline]", *TINY, *DATA, *steps)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db")  # the default store
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.info.run_name == "run"  # the run folder's name
    assert run.data.tags["baseline"] == "true"  # tags=[...]
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for key in "val/loss", "val/bpb", "train/loss":  # the same points as the CSV log
        logged = [(m.step, pytest.approx(m.value)) for m in client.get_metric_history(run.info.run_id, key)]
        assert logged == [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 2
    assert run.data.metrics["val/loss"] == pytest.approx(float([r for r in rows if r.get("val/loss")][-1]["val/loss"]))
    assert run.data.params["config/optim/lr"] == "0.001" and run.data.params["config/model/n_layer"] == "2"
    samples = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert samples == ["samples/step000003.txt", "samples/step000006.txt"]
    attention = [a.path for a in client.list_artifacts(run.info.run_id, "attention")]
    assert attention == ["attention/step000003.png", "attention/step000006.png"]  # lgpt-explain's maps callback
    assert (tmp_path / "outputs" / "mlruns").is_dir()  # artifacts beside the store, not in the working folder


# lgpt-train as if the sweeps extra were not installed: Hydra's plugin scan skips a module set to None.
WITHOUT_PLUGINS = """
import sys
sys.modules["hydra_plugins.hydra_optuna_sweeper"] = None
sys.modules["hydra_plugins.hydra_submitit_launcher"] = None
from lightning_gpt.apps.train import main
raise SystemExit(main())
"""


@pytest.mark.slow  # a fresh lgpt-train process each
@pytest.mark.parametrize(
    "choice, plugin, package",
    [
        ("hparams_search=optuna", "Optuna sweeper", "hydra-optuna-sweeper"),
        ("hydra/launcher=submitit_slurm", "submitit launcher", "hydra-submitit-launcher"),
    ],
)
def test_a_sweep_plugin_that_is_not_installed_is_named_with_its_install_command(choice, plugin, package, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LGPT_RUN_STAMP"}
    command = [sys.executable, "-c", WITHOUT_PLUGINS, "-m", choice, "optim.lr=1e-3", f"paths.root_dir={tmp_path}"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    expected = f'error: Hydra\'s {plugin} is not installed: pip install "lgpt[sweeps]" (or pip install {package})'
    assert done.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "outputs").exists()  # nothing started
