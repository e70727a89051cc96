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

from omegaconf import DictConfig, OmegaConf

from lightning_gpt.apps.console import fit_threads_to_load, quiet_console
from lightning_gpt.apps.launch import launch, run
from lightning_gpt.errors import UserError
from lightning_gpt.runs import (
    CONFIG,
    launch_config,
    load_run_config,
    remove_if_unused,
    resume_in_place,
    run_config_file,
    run_lock,
    save_config,
)
from lightning_gpt.training.build import check_wandb

log = logging.getLogger(__name__)


def _global_rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit once. `cfg` is fully resolved, so DDP ranks can run it without Hydra."""
    import lightning as L

    from lightning_gpt.checkpoints import check_resumable, resolve_ckpt_path
    from lightning_gpt.generation import complete
    from lightning_gpt.training.build import build
    from lightning_gpt.training.strategies import children_run_this_app, full_parameters

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    output_dir = Path(cfg.paths.output_dir)
    datamodule, module, trainer = build(cfg)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.paths.log_dir, cfg.paths.output_dir)
    if ckpt_path is None and any((output_dir / "checkpoints").glob("*.ckpt")):
        raise UserError(
            f"the run folder {output_dir} already holds another run's checkpoints; resume it with ckpt_path=auto, "
            "or start this one in a new folder"
        )
    if ckpt_path:
        check_resumable(ckpt_path, module.hparams.model, module.hparams.tokenizer, cfg.trainer.max_steps)
    # Lightning's DDP launcher (strategies/launchers/subprocess_script.py) starts the other local ranks by
    # re-running this process's command with its environment. Those ranks must not compose a config of
    # their own (a new run folder, a new stamp): LGPT_RUN_DIR tells them to read rank 0's, saved there.
    with children_run_this_app():
        os.environ["LGPT_RUN_DIR"] = str(output_dir)
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)  # no code in ckpts
        finally:
            if "wandb" in sys.modules:  # one W&B run per job of a multirun
                sys.modules["wandb"].finish()
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if not trainer.fast_dev_run:  # every process generates: a sharded model needs them all
            with full_parameters(module.model):
                text = complete(module.model, module.tokenizer, **cfg.sample, seed=0)[0]
            if trainer.is_global_zero:
                scores = "".join(f" {key} {metrics[key]:.4f}" for key in ("val/loss", "val/bpb") if key in metrics)
                print(f"\nstep {trainer.global_step}:{scores}{' |' if scores else ''} run folder {output_dir}")
                print(f"--- sample ---\n{text}\n--------------")
    return metrics


def task(cfg: DictConfig) -> float | None:
    """One Hydra job: resolve the config, save it in the run folder, train. Returns val/loss (or
    hparams_search.metric) for sweepers.

    The run folder is locked while this runs; if the run fails before saving anything, the folder goes.
    """
    from hydra.core.hydra_config import HydraConfig

    quiet_console()
    if note := fit_threads_to_load():
        log.warning(note)
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    OmegaConf.resolve(cfg)
    output_dir = Path(cfg.paths.output_dir)
    rank_zero = _global_rank() == 0  # under torchrun or srun every process runs this
    fresh = not (output_dir / CONFIG).exists()
    try:
        with run_lock(output_dir) if rank_zero else contextlib.nullcontext():
            check_wandb(cfg)
            metric = objective(cfg)
            cfg, step = launch_config(cfg, overrides, set(hydra_cfg.runtime.choices))
            if rank_zero:
                save_config(cfg, output_dir, overrides, step)
            metrics = train(cfg)
    except BaseException:
        if fresh and rank_zero:
            remove_if_unused(output_dir)
        raise
    return metrics.get(metric)


def objective(cfg: DictConfig) -> str:
    """What a sweeper minimizes: hparams_search.metric (checked by the schema) with a search preset, else val/loss."""
    if cfg.get("hparams_search") is None:
        return "val/loss"
    return OmegaConf.to_object(cfg.hparams_search).metric


def main(argv: list[str] | None = None) -> int:
    """lgpt-train's command line (sys.argv[1:] if None); the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    run_dir = os.environ.get("LGPT_RUN_DIR")
    if run_dir and "LOCAL_RANK" in os.environ:  # a DDP rank launched by Lightning: same config as rank 0
        return run(lambda: train(load_run_config(run_config_file(Path(run_dir)))), ["lgpt-train"])
    try:
        return launch(task, "train", resume_in_place(argv), "lgpt-train")
    finally:  # the next launch in this Python process (a notebook, a test) gets its own run folder
        os.environ.pop("LGPT_RUN_STAMP", None)


if __name__ == "__main__":
    raise SystemExit(main())
