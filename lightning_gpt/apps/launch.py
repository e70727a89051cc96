"""How every app starts: its Hydra config (from conf/), our resolvers, and one line for a mistake.

Each app is `main(argv) -> int` over `launch(task, config_name, argv)`: callable in-process (tests, notebooks)
as from its console script. A mistake in input or config is one line on stderr and exit code 2
(`apps/messages.py`); HYDRA_FULL_ERROR=1 shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from lightning_gpt import io, schema
from lightning_gpt.apps.messages import describe
from lightning_gpt.errors import Interrupted, UserError

CONF_DIR = str(schema.CONF_DIR)


def launch(
    task: Callable[[Any], Any],
    config_name: str,
    argv: Sequence[str] | None,
    prog: str,
    interrupted: str | None = None,
    own_signals: bool = False,
) -> int:
    """Compose config_name from the command line argv (sys.argv[1:] if None) and run task on it; the exit code.

    With `interrupted` (what an interruption leaves, e.g. "no results were written"), Ctrl-C and SIGTERM stop
    the task where it is (its cleanup runs, as for an error), then print `interrupted by <signal>: <that>` and
    return 130 or 143. With `own_signals`, the task chooses where they stop it (`stop_on_signals`): lgpt-train
    until it starts training, after which its checkpoint callback handles them. lgpt-prepare handles its own."""
    import hydra

    register_resolvers()
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the Optuna sweeper's database: a line per plugin
    app = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(one_line_errors(task))
    saved = {key: os.environ.get(key) for key in ("HYDRA_FULL_ERROR", "_LGPT_TRACEBACK")}
    # The user's choice, for this process and the DDP ranks it starts (they inherit the environment); Hydra
    # itself must raise, so that a composition error reaches us as an exception.
    os.environ.setdefault("_LGPT_TRACEBACK", os.environ.get("HYDRA_FULL_ERROR", "0"))
    os.environ["HYDRA_FULL_ERROR"] = "1"
    placed = len(io.PLACED)
    try:
        with stop_on_signals(interrupted is not None and not own_signals):
            return run(app, [prog, *(sys.argv[1:] if argv is None else argv)])
    except Interrupted as e:
        name = "Ctrl-C" if e.signum == signal.SIGINT else signal.Signals(e.signum).name
        done = io.PLACED[placed:]  # interrupted just after its write was in place: say so, not "nothing"
        note = f"{', '.join(map(str, done))} had been written whole" if done else interrupted
        print(f"interrupted by {name}: {note}", file=sys.stderr)
        return 128 + e.signum
    finally:  # as it was: the next launch in this process (a notebook, a test) decides afresh
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def stop_on_signals(active: bool = True) -> Iterator[None]:
    """While the block runs (in the main thread), Ctrl-C and SIGTERM raise Interrupted where the program is;
    the previous handlers come back after it."""
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    saved = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def run(app: Callable[[], Any], argv: list[str]) -> int:
    """Run app() with sys.argv set to argv (Hydra reads its command line there); its exit code."""
    saved = sys.argv
    sys.argv = argv
    try:
        one_line_errors(app)()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    finally:
        sys.argv = saved
    return 0


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
            raise SystemExit(2) from None

    return wrapper


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
    """The schema in Hydra's ConfigStore and the `lgpt_*` resolvers the YAML files use."""
    from omegaconf import OmegaConf

    from lightning_gpt.runs import run_name, run_stamp, sweep_name
    from lightning_gpt.schema import in_range, register_configs

    register_configs()
    # conf/hydra/launcher/submitit_*.yaml replace the plugin's configs of the same name, which Hydra then
    # uses as their schema, warning that it will stop doing so: ours are complete without it.
    warnings.filterwarnings("ignore", message=r"\n'hydra/launcher/submitit_\w+' is validated against ConfigStore")
    OmegaConf.register_new_resolver("lgpt_in_range", in_range, replace=True)
    OmegaConf.register_new_resolver("lgpt_run_stamp", run_stamp, replace=True)
    OmegaConf.register_new_resolver("lgpt_run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("lgpt_sweep_name", sweep_name, replace=True)
    OmegaConf.register_new_resolver("lgpt_job_tags", job_tags, replace=True)
    OmegaConf.register_new_resolver("lgpt_device_count", device_count, replace=True)
    OmegaConf.register_new_resolver(
        "lgpt_tag_dict", lambda tags: OmegaConf.create(dict.fromkeys(map(str, tags), "true")), replace=True
    )
