"""Run folders: one per launch, named so that every process of a launch agrees, locked while training,
resumed in place, their records kept; and the one value a resume is.

A run folder holds config.yaml (the resolved config it started with, never rewritten), .hydra/ (the composed
config and the command line's overrides), train.log, checkpoints/, csv/ and the other loggers' folders.
`lgpt-train ckpt_path=<run folder>` (or `latest`, `auto`) continues a run in its own folder from its saved
config plus the new command line's overrides: each such launch adds config-resumed.yaml (its config), an
entry in resumes.yaml and .hydra/resume-<time>/.

Nothing is written for a launch that is refused: the app checks everything first (`Resume`, the merged
config, the model and data), then takes the folder's lock (`RunLock`) and only then writes the records
(`write_records`). A refused launch removes only what it made itself: its lock file and the folders it
created, if they are empty. Every file written here is written as a new file or through a descriptor opened
without following symlinks, so a link planted in a run folder never redirects a write.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lightning_gpt.checkpoints import (
    LOCK,
    checkpoint_parts,
    find_checkpoint,
    is_hf_folder,
    latest_run,
    newest_whole_checkpoint,
    read_header,
)
from lightning_gpt.errors import UserError
from lightning_gpt.io import NO_FOLLOW, append_text, atomic_write

log = logging.getLogger(__name__)
CONFIG, RESUMED_CONFIG, RESUMES, TRAIN_LOG = "config.yaml", "config-resumed.yaml", "resumes.yaml", "train.log"
# Every name a training run writes in its folder: none may be a symlink there (see check_no_links).
WRITTEN = (CONFIG, RESUMED_CONFIG, RESUMES, TRAIN_LOG, LOCK, ".hydra", "checkpoints", "csv", "tensorboard", "wandb")
WRITTEN += ("samples.md", "attention", "explain.html", "fit-profile.txt", "eval")
WRITTEN_INSIDE = ("csv/metrics.csv", "wandb/run_id")  # files in those folders a run reads back, then writes


# ---------------------------------------------------------------------------------------------------
# Names: one folder per launch, the same for every process of it


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


# ---------------------------------------------------------------------------------------------------
# Saved configs


# Where classes a saved config names by `_target_` live now (run folders of older versions name the old places).
MOVED = {
    "lightning_gpt.callbacks.StepProgressBar": "lightning_gpt.training.progress.StepProgressBar",
    "lightning_gpt.distributed.FSDPStrategy": "lightning_gpt.parallel.strategy.FSDPStrategy",
    "lightning_gpt.training.strategies.FSDPStrategy": "lightning_gpt.parallel.strategy.FSDPStrategy",
    "lightning_gpt.checkpointing.": "lightning_gpt.training.checkpoint_io.",
    "lightning_gpt.callbacks.": "lightning_gpt.training.callbacks.",
    "lightning_gpt.loggers.": "lightning_gpt.training.loggers.",
    "lightning_gpt.distributed.": "lightning_gpt.training.strategies.",
    "lightning_gpt.sweeps.": "lightning_gpt.apps.sweeps.",
}


def run_config_file(run: Path) -> Path:
    """The config a run folder's latest launch used: that of its latest resume, else the original."""
    return run / RESUMED_CONFIG if (run / RESUMED_CONFIG).is_file() else run / CONFIG


def load_run_config(path: Path) -> DictConfig:
    """A run folder's saved config, read as possibly damaged (one line naming the file), with the `_target_`s
    of classes that have moved since pointing at them."""
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link; a run's config is read only from a file of its own")
    try:
        saved = OmegaConf.load(path)
    except Exception as e:
        raise UserError(f"{path} is not a readable run config ({type(e).__name__}); restore it from a backup") from e
    if not isinstance(saved, DictConfig) or "paths" not in saved:
        raise UserError(f"{path} is not a run config of lgpt-train (no paths in it); restore it from a backup")

    def moved(value: Any) -> Any:
        if isinstance(value, str):
            for old, new in MOVED.items():
                if value.startswith(old):
                    return new + value[len(old) :]
        return value

    saved = OmegaConf.create(_map_leaves(OmegaConf.to_container(saved), moved))
    return _with_new_settings(_with_mesh(saved))


# The mesh of the FSDP strategy of older versions, which had no setting for it: FSDP2 over every process.
OLD_FSDP_MESH = {"data_parallel_replicate": 1, "data_parallel_shard": "auto", "tensor_parallel_size": 1}


