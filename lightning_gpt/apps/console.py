"""The console of an app process: each log line once, no library advertisements, and torch threads fitted to
the idle cores."""

from __future__ import annotations

import os

# Lightning's ads; its note on a full save; its note that our own model summary replaces its default one
_ADVERTISEMENTS = ("💡 Tip:", "`weights_only` was not set", "Trainer already configured with model summary")


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
