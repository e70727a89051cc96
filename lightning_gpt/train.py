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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lightning_gpt.cli import (
    CONF_DIR,
    _first_line,
    fit_threads_to_load,
    one_line_errors,
    quiet_console,
    register_resolvers,
    run_app,
)
from lightning_gpt.errors import UserError

register_resolvers()
log = logging.getLogger(__name__)
CONFIG, RESUMED_CONFIG, RESUMES, LOCK = "config.yaml", "config-resumed.yaml", "resumes.yaml", ".lock"


def build_datamodule(cfg: DictConfig):
    from lightning_gpt.data import GPTDataModule

    return GPTDataModule(tokenizer=cfg.tokenizer.name, **OmegaConf.to_container(cfg.data, resolve=True))


def build_model_config(cfg: DictConfig, tokenizer) -> dict[str, Any]:
    """The GPT shape from the model config, its vocabulary following the tokenizer's by default.

    With model.init_from, the shape is the pretrained GPT-2's; model.block_size may only crop its context.
    """
    from lightning_gpt.model import GPTConfig

    model = OmegaConf.to_container(cfg.model, resolve=True)
    for key in ("compile", "init_from"):
        model.pop(key)
    if cfg.model.init_from:
        from lightning_gpt.hf import GPT2_TOKENIZERS, gpt2_config

        if tokenizer.name not in GPT2_TOKENIZERS:
            raise UserError(
                f"model.init_from={cfg.model.init_from} needs GPT-2's tokenizer, not {tokenizer.name}; "
                "add tokenizer=gpt2"
            )
        return gpt2_config(cfg.model.init_from, model["block_size"], model["dropout"]).to_dict()
    if model["vocab_size"] is None:
        model["vocab_size"] = tokenizer.vocab_size
    elif model["vocab_size"] < tokenizer.vocab_size:
        raise UserError(
            f"model.vocab_size={model['vocab_size']} is smaller than the {tokenizer.name} tokenizer's "
            f"{tokenizer.vocab_size} tokens; remove the override (null follows the tokenizer)"
        )
    try:
        return GPTConfig(**model).to_dict()
    except ValueError as e:
        raise UserError(str(e)) from e


def build_trainer(cfg: DictConfig):
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ProgressBar

    def instantiate_all(group: DictConfig) -> list:
        try:
            return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]
        except Exception as e:
            raise UserError(f"could not create {group._key()}: {e.__cause__ or e}".splitlines()[0]) from e

    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    check_trainer(trainer_kwargs)
    if isinstance(trainer_kwargs["val_check_interval"], int):  # optimizer steps; Lightning counts batches
        trainer_kwargs["val_check_interval"] *= trainer_kwargs["accumulate_grad_batches"]
    if isinstance(trainer_kwargs["strategy"], dict):
        trainer_kwargs["strategy"] = instantiate(cfg.trainer.strategy)
    if trainer_kwargs["plugins"]:
        trainer_kwargs["plugins"] = [instantiate(p) for p in cfg.trainer.plugins]
    callbacks = instantiate_all(cfg.callbacks)
    if not trainer_kwargs["enable_progress_bar"]:  # trainer.enable_progress_bar=false wins over callbacks/
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    try:
        return L.Trainer(**trainer_kwargs, logger=instantiate_all(cfg.logger) or False, callbacks=callbacks)
    except ValueError as e:  # Lightning's own check of a value, e.g. an unknown precision or strategy name
        raise UserError(f"bad trainer setting: {_first_line(e)}") from e


def check_trainer(t: dict[str, Any]) -> None:
    """What Lightning would only fail on mid-run (a division by zero, a crash at the first validation)."""
    for key in ("log_every_n_steps", "accumulate_grad_batches"):
        if t[key] < 1:
            raise UserError(f"trainer.{key} must be a positive integer, got {t[key]}")
    if t["max_steps"] == 0 or t["max_steps"] < -1:
        raise UserError(f"trainer.max_steps must be a positive integer (or -1 with max_epochs), got {t['max_steps']}")
    interval = t["val_check_interval"]
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
        raise UserError(
            f"trainer.val_check_interval must be a positive number of optimizer steps (or a fraction of an "
            f"epoch), got {interval}"
        )


