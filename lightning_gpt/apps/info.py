"""lgpt-info: a model's exact parameter count, training FLOPs per token and the memory each process needs to
train it, before training it.

lgpt-info model=llama3_8b
lgpt-info model=gpt2_xl tokenizer=gpt2 model.block_size=2048
lgpt-info model=llama3_8b trainer=fsdp trainer.devices=8 data.batch_size=1 data.block_size=8192 info.gpu_memory_gib=80

The model is built on torch's meta device (shapes, no storage), so an 8B model takes a second. The
vocabulary is model.vocab_size, else a fixed-vocabulary tokenizer's (tokenizer=gpt2, cl100k, byte), else
tokenizer.vocab_size (bpe's, the most it learns), else the family's default (a char vocabulary depends on the corpus).
The memory per process is lightning_gpt.parallel.memory's plan for the trainer, data and optim settings given
(strategy, devices x nodes, precision, micro-batch, context, activation checkpointing), checked against measured
peaks in docs/benchmarks.md.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_gpt.apps.launch import launch

GIB = 2**30


def model_info(config: dict[str, Any]) -> dict[str, Any]:
    """Counts for a model config dict (as build_model_config returns): nothing is allocated."""
    import torch

    from lightning_gpt.models import build

    with torch.device("meta"):
        model = build(config)
    params = model.num_params(non_embedding=False)
    return {
        "family": model.config.family,
        "parameters": params,
        "parameters_without_embeddings": model.num_params(),
        "train_flops_per_token": model.flops_per_token(),
        "context": model.config.block_size,
        "vocab_size": model.config.vocab_size,
        # bytes per parameter: fp32 (also bf16-mixed, which keeps fp32 weights) and bf16-true
        "memory_gib": {
            precision: {
                "weights": params * size / GIB,
                "gradients": params * size / GIB,
                "adamw_states": 2 * params * size / GIB,
                "total": 4 * params * size / GIB,
            }
            for precision, size in (("fp32", 4), ("bf16", 2))
        },
    }


def vocabulary(cfg: DictConfig) -> Any:
    """A stand-in tokenizer with the vocabulary size the model would get (see the module docstring)."""
    from types import SimpleNamespace

    from lightning_gpt.models import config_class
    from lightning_gpt.tokenizers import build_tokenizer, fits_on_corpus

    if fits_on_corpus(cfg.tokenizer.name):
        size = cfg.model.vocab_size or cfg.tokenizer.vocab_size or config_class(cfg.model.family)().vocab_size
    else:
        size = build_tokenizer(cfg.tokenizer.name).vocab_size
    return SimpleNamespace(name=cfg.tokenizer.name, vocab_size=size)


def table(info: dict[str, Any]) -> str:
    m = info["memory_gib"]
    rows = [
        f"{info['family']} model: {info['parameters']:,} parameters "
        f"({info['parameters_without_embeddings']:,} without embeddings), vocabulary {info['vocab_size']:,}, "
        f"context {info['context']:,}",
        f"training FLOPs per token: {info['train_flops_per_token']:,} (forward + backward)",
        "memory (GiB)        fp32 / bf16-mixed    bf16-true",
    ]
    for key in ("weights", "gradients", "adamw_states", "total"):
        rows.append(f"  {key.replace('_', ' '):<18}{m['fp32'][key]:>18.2f}{m['bf16'][key]:>13.2f}")
    rows.append("  (activations come on top: they grow with batch size x context; the plan below counts them)")
    return "\n".join(rows)


def plan_settings(cfg: DictConfig) -> dict[str, Any]:
    """The trainer, data and optim settings as `parallel.memory.plan` takes them."""
    from lightning_gpt.devices import canonical
    from lightning_gpt.training.build import STRATEGY, processes

    strategy = cfg.trainer.strategy
    nodes = cfg.trainer.num_nodes
    settings: dict[str, Any] = dict(
        devices=(processes(cfg) or nodes) // nodes,
        nodes=nodes,
        strategy="ddp",
        micro_batch=cfg.data.batch_size,
        block_size=cfg.data.block_size or None,
        precision=canonical(cfg.trainer.precision or "32-true"),
        optimizer=cfg.optim.name,
    )
    if OmegaConf.is_dict(strategy) and strategy.get("_target_") == STRATEGY:
        settings.update(
            strategy="fsdp",
            tensor_parallel_size=strategy.tensor_parallel_size,
            data_parallel_replicate=strategy.data_parallel_replicate,
            activation_checkpointing=strategy.activation_checkpointing,
            sequence_parallel=strategy.sequence_parallel,
        )
    return settings


def memory_table(config: dict[str, Any], settings: dict[str, Any], gpu_memory_gib: float | None) -> str:
    """The plan for these settings, then the total per process with and without activation checkpointing, in
    fp32 and bf16-mixed, and (with gpu_memory_gib) the largest micro-batch that fits each."""
    from lightning_gpt.parallel.memory import GIB, largest_micro_batch, plan

    rows = [plan(config, **settings).table(), "", "total per process (GiB)   32-true   bf16-mixed"]
    fits = ["largest micro-batch in a"] if gpu_memory_gib else []
    if fits:
        fits[0] += f" {gpu_memory_gib:g} GiB device (90% of it)"
    for checkpointing in (False, True) if settings["strategy"] != "ddp" else (False,):  # trainer=fsdp's setting
        label = "activation checkpointing" if checkpointing else "every activation kept"
        variants = [{**settings, "precision": p, "activation_checkpointing": checkpointing} for p in PLANNED]
        totals = [plan(config, **v).total / GIB for v in variants]
        rows.append(f"  {label:<24}{totals[0]:>8.2f}{totals[1]:>13.2f}")
        if gpu_memory_gib:
            one = [{k: x for k, x in v.items() if k != "micro_batch"} for v in variants]
            best = [largest_micro_batch(config, gpu_memory_gib * GIB, **v) for v in one]
            fits.append(f"  {label:<24}{best[0]:>8}{best[1]:>13}")
    return "\n".join(rows + fits)


PLANNED = ("32-true", "bf16-mixed")


def task(cfg: DictConfig) -> dict[str, Any]:
    from lightning_gpt.errors import UserError
    from lightning_gpt.training.build import build_model_config

    config = build_model_config(cfg, vocabulary(cfg))
    info = model_info(config)
    print(table(info))
    settings = plan_settings(cfg)
    try:
        print("\n" + memory_table(config, settings, cfg.info.gpu_memory_gib if cfg.info else None))
    except ValueError as e:  # a mesh or precision the planner cannot lay out, named by its setting
        raise UserError(f"no memory plan for these settings: {e}") from None
    info["plan"] = settings
    return info


def main(argv: list[str] | None = None) -> int:
    return launch(task, "info", argv, "lgpt-info")


if __name__ == "__main__":
    raise SystemExit(main())
