"""One config -> the objects of a run: the data module, the LightningModule and the Trainer.

lgpt-train, lgpt-eval and the benchmarks all build through here, so a setting means the same in each.
Errors from the layers below (plain ValueErrors naming their own fields) become one-line messages that
name the config key to change.
"""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_gpt.errors import UserError, first_line


def config_error(e: ValueError, fields: list[str], prefix: str) -> UserError:
    """A lower layer's message in the config's language: its field names gain prefix (n_head -> model.n_head)."""
    pattern = r"\b(" + "|".join(map(re.escape, sorted(fields, key=len, reverse=True))) + r")\b"
    return UserError(re.sub(pattern, lambda m: prefix + m.group(1), str(e)))


def build(cfg: DictConfig) -> tuple[Any, Any, Any]:
    """(data module, LightningModule, Trainer) for a resolved train config."""
    check_data(cfg)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule.tokenizer)
    if datamodule.block_size > module.model.config.block_size:
        raise UserError(
            f"data.block_size={datamodule.block_size} is longer than the model's context "
            f"(model.block_size={module.model.config.block_size}); drop the data.block_size override"
        )
    trainer = build_trainer(cfg)
    for callback in trainer.callbacks:  # what a callback needs of the model (DownstreamEval's questions), checked
        if hasattr(callback, "check"):  # now: lgpt-train writes nothing for a launch refused before it fits
            callback.check(module)
    return datamodule, module, trainer


def build_module(cfg: DictConfig, tokenizer: Any) -> Any:
    """The LightningModule; with model=pretrained, holding the pretrained weights."""
    from lightning_gpt.training.module import GPTLightningModule

    module = GPTLightningModule(
        model=build_model_config(cfg, tokenizer),
        tokenizer=tokenizer.to_dict(),
        optim=OmegaConf.to_container(cfg.optim),
        compile=cfg.model.compile,
        config=OmegaConf.to_container(cfg),
    )
    if init_from := cfg.model.get("init_from"):  # model=pretrained: start from its weights
        from lightning_gpt.hf import import_state_dict

        module.model.load_state_dict(import_state_dict(init_from, module.model.config.block_size))
    return module


def build_datamodule(cfg: DictConfig):
    from lightning_gpt.data import GPTDataModule
    from lightning_gpt.tokenizers import tokenizer_spec

    data = OmegaConf.to_container(cfg.data, resolve=True)
    data["block_size"] = data["block_size"] or model_block_size(cfg)
    return GPTDataModule(tokenizer=tokenizer_spec(OmegaConf.to_container(cfg.tokenizer, resolve=True)), **data)


def model_block_size(cfg: DictConfig) -> int:
    """The model's context: model.block_size, else (model=pretrained) the pretrained model's."""
    if cfg.model.block_size is not None or "init_from" not in cfg.model:
        return cfg.model.block_size
    from lightning_gpt.hf import import_config

    return import_config(cfg.model.init_from).block_size


