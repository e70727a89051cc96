"""The config tree: every default lives in one place, and every group option composes and builds.

Defaults live in the typed schema (lightning_gpt/schema.py) and, for model shapes, in each family's
dataclass (lightning_gpt/models/<family>/config.py); a YAML file states only what differs from what it would
otherwise get.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml
from omegaconf import MISSING, OmegaConf

from lightning_gpt import schema
from lightning_gpt.apps.launch import CONF_DIR

from .support.config import compose
from .support.runs import column, read_metrics, train

CONF = Path(CONF_DIR)
APPS = {
    "train": schema.TrainConfig,
    "sample": schema.SampleAppConfig,
    "eval": schema.EvalAppConfig,
    "explain": schema.ExplainAppConfig,
    "export": schema.ExportAppConfig,
    "prepare": schema.PrepareAppConfig,
}
GROUPS = {  # config group -> the schema node its files fill in
    "tokenizer": schema.TokenizerConfig,
    "data": schema.DataConfig,
    "optim": schema.OptimConfig,
    "trainer": schema.TrainerConfig,
    "paths": schema.PathsConfig,
}


def defaults_of(node_type: type) -> dict:
    out = {}
    for f in dataclasses.fields(node_type):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def values(path: Path) -> dict:
    return {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k not in ("defaults", "hydra")}


def same(a, b) -> bool:
    return a == b and type(a) is type(b) or (a == b and {type(a), type(b)} <= {int, float})


@pytest.mark.parametrize("app", APPS)
def test_app_files_do_not_restate_the_schema(app):
    defaults = defaults_of(APPS[app])
    restated = [k for k, v in values(CONF / f"{app}.yaml").items() if k in defaults and same(v, defaults[k])]
    restated += [k for k, v in values(CONF / f"{app}.yaml").items() if v == MISSING]  # the schema says ???
    assert restated == [], f"conf/{app}.yaml restates the schema's defaults of {restated}"


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(CONF) for g in [*GROUPS, "model"] for p in (CONF / g).glob("*.yaml"))
)
def test_group_files_state_only_what_differs(path):
    group = path.parts[0]
    raw = yaml.safe_load((CONF / path).read_text()) or {}
    parents = [d for d in raw.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    if parents:  # trainer/cpu.yaml builds on trainer/default.yaml, model/baby.yaml on model=gpt2 (the family's node)
        base = OmegaConf.to_container(compose("train", f"{group}={parents[0]}")[group])
    else:
        base = defaults_of(GROUPS[group])
    restated = [k for k, v in values(CONF / path).items() if k in base and same(v, base[k])]
    assert restated == [], f"conf/{path} restates {restated}, which it gets anyway"


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(CONF) for g in ("experiment", "debug") for p in (CONF / g).glob("*.yaml"))
)
def test_presets_state_only_what_differs(path):
    """An experiment sets what differs from the groups it picks; each of its values must change something."""
    raw = yaml.safe_load((CONF / path).read_text())
    picks = [
        f"{k.removeprefix('override /')}={v}"
        for d in raw.get("defaults", [])
        if isinstance(d, dict)
        for k, v in d.items()
    ]
    without = OmegaConf.to_container(compose("train", *picks))

    def leaves(node, prefix=""):
        for k, v in node.items():
            if isinstance(v, dict):
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    restated = [k for k, v in leaves(values(CONF / path)) if same(OmegaConf.select(OmegaConf.create(without), k), v)]
    assert restated == [], f"conf/{path} sets {restated} to what its groups already give"


def second_copies(function, names) -> list[str]:
    """The parameters of function named in names that have a default of their own."""
    params = inspect.signature(function).parameters.values()
    return [p.name for p in params if p.name in names and p.default is not inspect.Parameter.empty]


def test_classes_built_from_the_config_take_its_values_without_defaults_of_their_own():
    """A default written on the Python side too would drift from the schema's (it did: batch 12 vs 8)."""
    from lightning_gpt.data import GPTDataModule
    from lightning_gpt.explainer import explain
    from lightning_gpt.training.callbacks import SampleText

    for target, node in ((GPTDataModule, schema.DataConfig), (SampleText, schema.SampleConfig)):
        copies = second_copies(target, {f.name for f in dataclasses.fields(node)})
        assert copies == [], f"{target.__name__} has its own defaults for {copies}"
    # explain() is also a Python API, so its keywords have defaults: the schema's own values, by reference
    defaults = defaults_of(schema.ExplainAppConfig)
    params = inspect.signature(explain).parameters.values()
    assert all(p.default == defaults[p.name] for p in params if p.name in defaults and p.default is not p.empty)