def _with_mesh(saved: DictConfig) -> DictConfig:
    """A saved FSDP strategy of an older version, given the mesh it trained on (and no sequence parallelism,
    which needs tensor parallelism anyway)."""
    strategy = OmegaConf.select(saved, "trainer.strategy")
    if isinstance(strategy, DictConfig) and strategy.get("_target_") == MOVED["lightning_gpt.distributed.FSDPStrategy"]:
        for key, value in {**OLD_FSDP_MESH, "sequence_parallel": False}.items():
            strategy.setdefault(key, value)
    return saved


def _with_new_settings(saved: DictConfig) -> DictConfig:
    """A config saved by an older version, given the settings added since, at the schema's defaults."""
    import dataclasses

    from lightning_gpt import schema

    for f in dataclasses.fields(schema.TrainConfig):
        node_type = getattr(schema, str(f.type).removesuffix(" | None"), None)
        if isinstance(saved.get(f.name), DictConfig) and dataclasses.is_dataclass(node_type):
            for setting in dataclasses.fields(node_type):
                if setting.name not in saved[f.name] and setting.default is not dataclasses.MISSING:
                    saved[f.name][setting.name] = setting.default
    for key, callback in (saved.get("callbacks") or {}).items():  # settings added to our callbacks since
        conf = schema.CONF_DIR / "callbacks" / f"{key}.yaml"
        default = OmegaConf.load(conf).get(key) if conf.is_file() else None
        if isinstance(callback, DictConfig) and isinstance(default, DictConfig):
            if callback.get("_target_") == default.get("_target_"):
                for setting, value in OmegaConf.to_container(default).items():  # interpolations kept
                    callback.setdefault(setting, value)
                for setting in _removed_settings(callback, set(default)):
                    del callback[setting]
    return saved


def _removed_settings(callback: DictConfig, current: set[str]) -> list[str]:
    """The saved settings of one of our callbacks that its class no longer takes (TokenThroughputMonitor's
    window_size, before it read the clock): a run saved before would not resume with them."""
    import inspect

    from hydra.utils import get_class

    stale = [k for k in callback if not str(k).startswith("_") and k not in current]
    if not stale:
        return []
    try:
        parameters = inspect.signature(get_class(callback._target_).__init__).parameters
    except Exception:  # a class that cannot be imported: its own error comes when it is built
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    return [k for k in stale if k not in parameters]


def _map_leaves(node: Any, fn: Any) -> Any:
    if isinstance(node, dict):
        return {k: _map_leaves(v, fn) for k, v in node.items()}
    if isinstance(node, list):
        return [_map_leaves(v, fn) for v in node]
    return fn(node)


# ---------------------------------------------------------------------------------------------------
# The one resume value