def resolve_ckpt_path(value: str | None, log_dir: str, output_dir: str, task_name: str | None = None) -> str | None:
    """The checkpoint file to resume from, or None for a fresh start.

    value: a checkpoint file; a run folder (its last.ckpt, else its newest whole checkpoint); "latest" (that
    of the newest run of task_name under log_dir that is not still training); "auto" (that of this run
    folder if it has one, so a requeued job resumes, else a fresh start).
    """
    from lightning_gpt import find_checkpoint, newest_whole_checkpoint

    if value is None:
        return None
    if value == "auto":
        found = newest_whole_checkpoint(Path(output_dir))
        return str(found) if found else None
    if value == "latest":
        return str(find_checkpoint(latest_run(log_dir, task_name)))
    return str(find_checkpoint(value))


def latest_run(log_dir: str, task_name: str | None) -> Path:
    """The run folder of task_name (every task if None) whose newest checkpoint is newest, skipping runs
    that are still training (their lock is held)."""
    from lightning_gpt import newest_whole_checkpoint

    root = Path(log_dir) / (task_name or "")
    runs = [c.parent for c in root.glob("**/checkpoints") if c.is_dir()]
    busy = [r for r in runs if in_use(r)]
    newest = {r: max((p.stat().st_mtime for p in (r / "checkpoints").glob("*.ckpt")), default=None) for r in runs}
    for run in sorted((r for r in runs if r not in busy and newest[r]), key=newest.get, reverse=True):
        if newest_whole_checkpoint(run):
            return run
    still = f" ({len(busy)} still training)" if busy else ""
    raise UserError(
        f"ckpt_path=latest: no stopped or finished run with a checkpoint under {root}{still}; "
        "train first, or give ckpt_path=<run folder>"
    )


def in_use(run: Path) -> bool:
    """Whether an lgpt-train process holds this run folder's lock (see run_lock)."""
    import fcntl

    try:
        fd = os.open(run / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


@contextlib.contextmanager
def run_lock(run: Path) -> Iterator[None]:
    """Hold the run folder's lock while training. The kernel drops it when the process dies, even by
    SIGKILL, so a lock is held exactly while a run is alive: ckpt_path=latest skips such runs, and a second
    resume of a run that is still training is refused."""
    import fcntl

    try:
        run.mkdir(parents=True, exist_ok=True)
        fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot write to the run folder {run} ({e.strerror}); set paths.log_dir") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        raise UserError(
            f"{run} is in use by another lgpt-train (it holds {run / LOCK}); wait for it to end, "
            "or train in another folder"
        ) from e
    try:
        yield
    finally:
        os.close(fd)


def run_folder_of(ckpt_path: str) -> Path | None:
    """The run folder (one with a saved config) that a ckpt_path names or holds the checkpoint, else None."""
    path = Path(ckpt_path).expanduser()
    return next((run for run in (path, path.parent, path.parent.parent) if (run / CONFIG).is_file()), None)


def run_config_file(run: Path) -> Path:
    """The config a run folder's latest launch used: that of its latest resume, else the original."""
    return run / RESUMED_CONFIG if (run / RESUMED_CONFIG).is_file() else run / CONFIG


def resume_in_place(args: list[str]) -> list[str]:
    """`lgpt-train ckpt_path=<run folder>` (or `latest`) continues that run in its own folder: the command
    line gains hydra.run.dir=<that folder>, and Hydra's record of this launch goes to .hydra/resume-<time>
    (the original .hydra/ stays). Not for sweeps, nor when hydra.run.dir is given."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    given = [a for a in overrides if a.startswith("ckpt_path=")]
    if not given or {"-m", "--multirun"} & set(args) or any(a.startswith("hydra.run.dir=") for a in overrides):
        return args
    try:
        value = str(OverridesParser.create().parse_override(given[-1]).value())
    except Exception:
        return args  # Hydra reports the mistake
    if value == "latest":
        try:
            cfg = _compose([a for a in overrides if not a.startswith(("ckpt_path=", "hydra.", "hydra/"))])
        except Exception:
            return args
        folder = latest_run(cfg.paths.log_dir, cfg.task_name)
        args = [a for a in args if a not in given] + [f"ckpt_path={_quoted(folder.resolve())}"]
    else:
        folder = Path(value).expanduser()
        if not (folder / CONFIG).is_file():
            return args  # a checkpoint file, or a folder that is no run: a new run folder
    subdir = f".hydra/resume-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    return [*args, f"hydra.run.dir={_quoted(folder.resolve())}", f"hydra.output_subdir={subdir}"]


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def resumed_config(run: Path, composed: DictConfig, overrides: list[str], groups: set[str]) -> DictConfig:
    """The run's saved config with only this command line's overrides applied on top.

    Each override's value is taken from `composed` (the config Hydra built from the command line), so
    it is typed and checked as usual; a config group (`trainer=ddp_cpu`) replaces the whole node.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    saved = OmegaConf.load(run_config_file(run))
    old, new = saved.paths.output_dir, composed.paths.output_dir
    if old != new:  # a new folder (or a moved one): paths under the old run folder now point to this one
        swap = lambda v: new + v[len(old) :] if isinstance(v, str) and v.startswith(old) else v  # noqa: E203
        saved = OmegaConf.create(_map_leaves(OmegaConf.to_container(saved), swap))
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if override.is_hydra_override():
            continue
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(saved, parent) if parent else saved
            if node is not None and leaf in node:
                del node[leaf]
        elif key in groups and key not in composed:  # a group of the global package: experiment=, debug=
            if key == "experiment" and composed.task_name == saved.task_name:
                continue  # the run's own preset, repeated
            raise UserError(
                f"{key}={override.value()} cannot change when resuming {run}: it sets many keys at "
                "once; override the keys themselves, or start a new run without ckpt_path"
            )
        else:
            OmegaConf.update(saved, key, OmegaConf.select(composed, key), merge=False, force_add=True)
    return saved


