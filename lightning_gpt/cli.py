"""What the command-line apps share: where the configs are, run folders, and one-line errors."""

from __future__ import annotations

import dataclasses
import difflib
import errno
import functools
import hashlib
import os
import secrets
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning_gpt.errors import UserError

_GLOBAL_GROUPS = ("experiment", "debug")  # lgpt-train's config groups that set keys everywhere, no key of their own
_CANNOT_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC, errno.EDQUOT}
PACKAGE_DIR = Path(__file__).resolve().parent
# Inside an installed wheel the configs live in the package; in a source checkout, beside it.
CONF_DIR = str(PACKAGE_DIR / "conf" if (PACKAGE_DIR / "conf").is_dir() else PACKAGE_DIR.parent / "conf")


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
            from lightning_gpt.distributed import agree_on_stamp

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


def job_tags(tags: list[str]) -> Any:
    """tags=[...], plus a multirun job's own overrides (what tells the jobs of a sweep apart), each cut to
    W&B's 64 characters. A ListConfig: OmegaConf.resolve cannot store a plain list from a resolver."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    tags = [str(t) for t in tags]
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        tags += [o[:64] for o in HydraConfig.get().overrides.task if not o.startswith(("hydra", "paths."))]
    return OmegaConf.create(tags)


def device_count(devices: Any) -> int:
    """trainer.devices as a number, for a launcher that reserves that many GPUs (and processes) per node."""
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    if isinstance(devices, Sequence) and not isinstance(devices, str):  # GPU indices
        return len(devices)
    raise UserError(
        f"trainer.devices={devices}: the launcher reserves GPUs for each job, give their number: trainer.devices=N"
    )


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    from lightning_gpt.config import family_default, register_configs

    register_configs()
    # conf/hydra/launcher/submitit_*.yaml replace the plugin's configs of the same name, which Hydra then
    # uses as their schema, warning that it will stop doing so: ours are complete without it.
    warnings.filterwarnings("ignore", message=r"\n'hydra/launcher/submitit_\w+' is validated against ConfigStore")
    OmegaConf.register_new_resolver("lgpt_family_default", family_default, replace=True)
    OmegaConf.register_new_resolver("lgpt_run_stamp", run_stamp, replace=True)
    OmegaConf.register_new_resolver("lgpt_run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("lgpt_sweep_name", sweep_name, replace=True)
    OmegaConf.register_new_resolver("lgpt_job_tags", job_tags, replace=True)
    OmegaConf.register_new_resolver("lgpt_device_count", device_count, replace=True)
    OmegaConf.register_new_resolver(
        "lgpt_tag_dict", lambda tags: OmegaConf.create(dict.fromkeys(map(str, tags), "true")), replace=True
    )


_ADVERTISEMENTS = ("💡 Tip:", "`weights_only` was not set")  # Lightning's ads; its note on a full save


def quiet_console() -> None:
    """Each log line once, without Lightning's advertisements or library deprecation noise.

    Lightning gives its loggers a console handler of their own and lets them propagate too: under
    Hydra's logging (console + <run>/<app>.log) every line printed twice. Call once Hydra has set up logging.
    """
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  # adds its handlers on import: remove them after

    if logging.getLogger().hasHandlers():
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lightning_logger = logging.getLogger(name)
            for handler in list(lightning_logger.handlers):
                lightning_logger.removeHandler(handler)
            lightning_logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.trainer.connectors.checkpoint_connector"):
        logging.getLogger(name).addFilter(lambda record: not str(record.msg).startswith(_ADVERTISEMENTS))
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # torch vs Lightning's _pytree
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # a resume
    # Our window datasets have a length on purpose: each process's share, computed per rank (data/windows.py).
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


def fit_threads_to_load() -> str | None:
    """Fewer torch threads when other processes keep the CPUs busy; returns what it did, to log.

    torch starts one thread per core; when other work holds those cores, its threads wait for each other
    at every parallel region and training slows down many times (docs/benchmarks.md, "threads"). With
    the 1-minute load average above the idle cores, use only the idle ones (at least one). Done once per
    process, before this process loads the CPUs itself; OMP_NUM_THREADS, when set, always wins.
    """
    import torch

    global _threads_fitted
    if _threads_fitted or "OMP_NUM_THREADS" in os.environ or torch.cuda.is_available():
        return None
    _threads_fitted = True
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load, threads = os.getloadavg()[0], torch.get_num_threads()
    idle = max(1, round(cores - load))
    if idle >= threads:
        return None
    torch.set_num_threads(idle)
    return (
        f"the CPUs are busy (load average {load:.1f} on {cores} cores): using {idle} torch thread(s) instead "
        f"of {threads}; set OMP_NUM_THREADS to choose"
    )


_threads_fitted = False


def run_app(hydra_main: Callable[[], Any]) -> None:
    """Run a Hydra app, turning user mistakes into one line on stderr and exit code 2.

    Set HYDRA_FULL_ERROR=1 for the full traceback. Errors that are not the user's (bugs) keep theirs.
    """
    if "_LGPT_TRACEBACK" not in os.environ:  # decided once, inherited by DDP ranks
        os.environ["_LGPT_TRACEBACK"] = os.environ.get("HYDRA_FULL_ERROR", "0")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra raise, so a composition error reaches us as an exception
    one_line_errors(hydra_main)()


def one_line_errors(fn: Callable) -> Callable:
    """Wrap an app (and its Hydra task, so Hydra adds no 'Error executing job' line) to report user errors."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            message = describe(e)
            if message is None or os.environ.get("_LGPT_TRACEBACK", "1") == "1":
                raise
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def describe(e: BaseException) -> str | None:
    """One line for a user mistake (bad input, bad config); None for anything else."""
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

    chain = []
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for err in chain:
        if isinstance(err, UserError):
            return str(err)
        if plugin := _missing_plugin(str(err)):
            return plugin
        if type(err).__module__.startswith("wandb."):  # e.g. UsageError: api_key not configured
            return f"W&B: {_first_line(err).rstrip('.')}; or log offline: logger.wandb.offline=true (then `wandb sync`)"
        if isinstance(err, OverrideParseException) and "=" in err.override:
            return _quoting_hint(err.override)
        if isinstance(err, OSError) and err.filename and err.errno in _CANNOT_WRITE:
            return (
                f"cannot write {err.filename} ({err.strerror}); choose a writable folder: "
                "paths.log_dir=... (or hydra.run.dir=...)"
            )
        if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and getattr(err, "full_key", None):
            return f"unknown config key '{err.full_key}'{_suggest(err)}; list the keys with --cfg job"
        if isinstance(err, MissingMandatoryValue) and getattr(err, "full_key", None):
            return f"'{err.full_key}' needs a value: add {err.full_key}=... to the command line"
        if isinstance(err, OmegaConfBaseException) and getattr(err, "full_key", None):
            return f"bad value for '{err.full_key}': {_first_line(err)}"
    # Lightning's MisconfigurationException, matched by name: importing Lightning (and torch) to recognise it
    # would make a typo'd key wait seconds for its one-line error.
    config_errors = (HydraException, OmegaConfBaseException)
    if any(isinstance(e, config_errors) or type(e).__name__ == "MisconfigurationException" for e in chain):
        text = " ".join(line.strip() for err in chain for line in str(err).splitlines() if line.strip())
        return text.split(" Config search path")[0]  # Hydra's list of search paths is noise here
    return None