def build_model_config(cfg: DictConfig, tokenizer: Any) -> dict[str, Any]:
    """The model's shape: the family node's keys, with a vocabulary that follows the tokenizer's unless
    model.vocab_size says otherwise; with model=pretrained, the pretrained model's shape (model.block_size may
    only crop its context).

    A run folder's saved config (config.yaml, written before model families had a node of their own) may
    hold null for the keys of other families: those are left out.
    """
    from lightning_gpt.models import FAMILIES, config_class

    model = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if v is not None}
    model.pop("compile", None)
    if init_from := model.pop("init_from", None):
        from lightning_gpt.hf import import_config
        from lightning_gpt.hf.tokenizer import GPT2_TOKENIZERS

        try:
            config = import_config(init_from, model.get("block_size"), model.get("dropout", 0.0))
        except ValueError as e:
            raise config_error(e, ["block_size"], "model.") from None
        if config.family == "gpt2" and tokenizer.name not in GPT2_TOKENIZERS:
            raise UserError(
                f"model.init_from={init_from} needs GPT-2's tokenizer, not {tokenizer.name}; add tokenizer=gpt2"
            )
        if tokenizer.vocab_size > config.vocab_size:  # other families: the model's own tokenizer is not ours
            raise UserError(
                f"model.init_from={init_from} has {config.vocab_size} tokens, fewer than the "
                f"{tokenizer.name} tokenizer's {tokenizer.vocab_size}; choose a tokenizer whose ids it knows"
            )
        return config.to_dict()
    if "vocab_size" not in model:
        model["vocab_size"] = tokenizer.vocab_size
    elif model["vocab_size"] < tokenizer.vocab_size:
        raise UserError(
            f"model.vocab_size={model['vocab_size']} is smaller than the {tokenizer.name} tokenizer's "
            f"{tokenizer.vocab_size} tokens; remove the override (null follows the tokenizer)"
        )
    family = model.get("family", "gpt2")
    if family not in FAMILIES:
        raise UserError(
            f"model.family={family} is not a model family; choose a family: model={' or model='.join(FAMILIES)}"
        )
    fields = [f for f in config_class(family).field_names() if f != "family"]
    unknown = sorted(set(model) - {"family", *fields})
    if unknown:
        raise UserError(
            f"model.{unknown[0]} is not a setting of the {family} model family (it has {', '.join(fields)}); "
            f"a family is chosen with its preset: model={family}, or a preset of it"
        )
    try:
        return config_class(family)(**model).to_dict()
    except ValueError as e:
        raise config_error(e, fields, "model.") from e


def build_trainer(cfg: DictConfig):
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, ProgressBar

    def instantiate_all(group: DictConfig) -> list:
        try:
            return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]
        except Exception as e:
            raise UserError(f"could not create {group._key()}: {e.__cause__ or e}".splitlines()[0]) from e

    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    check_trainer(trainer_kwargs)
    if isinstance(trainer_kwargs["val_check_interval"], int):  # optimizer steps; Lightning counts batches
        trainer_kwargs["val_check_interval"] *= trainer_kwargs["accumulate_grad_batches"]
    for key in ("strategy", "profiler"):
        if isinstance(trainer_kwargs[key], dict):
            trainer_kwargs[key] = instantiate(cfg.trainer[key])
    if trainer_kwargs["plugins"]:
        trainer_kwargs["plugins"] = [instantiate(p) for p in cfg.trainer.plugins]
    callbacks = instantiate_all(cfg.callbacks)
    if not trainer_kwargs["enable_progress_bar"]:  # trainer.enable_progress_bar=false wins over callbacks/
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if not trainer_kwargs["enable_model_summary"]:  # trainer.enable_model_summary=false wins over callbacks/
        callbacks = [c for c in callbacks if not isinstance(c, ModelSummary)]
    elif not any(isinstance(c, ModelSummary) for c in callbacks):
        trainer_kwargs["enable_model_summary"] = False  # no callback of ours (lgpt-eval): none of Lightning's
    if trainer_kwargs["fast_dev_run"]:  # a smoke test saves nothing (Lightning's ModelCheckpoint still saves last)
        callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        trainer_kwargs["enable_checkpointing"] = False  # nor the one Lightning would add
    try:
        return L.Trainer(**trainer_kwargs, logger=instantiate_all(cfg.logger) or False, callbacks=callbacks)
    except ValueError as e:  # Lightning's own check of a value, e.g. an unknown precision or strategy name
        raise UserError(f"bad trainer setting: {first_line(e)}") from e


def check_model(cfg: DictConfig) -> None:
    """The model node's values, checked by its family's dataclass before anything is built or written (the
    vocabulary follows the tokenizer later; model=pretrained's shape comes from its folder)."""
    from lightning_gpt.models import FAMILIES

    model = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if v is not None}
    family = FAMILIES.get(model.get("family", "gpt2"))
    if family is None or "init_from" in model:
        return
    fields = family.field_names()
    try:
        family(**{k: v for k, v in model.items() if k in fields})
    except ValueError as e:
        raise config_error(e, fields, "model.") from e