@dataclass(frozen=True)
class Resume:
    """Where a launch resumes from, resolved once from ckpt_path (a file, a run folder, latest or auto): the
    checkpoint file, verified and its header read once, and the run it belongs to."""

    file: Path
    step: int
    hparams: dict[str, Any]  # the checkpoint's hyper_parameters: model, tokenizer, optim, config
    run: Path | None  # the run folder it belongs to (one with a saved config), else None
    in_place: bool  # ckpt_path named the run (a folder, latest, auto): it continues in that folder

    @staticmethod
    def resolve(ckpt_path: str | None, log_dir: str, task_name: str, output_dir: Path) -> Resume | None:
        """None for a fresh start: ckpt_path null, or auto in a folder without a checkpoint."""
        if ckpt_path is None:
            return None
        if ckpt_path == "auto":  # this folder's own checkpoint, if it has one (a requeued job)
            file = newest_whole_checkpoint(output_dir) if output_dir.is_dir() else None
            return None if file is None else Resume.read(file, _run_of(file), True)
        if ckpt_path == "latest":
            folder = latest_run(log_dir, task_name)
            return Resume.read(find_checkpoint(folder), folder, True)
        path = Path(ckpt_path).expanduser()
        if is_hf_folder(path):
            raise UserError(
                f"ckpt_path={ckpt_path} is a transformers folder, not a training checkpoint; fine-tune it with "
                f"model=pretrained model.init_from={ckpt_path}"
            )
        file = find_checkpoint(path)
        run = _run_of(file)
        return Resume.read(file, run, run is not None and path.is_dir())

    @staticmethod
    def read(file: Path, run: Path | None, in_place: bool) -> Resume:
        checkpoint = read_header(file)  # checksums verified, tensors not read
        _, _, hparams = checkpoint_parts(checkpoint, file)
        return Resume(file, int(checkpoint.get("global_step", 0)), hparams, run, in_place)

    def check(self, model: dict[str, Any], tokenizer: dict[str, Any], max_steps: int, optimizer: str) -> None:
        """Refuse a resume that cannot continue: another model shape, tokenizer or optimizer, or nothing left to
        train."""
        from lightning_gpt.models import config_from_dict

        saved_optimizer = (self.hparams.get("optim") or {}).get("name", "adamw")
        if saved_optimizer != optimizer:
            raise UserError(
                f"cannot resume from {self.file}: it was trained with optim.name={saved_optimizer}, this run has "
                f"optim.name={optimizer}; resume with the optimizer it was trained with (optim={saved_optimizer})"
            )

        saved_tokenizer = self.hparams["tokenizer"]
        if saved_tokenizer["name"] != tokenizer["name"]:
            raise UserError(
                f"cannot resume from {self.file}: it was trained with tokenizer.name={saved_tokenizer['name']}, "
                f"this run has tokenizer.name={tokenizer['name']}; use the checkpoint's tokenizer"
            )
        if saved_tokenizer != tokenizer and "chars" in tokenizer:
            raise UserError(
                f"cannot resume from {self.file}: its character vocabulary ({len(saved_tokenizer.get('chars', ''))} "
                f"chars) differs from this run's data ({len(tokenizer.get('chars', ''))} chars); resume on the same "
                "data"
            )
        if saved_tokenizer != tokenizer:
            raise UserError(
                f"cannot resume from {self.file}: its {tokenizer['name']} vocabulary, learned from its training "
                "data, differs from this run's (the data or tokenizer.vocab_size changed); resume on the same data "
                "and settings"
            )
        saved = config_from_dict(self.hparams["model"]).to_dict()  # from before families: no family key
        for key in sorted(set(saved) | set(model), key=lambda k: k != "family"):  # another family says most
            if key != "dropout" and saved.get(key) != model.get(key):  # dropout may change; the rest are shapes
                raise UserError(
                    f"cannot resume from {self.file}: it was trained with model.{key}={saved.get(key)}, this run has "
                    f"model.{key}={model.get(key)}; use the checkpoint's value, or drop ckpt_path to start afresh"
                )
        if 0 <= max_steps <= self.step:
            raise UserError(
                f"{self.file} is already at step {self.step} and trainer.max_steps={max_steps}: nothing to train; "
                f"raise trainer.max_steps above {self.step} to continue"
            )

    def check_data(self, data: Any) -> None:
        """Refuse other values of the data settings a resume keeps (RESUMED_DATA; `data` is this run's data
        config): training batch k is a function of them, so with another value the run would not continue the
        data it was trained on. A checkpoint saved before a key existed had its schema default. Reads no
        data: called before anything is read, tokenized or written."""
        from lightning_gpt.schema import DataConfig

        config = self.hparams.get("config")
        if not config or "data" not in config:
            return  # a checkpoint without its run config: nothing to compare
        data = OmegaConf.to_container(data, resolve=True) if isinstance(data, DictConfig) else data
        for key in RESUMED_DATA:
            saved = config["data"].get(key, getattr(DataConfig, key))
            if (different := _first_difference(f"data.{key}", saved, data.get(key))) is not None:
                name, was, now = different
                raise UserError(
                    f"cannot resume from {self.file}: it was trained with {name}={was}, this run has {name}={now}; "
                    "the batches it continues depend on it: use the checkpoint's value, or drop ckpt_path to start "
                    "afresh"
                )


# Data settings a resume may not change (Resume.check_data): packing, masking, a mixture's sources and weights.
RESUMED_DATA = ("packing", "doc_masking", "sources")