def _map_leaves(node: Any, fn: Any) -> Any:
    if isinstance(node, dict):
        return {k: _map_leaves(v, fn) for k, v in node.items()}
    if isinstance(node, list):
        return [_map_leaves(v, fn) for v in node]
    return fn(node)


def keep_decay_horizon(cfg: DictConfig, ckpt_path: str, overrides: list[str]) -> int:
    """On a resume, the learning-rate schedule keeps the checkpoint's decay horizon, so a longer
    trainer.max_steps continues at min_lr instead of raising the learning rate again; an explicit
    optim.decay_steps=N stretches it. Returns the checkpoint's step."""
    import torch

    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        step, saved = checkpoint["global_step"], checkpoint["hyper_parameters"]["optim"]
    except Exception:
        return 0  # not one of ours, or damaged: check_resumable says so before training
    if any(o.split("=", 1)[0].lstrip("+") == "optim.decay_steps" for o in overrides):
        log.info(
            f"resuming at step {step}: optim.decay_steps={cfg.optim.decay_steps} given, the cosine schedule "
            f"is stretched to it (it was {saved.get('decay_steps')})"
        )
    elif "decay_steps" in saved:
        cfg.optim.decay_steps = saved["decay_steps"]
        log.info(
            f"resuming at step {step}: the learning rate keeps its schedule, decaying to optim.min_lr at "
            f"step {cfg.optim.decay_steps} and staying there; optim.decay_steps=N stretches it"
        )
    return step


def check_wandb(cfg: DictConfig) -> None:
    """A W&B logger without the wandb package: say so before any work (logger=many includes W&B)."""
    import importlib.util

    wandb = [name for name, node in cfg.logger.items() if node and "Wandb" in str(node.get("_target_", ""))]
    if wandb and importlib.util.find_spec("wandb") is None:
        raise UserError(
            f"logger.{wandb[0]} logs to Weights & Biases, which needs the wandb package: "
            "pip install 'lgpt[wandb]', or use logger=csv or logger=tensorboard"
        )


def _global_rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)


def save_config(cfg: DictConfig, output_dir: Path, overrides: list[str], step: int | None) -> None:
    """config.yaml: the resolved config a run started with, never rewritten. A launch in a folder that has
    one (a resume in place) writes config-resumed.yaml instead and adds an entry to resumes.yaml."""
    output_dir.mkdir(parents=True, exist_ok=True)  # for a process whose rank 0 is elsewhere
    text = OmegaConf.to_yaml(cfg)
    if not (output_dir / CONFIG).is_file():
        _write_atomically(output_dir / CONFIG, text)
        return
    _write_atomically(output_dir / RESUMED_CONFIG, text)
    entry = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "step": step,
        "checkpoint": cfg.ckpt_path,
        "overrides": [o for o in overrides if not o.startswith("hydra.")],
    }
    with open(output_dir / RESUMES, "a", encoding="utf-8") as f:
        f.write(OmegaConf.to_yaml([entry]))


