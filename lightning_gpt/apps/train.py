"""lgpt-train: compose the config, build data + model + Trainer, fit, print a sample.

lgpt-train                                   # char model on the embedded Shakespeare, ~2 min on CPU
lgpt-train experiment=nanogpt_baby data=local data.path=input.txt
lgpt-train -m optim.lr=1e-3,3e-4             # a sweep: one run folder per job
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_gpt.apps.console import fit_threads_to_load, quiet_console
from lightning_gpt.apps.launch import launch, run, stop_on_signals
from lightning_gpt.errors import UserError
from lightning_gpt.runs import (
    Resume,
    RunFolders,
    RunLock,
    RunLog,
    check_no_links,
    launch_config,
    load_run_config,
    run_config_file,
    write_records,
)
from lightning_gpt.schema import OBJECTIVES

log = logging.getLogger(__name__)


def _global_rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def train(cfg: DictConfig, run_log: RunLog | None = None) -> dict[str, float]:
    """Build and fit from a resolved config (every process; Lightning's DDP ranks run this alone)."""
    import lightning as L

    from lightning_gpt.training.build import build

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return fit(cfg, *build(cfg), run_log)


def fit(cfg: DictConfig, datamodule: Any, module: Any, trainer: Any, run_log: RunLog | None) -> dict[str, float]:
    """trainer.fit, then a sample: printed, and written to train.log."""
    from lightning_gpt.generation import complete
    from lightning_gpt.training.strategies import can_generate, children_run_this_app, full_parameters

    output_dir = Path(cfg.paths.output_dir)
    # Lightning's DDP launcher (strategies/launchers/subprocess_script.py) starts the other local ranks by
    # re-running this process's command with its environment. Those ranks must not compose a config of
    # their own (a new run folder, a new stamp): LGPT_RUN_DIR tells them to read rank 0's, saved there.
    with children_run_this_app():
        os.environ["LGPT_RUN_DIR"] = str(output_dir)
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)  # no code
        finally:
            if "wandb" in sys.modules:  # one W&B run per job of a multirun
                sys.modules["wandb"].finish()
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if trainer.fast_dev_run and trainer.is_global_zero:
            print("\nfast_dev_run: one training and one validation batch ran through the whole pipeline; nothing saved")
        if not trainer.fast_dev_run:  # every process generates: a sharded model needs them all
            text = "(none under sequence parallelism: lgpt-sample reads the checkpoint)"
            if can_generate(trainer):
                with full_parameters(module.model):
                    text = complete(module.model, module.tokenizer, **cfg.sample, seed=0)[0]
            if trainer.is_global_zero:
                scores = "".join(f" {key} {metrics[key]:.4f}" for key in ("val/loss", "val/bpb") if key in metrics)
                end = f"\nstep {trainer.global_step}:{scores}{' |' if scores else ''} run folder {output_dir}\n"
                end += f"--- sample ---\n{text}\n--------------\n"
                print(end, end="")
                if run_log is not None:
                    run_log.write(end)
    return metrics


def task(cfg: DictConfig) -> float | None:
    """One Hydra job: check everything, take the run folder's lock, record the launch, train. Returns val/loss
    (or hparams_search.metric) for sweepers. A refused launch writes nothing and removes the folders Hydra made
    for it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lightning_gpt.schema import check_values
    from lightning_gpt.training.build import build, check_model, check_parallel, check_wandb

    quiet_console()
    if note := fit_threads_to_load():
        log.warning(note)
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    hydra_dir = Path(hydra_cfg.runtime.output_dir)
    chosen = hydra_cfg.mode == RunMode.MULTIRUN or any(
        o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra
    )
    rank_zero = _global_rank() == 0  # under torchrun or srun every process runs this
    made = RunFolders.made_for(hydra_dir)
    lock = None
    # Until training starts, Ctrl-C and SIGTERM stop the launch at once, as a refusal does (nothing is recorded
    # yet; a first tokenization leaves nothing half-made); from then on LastCheckpoint finishes the step and saves.
    with stop_on_signals():
        try:
            resume = Resume.resolve(cfg.ckpt_path, cfg.paths.log_dir, cfg.task_name, hydra_dir)
            run_dir = resume.run if resume is not None and resume.in_place and not chosen else hydra_dir
            composed = cfg.copy()
            cfg = launch_config(composed, resume, overrides, set(hydra_cfg.runtime.choices), run_dir)
            check_model(cfg)
            check_values(cfg)
            check_parallel(cfg)
            if resume is not None:
                resume.check_data(cfg.data)
            metric = objective(cfg)
            check_no_links(run_dir)
            if rank_zero:
                lock = RunLock(run_dir, made if run_dir == hydra_dir else []).acquire()
            if resume is None and any((run_dir / "checkpoints").glob("*.ckpt")):
                raise UserError(
                    f"the run folder {run_dir} already holds another run's checkpoints; resume it with ckpt_path=auto, "
                    "or start this one in a new folder"
                )
            check_wandb(cfg)
            import lightning as L

            L.seed_everything(cfg.seed, workers=True, verbose=False)
            datamodule, module, trainer = build(cfg)
            if resume is not None:
                resume.check(module.hparams.model, module.hparams.tokenizer, cfg.trainer.max_steps, cfg.optim.name)
        except BaseException:
            if lock is not None:
                lock.release(refused=True)
            elif rank_zero:
                RunLock(hydra_dir, made).release(refused=True)
            raise
        finally:
            if rank_zero and (lock is None or lock.run != hydra_dir):  # Hydra's folder, unused: a resume elsewhere
                RunLock(hydra_dir, made).release(refused=True)
    smoke_test = bool(cfg.trainer.fast_dev_run)  # writes nothing: no records, no log, the folder goes after
    try:
        if rank_zero and not smoke_test:
            write_records(run_dir, cfg, composed, hydra_cfg, overrides, resume)
        with RunLog(run_dir) if rank_zero and not smoke_test else contextlib.nullcontext() as run_log:
            metrics = fit(cfg, datamodule, module, trainer, run_log)
    finally:
        if lock is not None:
            lock.release(refused=smoke_test)
    return metrics.get(metric)


def objective(cfg: DictConfig) -> str:
    """What a sweeper minimizes: hparams_search.metric with a search preset, else val/loss."""
    metric = OmegaConf.select(cfg, "hparams_search.metric", default=None) or "val/loss"
    if metric not in OBJECTIVES:
        raise UserError(f"hparams_search.metric must be one of {', '.join(OBJECTIVES)}, got {metric!r}")
    return metric


def main(argv: list[str] | None = None) -> int:
    """lgpt-train's command line (sys.argv[1:] if None); the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    run_dir = os.environ.get("LGPT_RUN_DIR")
    if run_dir and "LOCAL_RANK" in os.environ:  # a DDP rank launched by Lightning: same config as rank 0

        def rank() -> None:
            quiet_console()
            train(load_run_config(run_config_file(Path(run_dir))))

        return run(rank, ["lgpt-train"])
    try:
        return launch(task, "train", argv, "lgpt-train", interrupted="nothing was recorded", own_signals=True)
    finally:  # the next launch in this Python process (a notebook, a test) gets its own run folder
        os.environ.pop("LGPT_RUN_STAMP", None)


if __name__ == "__main__":
    raise SystemExit(main())