def _first_difference(key: str, a: Any, b: Any) -> tuple[str, Any, Any] | None:
    """(dotted key, a's value, b's value) where two nested dicts first differ, or None if they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            if (different := _first_difference(f"{key}.{k}", a.get(k), b.get(k))) is not None:
                return different
        return None
    return None if a == b else (key, a, b)


def run_folder_containing(path: str | Path) -> Path | None:
    """The run folder that path is, or lies inside (a folder with a saved config and checkpoints/ or .hydra/)."""
    path = Path(path).expanduser().absolute()
    for folder in [path, *path.parents]:
        if (folder / CONFIG).is_file() and ((folder / "checkpoints").is_dir() or (folder / ".hydra").is_dir()):
            return folder
    return None


def _run_of(file: Path) -> Path | None:
    """The run folder (one with a saved config) a checkpoint file lies in, else None."""
    return next((run for run in (file.parent, file.parent.parent) if (run / CONFIG).is_file()), None)


def launch_config(
    composed: DictConfig, resume: Resume | None, overrides: list[str], groups: set[str], run_dir: Path
) -> DictConfig:
    """This launch's resolved config: for a checkpoint of a run, that run's saved config with only this command
    line's overrides applied; the run folder's paths point at run_dir; ckpt_path names the checkpoint file.

    `composed` is the config Hydra built, not yet resolved: an override's value is taken from it, typed and
    checked as usual, and a config group (`data=local`) replaces the whole node with its interpolations
    (`${model.block_size}`) resolving against the resumed config.
    """
    if resume is None or resume.run is None:
        cfg = composed.copy()
    else:
        cfg = resumed_config(resume.run, composed, overrides, groups, resume.hparams.get("config"))
    old = cfg.paths.output_dir if resume is not None and resume.run is not None else None
    cfg.paths.output_dir = str(run_dir)
    if old and old != str(run_dir):  # a new folder (or a moved one): paths under the old folder point here
        inside = lambda v: isinstance(v, str) and (v == old or v.startswith(old + "/"))
        swap = lambda v: str(run_dir) + v[len(old) :] if inside(v) else v
        cfg = OmegaConf.create(_map_leaves(OmegaConf.to_container(cfg), swap))
    OmegaConf.resolve(cfg)
    cfg.ckpt_path = str(resume.file) if resume is not None else None  # ckpt_path=auto with nothing to resume
    if resume is not None:
        keep_decay_horizon(cfg, resume, overrides)
    return cfg


def resumed_config(
    run: Path, composed: DictConfig, overrides: list[str], groups: set[str], recorded: Any = None
) -> DictConfig:
    """The run's saved config with only this command line's overrides applied on top (see launch_config).
    `recorded`, the config the checkpoint carries, tells a saved config cut short (its last keys gone)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = run_config_file(run)
    saved = load_run_config(path)
    if missing := [key for key in recorded or {} if key not in saved]:
        raise UserError(
            f"{path} is cut short or damaged: it has no '{missing[0]}', which the checkpoint's config has; "
            "restore it from a backup"
        )
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if override.is_hydra_override() or key == "ckpt_path":
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
            value = OmegaConf.select(composed, key, throw_on_resolution_failure=False)
            if isinstance(value, DictConfig):  # a group (data=local): its interpolations resolve against saved
                value = OmegaConf.to_container(value, resolve=False)
            OmegaConf.update(saved, key, value, merge=False, force_add=True)
    return saved


def keep_decay_horizon(cfg: DictConfig, resume: Resume, overrides: list[str]) -> None:
    """On a resume, the learning-rate schedule keeps the checkpoint's decay horizon, so a longer
    trainer.max_steps continues at min_lr instead of raising the learning rate again; an explicit
    optim.decay_steps=N stretches it."""
    saved = resume.hparams.get("optim") or {}
    if any(o.split("=", 1)[0].lstrip("+") == "optim.decay_steps" for o in overrides):
        log.info(
            f"resuming at step {resume.step}: optim.decay_steps={cfg.optim.decay_steps} given, the schedule "
            f"is stretched to it (it was {saved.get('decay_steps')})"
        )
    elif "decay_steps" in saved:
        cfg.optim.decay_steps = saved["decay_steps"]
        log.info(
            f"resuming at step {resume.step}: the learning rate keeps its schedule, decaying to optim.min_lr at "
            f"step {cfg.optim.decay_steps} and staying there; optim.decay_steps=N stretches it"
        )


# ---------------------------------------------------------------------------------------------------
# The lock, and what a launch writes once it is accepted


