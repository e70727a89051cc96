"""Sweep folders: what each job overrode, and the best trial of a search preset (conf/hparams_search/)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf


def job_overrides(job_dir: Path) -> list[str]:
    """The command-line overrides a run folder's launches recorded (.hydra/overrides.yaml, then each resume's in
    .hydra/resume-<time>/, a key given again taking its new value); empty if it recorded none."""
    launches = [job_dir / ".hydra", *sorted((job_dir / ".hydra").glob("resume-*"))]
    merged: dict[str, str] = {}
    for launch in launches:
        for override in _recorded(launch / "overrides.yaml"):
            key = str(override).split("=", 1)[0]
            if key != "ckpt_path":
                merged[key] = str(override)
    return list(merged.values())


def _recorded(path: Path) -> list[Any]:
    """The overrides a launch recorded, read as possibly damaged: a file that is not a YAML list of them (cut by
    a kill, edited, not UTF-8) records none."""
    if not path.is_file() or path.is_symlink():
        return []
    try:
        overrides = OmegaConf.load(path)
    except Exception:
        return []
    return list(overrides) if isinstance(overrides, ListConfig) else []


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

    def __init__(self) -> None:
        """Optuna's own log lines, coloured even in a file, go through Hydra's logging as plain lines."""
        try:
            import optuna
        except ImportError:
            return
        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()

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
        job = find_job(sweep_dir, params)
        storage = str(config.hydra.sweeper.get("storage") or "")
        if job is None and storage.startswith("sqlite:///"):  # a resumed study: the sweep folder it was stored in
            job = find_job(Path(storage.removeprefix("sqlite:///")).parent, params)
        if job is not None:  # the job's own overrides: the search's values and the sweep's fixed ones
            overrides = job_overrides(job)
        else:  # not found: the values, with this sweep's fixed overrides
            fixed = [o for o in config.hydra.overrides.task if o.split("=", 1)[0] not in params]
            overrides = [*fixed, *(f"{k}={v}" for k, v in params.items())]
        overrides = [o for o in overrides if not o.startswith(("hparams_search", "hydra."))]
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