def check_data(cfg: DictConfig) -> None:
    """What the data settings ask of the model, before any data is read or tokenized: document masking needs
    a family whose token mixing is attention (Mamba's scan cannot keep documents apart)."""
    if not cfg.data.get("doc_masking"):
        return
    from lightning_gpt.models.document_mask import check_doc_masking

    family = cfg.model.get("family")
    if family is None and cfg.model.get("init_from"):  # model=pretrained: the family of the pretrained model
        from lightning_gpt.hf import import_config

        family = import_config(cfg.model.init_from).family
    try:
        check_doc_masking(family or "gpt2")
    except ValueError as e:
        raise config_error(e, ["doc_masking"], "data.") from None


STRATEGY = "lightning_gpt.parallel.strategy.FSDPStrategy"


def check_parallel(cfg: DictConfig) -> None:
    """trainer=fsdp's mesh (replicate x shard x tensor) against the processes and the model, before any folder,
    lock or process exists: one line naming the key. The strategy checks the sizes again in every process, for
    Trainers built elsewhere; this is the check lgpt-train's users meet."""
    from lightning_gpt.parallel.mesh import mesh_sizes
    from lightning_gpt.parallel.tensor import check_tensor_parallel

    node = cfg.trainer.strategy
    if not isinstance(node, DictConfig) or node.get("_target_") != STRATEGY:
        return
    s = OmegaConf.to_container(node, resolve=True)
    fields = [k for k in s if k != "_target_"]
    world, model = processes(cfg), model_shape(cfg)
    try:
        if world is not None:
            mesh_sizes(world, s["data_parallel_replicate"], s["data_parallel_shard"], s["tensor_parallel_size"])
        if model is not None:
            check_tensor_parallel(model, s["tensor_parallel_size"])
        block = cfg.data.block_size or getattr(model, "block_size", None)
        if s["sequence_parallel"] and block and block % s["tensor_parallel_size"]:
            raise ValueError(
                f"sequence_parallel splits each sequence among tensor_parallel_size={s['tensor_parallel_size']} "
                f"processes, which must divide its {block} positions (data.block_size); or sequence_parallel=false"
            )
    except ValueError as e:
        raise config_error(e, fields, "trainer.strategy.") from None


def processes(cfg: DictConfig) -> int | None:
    """trainer.devices x trainer.num_nodes as Lightning will count them (None: a spelling left to Lightning)."""
    devices, accelerator = cfg.trainer.devices, str(cfg.trainer.accelerator)
    if OmegaConf.is_list(devices):
        count = len(devices)
    elif isinstance(devices, int) and devices > 0:
        count = devices
    elif devices in ("auto", -1, "-1"):
        import torch

        gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        count = torch.cuda.device_count() if gpu else 1  # Lightning's "auto": every GPU, else one CPU process
    else:
        return None
    return count * cfg.trainer.num_nodes


def model_shape(cfg: DictConfig) -> Any:
    """The model's config dataclass before the tokenizer is known (the vocabulary does not matter here); None
    for a family that does not exist (`build` names it)."""
    from lightning_gpt.models import FAMILIES

    model = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if v is not None}
    if init_from := model.get("init_from"):
        from lightning_gpt.hf import import_config

        return import_config(init_from)
    family = FAMILIES.get(model.get("family", "gpt2"))
    return family(**{k: v for k, v in model.items() if k in family.field_names()}) if family else None


def check_trainer(t: dict[str, Any]) -> None:
    """What the schema's ranges cannot say and Lightning would only fail on mid-run."""
    interval = t["val_check_interval"]
    if isinstance(interval, bool) or not isinstance(interval, (int, float)):
        raise UserError(
            f"trainer.val_check_interval must be a positive number of optimizer steps (or a fraction of an "
            f"epoch), got {interval}"
        )


def check_wandb(cfg: DictConfig) -> None:
    """A W&B logger without the wandb package: say so before any work (logger=many includes W&B)."""
    import importlib.util

    wandb = [name for name, node in cfg.logger.items() if node and "Wandb" in str(node.get("_target_", ""))]
    if wandb and importlib.util.find_spec("wandb") is None:
        raise UserError(
            f"logger.{wandb[0]} logs to Weights & Biases, which needs the wandb package: "
            "pip install 'lgpt[wandb]', or use logger=csv or logger=tensorboard"
        )