def remove_if_unused(run: Path) -> None:
    """After a failed start, delete what the launch wrote when the run folder holds no checkpoint or
    metrics: no empty run folders pile up. Only names this app writes are removed."""
    import shutil

    if any(run.glob("**/*.ckpt")) or (run / "csv" / "metrics.csv").is_file():
        return
    for name in (".hydra", "csv", "tensorboard", "wandb"):
        shutil.rmtree(run / name, ignore_errors=True)
    for name in ("train.log", CONFIG, LOCK, "samples.md"):
        (run / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run.rmdir()  # only if nothing else is in it


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit once. `cfg` is fully resolved, so DDP ranks can run it without Hydra."""
    import lightning as L

    from lightning_gpt.callbacks import SampleText
    from lightning_gpt.checkpointing import check_resumable
    from lightning_gpt.distributed import children_run_this_app
    from lightning_gpt.module import GPTLightningModule

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    tokenizer = datamodule.tokenizer
    module = GPTLightningModule(
        model=build_model_config(cfg, tokenizer),
        tokenizer=tokenizer.to_dict(),
        optim=OmegaConf.to_container(cfg.optim),
        compile=cfg.model.compile,
        config=OmegaConf.to_container(cfg),
    )
    if cfg.model.init_from:  # fine-tuning: start from GPT-2's weights
        from lightning_gpt.hf import gpt2_state_dict

        module.model.load_state_dict(gpt2_state_dict(cfg.model.init_from, module.model.config.block_size))
    if datamodule.block_size > module.model.config.block_size:
        raise UserError(
            f"data.block_size={datamodule.block_size} is longer than the model's context "
            f"(model.block_size={module.model.config.block_size}); drop the data.block_size override"
        )
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.paths.log_dir, cfg.paths.output_dir)
    if ckpt_path is None and any((output_dir / "checkpoints").glob("*.ckpt")):
        raise UserError(
            f"the run folder {output_dir} already holds another run's checkpoints; resume it with ckpt_path=auto, "
            "or start this one in a new folder"
        )
    if ckpt_path:
        check_resumable(ckpt_path, module.hparams.model, module.hparams.tokenizer, cfg.trainer.max_steps)
    trainer = build_trainer(cfg)
    # DDP processes that Lightning starts run `lightning_gpt.train`, which reads this run's config from here.
    with children_run_this_app():
        os.environ["LGPT_RUN_DIR"] = str(output_dir)
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)  # no code in ckpts
        finally:
            if "wandb" in sys.modules:  # one W&B run per job of a multirun
                sys.modules["wandb"].finish()
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if not trainer.fast_dev_run:  # every process generates: a sharded model needs them all
            sample = SampleText(cfg.sample.prompt, cfg.sample.max_new_tokens, cfg.sample.temperature, cfg.sample.top_k)
            text = sample.generate(module)
            if trainer.is_global_zero:
                val_loss = f" val/loss {metrics['val/loss']:.4f} |" if "val/loss" in metrics else ""
                print(f"\nstep {trainer.global_step}:{val_loss} run folder {output_dir}")
                print(f"--- sample ---\n{text}\n--------------")
    return metrics


def task(cfg: DictConfig) -> float | None:
    """One Hydra job: resolve the config, save it in the run folder, train. Returns val/loss for sweepers.

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
            cfg, step = launch_config(cfg, overrides, set(hydra_cfg.runtime.choices))
            if rank_zero:
                save_config(cfg, output_dir, overrides, step)
            metrics = train(cfg)
    except BaseException:
        if fresh and rank_zero:
            remove_if_unused(output_dir)
        raise
    return metrics.get("val/loss")


def launch_config(cfg: DictConfig, overrides: list[str], groups: set[str]) -> tuple[DictConfig, int | None]:
    """This launch's config, with ckpt_path resolved to a file (or None), and the step it resumes from.

    With ckpt_path=<run folder> (or latest, or a checkpoint in a run folder) the config is that run's saved
    one plus this command line's overrides. For a run folder main() has already made it the Hydra run
    folder, so the run continues there; a checkpoint file starts a new folder.
    """
    output_dir = cfg.paths.output_dir
    value = str(latest_run(cfg.paths.log_dir, cfg.task_name)) if cfg.ckpt_path == "latest" else cfg.ckpt_path
    run = run_folder_of(value) if value not in (None, "auto") else None
    if run is not None:
        cfg = resumed_config(run, cfg, overrides, groups)
    cfg.ckpt_path = resolve_ckpt_path(value, cfg.paths.log_dir, output_dir, cfg.task_name)
    return cfg, keep_decay_horizon(cfg, cfg.ckpt_path, overrides) if cfg.ckpt_path else None


_hydra_main = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")(one_line_errors(task))


def main() -> None:
    run_dir = os.environ.get("LGPT_RUN_DIR")
    if run_dir and "LOCAL_RANK" in os.environ:  # a DDP rank launched by Lightning: same config as rank 0
        run_app(lambda: train(OmegaConf.load(run_config_file(Path(run_dir)))))
    else:

        def app() -> None:
            sys.argv = [sys.argv[0], *resume_in_place(sys.argv[1:])]
            _hydra_main()

        run_app(app)


if __name__ == "__main__":
    main()
