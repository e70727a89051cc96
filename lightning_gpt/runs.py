"""Run folders: one per launch, locked while training, resumed in place, their configs kept.

A run folder holds config.yaml (the resolved config it started with, never rewritten), .hydra/, the logs,
checkpoints/ and .lock. `lgpt-train ckpt_path=<run folder>` (or `latest`, `auto`) continues a run in its
own folder from its saved config plus the new command line's overrides.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_gpt.apps.launch import CONF_DIR
from lightning_gpt.checkpoints import LOCK, latest_run, resolve_ckpt_path
from lightning_gpt.errors import UserError

log = logging.getLogger(__name__)
CONFIG, RESUMED_CONFIG, RESUMES = "config.yaml", "config-resumed.yaml", "resumes.yaml"


def run_stamp(overrides: list[str] | None = None) -> str:
    """A run folder name unique to this launch, shared by every process of it.

    Time plus a random suffix, so two runs started in the same second never share a folder. Kept in the
    environment so the DDP processes Lightning starts agree; under torchrun, rank 0's name reaches every
    node through torchrun's store. Under SLURM the job id and the command-line overrides name the folder:
    every node and a requeued job land in the same one, and two trainings in one job in two.
    """
    if "LGPT_RUN_STAMP" not in os.environ:
        fresh = time.strftime("%Y-%m-%d_%H-%M-%S_") + secrets.token_hex(2)
        if "SLURM_JOB_ID" in os.environ:
            digest = hashlib.sha256(" ".join(sorted(overrides or [])).encode()).hexdigest()[:6]
            stamp = f"job{os.environ['SLURM_JOB_ID']}_{digest}"
        elif "TORCHELASTIC_RUN_ID" in os.environ:
            stamp = agree_on_stamp(fresh)
        else:
            stamp = fresh
        os.environ["LGPT_RUN_STAMP"] = stamp
    return os.environ["LGPT_RUN_STAMP"]


def run_name(output_dir: str) -> str:
    """A run's name in dashboards: its run folder's name, `<sweep folder>/<job>` for a job of a multirun."""
    path = Path(output_dir)
    return f"{path.parent.name}/{path.name}" if path.name.isdigit() else path.name


def sweep_name(output_dir: str) -> str | None:
    """A multirun job's sweep folder name (its W&B group); None for a single run."""
    path = Path(output_dir)
    return path.parent.name if path.name.isdigit() else None


def torchrun_store():
    """A client of torchrun's key-value store, or None when not launched by torchrun."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or "MASTER_ADDR" not in os.environ:
        return None
    from torch.distributed import TCPStore

    return TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=300),
        wait_for_workers=False,
    )


def agree_on_stamp(fresh: str) -> str:
    """The run folder name every torchrun process uses: rank 0's `fresh`, shared through torchrun's store.

    torchrun keeps that store for the whole launch, so a restarted worker group (`--max-restarts`) finds
    the same name and `ckpt_path=auto` resumes in the same folder.
    """
    store = torchrun_store()
    if store is None:
        return fresh
    key = f"lgpt_run_stamp/{os.environ['TORCHELASTIC_RUN_ID']}"
    if int(os.environ.get("RANK", "0")) == 0:
        store.compare_set(key, "", fresh)  # first writer wins: a restarted rank 0 keeps the first name
    return store.get(key).decode()


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


# Where classes a saved config names by `_target_` live now (run folders of older versions name the old places).
MOVED = {
    "lightning_gpt.checkpointing.": "lightning_gpt.training.checkpoint_io.",
    "lightning_gpt.callbacks.": "lightning_gpt.training.callbacks.",
    "lightning_gpt.loggers.": "lightning_gpt.training.loggers.",
    "lightning_gpt.distributed.": "lightning_gpt.training.strategies.",
    "lightning_gpt.sweeps.": "lightning_gpt.apps.sweeps.",
}


def load_run_config(path: Path) -> DictConfig:
    """A run folder's saved config, with the `_target_`s of classes that have moved since pointing at them."""

    def moved(value: Any) -> Any:
        if isinstance(value, str):
            for old, new in MOVED.items():
                if value.startswith(old):
                    return new + value[len(old) :]
        return value

    return OmegaConf.create(_map_leaves(OmegaConf.to_container(OmegaConf.load(path)), moved))


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

    saved = load_run_config(run_config_file(run))
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
