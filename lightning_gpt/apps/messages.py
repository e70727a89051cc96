"""What the user reads when a launch fails: one line for a mistake in input or config, naming the key and the fix.

The library raises `UserError` (and Hydra, OmegaConf and Lightning raise their own exceptions) in its own
terms; `describe` turns the ones that are the user's to fix into one line. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import re
from typing import Any

from lightning_gpt.errors import UserError, first_line

_GLOBAL_GROUPS = ("experiment", "debug")  # lgpt-train's config groups that set keys everywhere, no key of their own
_CANNOT_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC, errno.EDQUOT}


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
            return f"W&B: {first_line(err).rstrip('.')}; or log offline: logger.wandb.offline=true (then `wandb sync`)"
        if isinstance(err, OverrideParseException) and "=" in err.override:
            return _quoting_hint(err.override)
        if ambiguous := re.match(r"Ambiguous value for argument '([^']+=.*)'\n", str(err)):  # a comma in a value
            return _quoting_hint(ambiguous.group(1))
        if missing := _missing_option(str(err)):
            return missing
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
            return f"bad value for '{err.full_key}': {first_line(err)}"
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
    import importlib.util

    found = re.search(
        r"Could not find 'hydra/(?:sweeper|launcher)/([a-z]+)|Unknown plugin class : 'hydra_plugins\.hydra_([a-z]+)",
        text,
    )
    name = found and (found.group(1) or found.group(2))
    if name not in _PLUGINS:
        return None
    what, package = _PLUGINS[name]
    if importlib.util.find_spec(f"hydra_plugins.{package.replace('-', '_')}") is not None:
        return None  # installed: the name is misspelt (hydra/launcher=submitit_slurn)
    return f'Hydra\'s {what} is not installed: pip install "lgpt[sweeps]" (or pip install {package})'


def _missing_option(text: str) -> str | None:
    """Hydra's 'Could not find 'model/lama_baby' ... Available options in 'model': ...' as one line with the
    closest option."""
    found = re.search(r"Could not find '([\w/]+)/([^']+)'\n\nAvailable options in '[\w/]+':\n((?:\t.*\n?)*)", text)
    if not found:
        return None
    group, wanted, listed = found.group(1), found.group(2), found.group(3)
    options = [line.strip() for line in listed.splitlines() if line.strip()]
    match = difflib.get_close_matches(wanted, options, n=1)
    hint = f"did you mean {group}={match[0]}?" if match else f"choose one of: {', '.join(options)}"
    return f"{group}={wanted} is not an option of {group}/; {hint}"


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


def _suggest(err: Any) -> str:
    """', did you mean ...?' with the closest key of the config node the typo was in."""
    node_type = getattr(err, "object_type", None)
    if not dataclasses.is_dataclass(node_type):
        return ""
    from lightning_gpt.schema import TrainConfig

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