class RunFolders(Callback):
    """A Hydra callback noting the folders Hydra is about to create for this launch (the run or sweep folder
    and its missing parents, before Hydra makes them), so that a refused launch removes exactly those."""

    made: list[Path] = []  # shallowest first

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        RunFolders.made = _missing(Path(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        RunFolders.made = _missing(Path(config.hydra.sweep.dir))

    @staticmethod
    def made_for(folder: Path) -> list[Path]:
        """The folders this launch made up to `folder` (a sweep's job folder: when its sweep folder is new)."""
        made = [p.absolute() for p in RunFolders.made]
        folder = folder.absolute()
        if made and folder not in made and made[-1] in folder.parents:
            made += _missing_between(made[-1], folder)
        return [p for p in made if p == folder or p in folder.parents]


def _missing(path: Path) -> list[Path]:
    return [p for p in reversed([path.absolute(), *path.absolute().parents]) if not p.exists()]


def _missing_between(top: Path, folder: Path) -> list[Path]:
    return [p for p in reversed([folder, *folder.parents]) if top in p.parents]


def check_no_links(run: Path) -> None:
    """Refuse a run folder where a name the run writes is a symbolic link: a write would land elsewhere."""
    for name in WRITTEN:
        if (run / name).is_symlink():
            raise UserError(
                f"{run / name} is a symbolic link; lgpt-train writes there only into a file or folder of its own: "
                "remove the link, or train in another folder"
            )
    for name in WRITTEN_INSIDE:
        if (run / name).is_symlink():
            raise UserError(f"{run / name} is a symbolic link; remove it, or train in another folder")


class RunLock:
    """The run folder's lock, held while a launch trains there. The kernel drops it when the process dies, even
    by SIGKILL, so a lock is held exactly while a run is alive: ckpt_path=latest skips such runs, and a second
    lgpt-train on a folder that is training is refused.

    `acquire` makes the folder if it is missing (remembering which folders it made) and a `.lock` file in it;
    `release(refused=True)` undoes exactly that (the lock file, and the folders it made if they stayed empty),
    `release()` at the end of a run removes the lock file if this launch made it.
    """

    def __init__(self, run: Path, made_by_launch: list[Path] | None = None):
        self.run = run
        self.made: list[Path] = list(made_by_launch or [])  # folders this launch created, deepest last
        self.fd: int | None = None
        self.made_lock = False

    def acquire(self) -> RunLock:
        import fcntl

        missing = [p for p in [self.run, *self.run.parents] if not p.exists()]
        try:
            self.run.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(
                f"cannot write {self.run} ({e.strerror}); choose a writable folder: hydra.run.dir=..."
            ) from e
        self.made += reversed(missing)
        path = self.run / LOCK
        while True:  # a lock file removed by its maker between our open and flock is a new lock: retry
            try:
                self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | NO_FOLLOW, 0o644)
                self.made_lock = True
            except FileExistsError:
                try:
                    self.fd = os.open(path, os.O_RDWR | NO_FOLLOW)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    self.release(refused=True)
                    raise UserError(f"cannot open {path} ({e.strerror}); remove it if it is not a lock file") from e
            except OSError as e:
                self.release(refused=True)
                raise UserError(f"cannot write {self.run} ({e.strerror}); choose a writable folder") from e
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(self.fd)
                self.fd = None
                self.made_lock = False
                self.release(refused=True)
                raise UserError(
                    f"{self.run} is in use by another lgpt-train (it holds {path}); wait for it to end, "
                    "or train in another folder"
                ) from e
            try:
                same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(self.fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return self
            os.close(self.fd)
            self.fd, self.made_lock = None, False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def release(self, refused: bool = False) -> None:
        if self.made_lock:
            (self.run / LOCK).unlink(missing_ok=True)  # before closing: no other launch holds it meanwhile
        if self.fd is not None:
            os.close(self.fd)
        self.fd, self.made_lock = None, False
        if refused:
            for folder in reversed(self.made):  # deepest first, each only if nothing is in it
                try:
                    folder.rmdir()
                except OSError as e:
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                        raise
                    break
            self.made = []


def write_records(
    run: Path, cfg: DictConfig, composed: DictConfig, hydra_cfg: Any, overrides: list[str], resume: Resume | None
) -> None:
    """What an accepted launch records in its run folder: config.yaml and .hydra/ for the first launch; for a
    resume in place, config-resumed.yaml, an entry in resumes.yaml and .hydra/resume-<time>/."""
    first = not (run / CONFIG).is_file()
    record = run / ".hydra" if first else run / ".hydra" / f"resume-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    record.mkdir(parents=True, exist_ok=not first)
    atomic_write(record / "config.yaml", OmegaConf.to_yaml(composed))
    atomic_write(record / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
    atomic_write(record / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))
    text = OmegaConf.to_yaml(cfg)
    if first:
        atomic_write(run / CONFIG, text)
        return
    atomic_write(run / RESUMED_CONFIG, text)
    entry = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "step": resume.step if resume is not None else None,
        "checkpoint": cfg.ckpt_path,
        "overrides": [o for o in overrides if not o.startswith("hydra.")],
    }
    append_text(run / RESUMES, OmegaConf.to_yaml([entry]))


class RunLog(logging.Handler):
    """train.log: every log line of the run, and what the app prints at its end, appended (never through a
    symlink). Attached to the root logger once the launch is accepted."""

    def __init__(self, run: Path):
        super().__init__(logging.INFO)
        self.path = run / TRAIN_LOG
        self.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)

    def write(self, text: str) -> None:
        append_text(self.path, text)

    def __enter__(self) -> RunLog:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger().removeHandler(self)
