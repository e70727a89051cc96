"""Sweep folders: what each job overrode, and the best trial of a search preset (conf/hparams_search/)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


def job_overrides(job_dir: Path) -> list[str]:
    """The command-line overrides Hydra saved for one job of a multirun (empty if it saved none)."""
    path = job_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


def find_job(sweep_dir: Path, params: dict[str, Any]) -> Path | None:
    """The job folder whose overrides hold every `key=value` of params (the sweeper writes them so)."""
    wanted = {f"{k}={v}" for k, v in params.items()}
    for overrides in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        job = overrides.parent.parent
        if wanted <= set(job_overrides(job)):
            return job
    return None


class BestTrial(Callback):
    """At the end of an Optuna sweep, print the best trial with the overrides that reproduce it, and save them
    in <sweep folder>/best_trial.yaml. The sweeper has already written the best parameters and value to
    optimization_results.yaml; this adds the job folder and the full command line."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Make the sweep folder before the sweeper opens its study storage there (Hydra makes it later); not
        for settings the sweeper will refuse (its n_trials is checked as it resolves): nothing is made then."""
        try:
            _ = config.hydra.sweeper.n_trials
        except Exception:
            return  # the sweeper reports it, in one line, as it starts
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        results = sweep_dir / "optimization_results.yaml"
        if not results.is_file():  # not an Optuna sweep, or it failed before the end
            return
        best = OmegaConf.load(results)
        params = OmegaConf.to_container(best.best_params)
        job = find_job(sweep_dir, params)  # None when the best trial ran in an earlier sweep of a resumed study
        overrides = job_overrides(job) if job else [f"{k}={v}" for k, v in params.items()]
        overrides = [o for o in overrides if not o.startswith("hparams_search")]
        metric = OmegaConf.select(config, "hparams_search.metric", default="val/loss")  # what the trials returned
        summary = {
            "metric": metric,
            "best_value": best.best_value,
            "job_dir": str(job) if job else None,
            "overrides": overrides,
        }
        OmegaConf.save(OmegaConf.create(summary), sweep_dir / "best_trial.yaml")
        print(f"\nbest trial: {metric} {best.best_value:.4f}" + (f" in {job}" if job else " (an earlier sweep)"))
        print("reproduce it with: lgpt-train " + shlex.join(overrides))
        print(f"saved in {sweep_dir / 'best_trial.yaml'}")