@pytest.mark.parametrize(
    "path", sorted(p.relative_to(CONF) for g in ("callbacks", "logger", "trainer") for p in (CONF / g).glob("*.yaml"))
)
def test_our_callbacks_loggers_and_strategy_take_their_settings_from_their_config_file(path):
    """conf/callbacks/*.yaml, conf/logger/*.yaml and conf/trainer/fsdp.yaml hold the only copy of each of our
    classes' settings."""
    from hydra.utils import get_class

    for node in (values(CONF / path) or {}).values():
        if isinstance(node, dict) and str(node.get("_target_", "")).startswith("lightning_gpt."):
            cls = get_class(node["_target_"])
            if getattr(cls.__init__, "__module__", None) != cls.__module__:
                continue  # the library's own __init__ (our CSVLogger's is Lightning's): its defaults are its own
            copies = second_copies(cls.__init__, set(node) - {"_target_"})
            assert copies == [], f"{cls.__name__} has its own defaults for {copies}, which {path} sets"


# ---------------------------------------------------------------------------------------------------
# Every option of every group builds; every debug option runs


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


BUILDABLE = [(g, o) for g in ("tokenizer", "model", "optim", "trainer", "logger", "callbacks") for o in options(g)]


@pytest.mark.parametrize(("group", "option"), BUILDABLE, ids=lambda x: x)
@pytest.mark.slow
def test_every_group_option_builds(group, option, tmp_path, cache_dir, monkeypatch):
    """Compose with the option and build what it configures (a model on the meta device, no training)."""
    import torch

    if option == "mlflow":  # a server's URI, not a SQLite store, which takes seconds to create (test_sweeps does)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    from hydra.utils import instantiate

    from lightning_gpt.models import build
    from lightning_gpt.tokenizers import build_tokenizer, tokenizer_spec
    from lightning_gpt.training.build import build_model_config, build_trainer

    cpu = ["trainer.accelerator=cpu", "trainer.devices=1"] if group == "trainer" else []
    cfg = compose("train", f"{group}={option}", *cpu, f"paths.root_dir={tmp_path}", f"++paths.output_dir={tmp_path}")
    OmegaConf.resolve(cfg)
    if group == "tokenizer":
        assert build_tokenizer(tokenizer_spec(cfg.tokenizer), texts=["abc"]).vocab_size >= 3
    elif group == "model":
        with torch.device("meta"):
            model = build(build_model_config(cfg, build_tokenizer("byte")))
        assert model.num_params() > 0
    elif group == "optim":
        from lightning_gpt.schema import OptimConfig

        assert OptimConfig(**cfg.optim).lr > 0
    elif group == "trainer":
        assert build_trainer(cfg).max_steps == cfg.trainer.max_steps
    else:
        built = [instantiate(node) for node in cfg[group].values() if node]
        assert all(b is not None for b in built) and (built or option == "none")


@pytest.mark.slow
def test_debug_options_run_end_to_end(tmp_path, cache_dir):
    """fast_dev_run writes no checkpoint; overfit drives one batch's loss down; profiler writes its report."""
    fast = train(tmp_path, cache_dir, "fast", "debug=fast_dev_run")
    assert not list(fast.glob("**/*.ckpt"))
    overfit = train(
        tmp_path, cache_dir, "overfit", "debug=overfit", "trainer.max_steps=40", "optim.warmup_steps=0", "optim.lr=1e-2"
    )
    loss = column(read_metrics(overfit), "train/loss")
    assert loss[-1] < loss[0] - 1.0  # one batch, memorised
    profiler = train(tmp_path, cache_dir, "profiler", "debug=profiler", "trainer.max_steps=3")
    assert "run_training_batch" in (profiler / "fit-profile.txt").read_text()


def test_a_typod_key_fails_without_importing_torch():
    """The one-line error for a typo must not wait for torch and Lightning (seconds on a cold start)."""
    import subprocess
    import sys

    code = (
        "import sys; from lightning_gpt.apps.train import main\n"
        "print(main(['model.n_layers=4']), 'torch' in sys.modules, 'lightning' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["2", "False", "False"], result.stderr
    assert "unknown config key 'model.n_layers'; did you mean 'model.n_layer'?" in result.stderr
