"""Search presets (conf/hparams_search/), MLflow logging, and lgpt-plot on a sweep folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from .conftest import TINY, TINY_SHAKESPEARE, run_cli

DATA = ["data=local", f"data.path={TINY_SHAKESPEARE}"]


@pytest.mark.slow
def test_optuna_preset_runs_its_trials_prints_the_best_and_resumes_from_its_storage(tmp_path, cache_dir):
    optuna = pytest.importorskip("optuna")
    tiny = [o for o in TINY if not o.startswith("data.batch_size")]  # a command-line value would fix it
    args = ["-m", "hparams_search=optuna", "trainer.max_steps=10", *tiny, *DATA, f"paths.cache_dir={cache_dir}"]
    # trainer.max_steps=10 < val_check_interval=250: only the last-step validation gives each trial its objective
    done = run_cli(*args, "hparams_search.n_trials=3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2"]
    study = optuna.load_study(study_name="lgpt", storage=f"sqlite:///{sweep}/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert set(study.best_params) == {"optim.lr", "optim.weight_decay", "optim.warmup_steps", "model.dropout",
                                      "data.batch_size"}  # fmt: skip
    best = OmegaConf.load(sweep / "best_trial.yaml")
    assert best.best_value == study.best_value
    assert Path(best.job_dir).name == str(study.best_trial.number)
    assert f"optim.lr={study.best_params['optim.lr']}" in best.overrides
    assert f"best trial: val/loss {study.best_value:.4f}" in done.stdout
    assert "reproduce it with: lgpt-train optim.lr=" in done.stdout

    # An interrupted study resumes from its storage: one more trial, in a new sweep folder, the same study.
    more = run_cli(*args, "hparams_search.n_trials=1", f"hydra.sweeper.storage=sqlite:///{sweep}/optuna.db",
                   cwd=tmp_path)  # fmt: skip
    assert more.returncode == 0, more.stderr[-3000:]
    assert len(optuna.load_study(study_name="lgpt", storage=f"sqlite:///{sweep}/optuna.db").trials) == 4
    assert len(list((tmp_path / "outputs" / "train" / "multiruns").iterdir())) == 2