_PLUGINS = {
    "optuna": ("Optuna sweeper", "hydra-optuna-sweeper"),
    "submitit": ("submitit launcher", "hydra-submitit-launcher"),
}


def _missing_plugin(text: str) -> str | None:
    """Hydra's errors for a sweeper or launcher (hparams_search=optuna, hydra/launcher=submitit_slurm) whose
    plugin is not installed: at composition for the sweeper, when it loads our config's _target_ for a launcher."""
    import re

    found = re.search(
        r"Could not find 'hydra/(?:sweeper|launcher)/([a-z]+)|Unknown plugin class : 'hydra_plugins\.hydra_([a-z]+)",
        text,
    )
    name = found and (found.group(1) or found.group(2))
    if name not in _PLUGINS:
        return None
    what, package = _PLUGINS[name]
    return f'Hydra\'s {what} is not installed: pip install "lgpt[sweeps]" (or pip install {package})'


def _quoting_hint(override: str) -> str:
    """Hydra's grammar wants commas, quotes, spaces and non-ASCII text quoted: show the command as it must be typed."""
    import shlex

    key, value = override.split("=", 1)
    hydra_quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    stdin = f"; or, for a prompt, {key}=- reads it from standard input" if key == "prompt" else ""
    return (
        f"cannot parse {override!r}: Hydra needs such a value quoted; type it as "
        f"{shlex.quote(f'{key}={hydra_quoted}')}{stdin}"
    )


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _suggest(err: Any) -> str:
    """', did you mean ...?' with the closest key of the config node the typo was in."""
    node_type = getattr(err, "object_type", None)
    if not dataclasses.is_dataclass(node_type):
        return ""
    from lightning_gpt.config import TrainConfig

    names = [f.name for f in dataclasses.fields(node_type)]
    groups = list(_GLOBAL_GROUPS) if node_type is TrainConfig and "." not in err.full_key else []
    match = difflib.get_close_matches(str(err.key), names + groups, n=1)
    if not match:
        presets = "".join(f", {g}=..." for g in groups)
        return f" (valid keys: {', '.join(names)}{presets})"
    if match[0] in groups:
        return f"; did you mean {match[0]}=...?"
    prefix = err.full_key.rsplit(".", 1)[0] + "." if "." in err.full_key else ""
    return f"; did you mean '{prefix}{match[0]}'?"
