"""lgpt-info: a model's exact parameter count, training FLOPs per token and memory, before training it.

lgpt-info model=llama3_8b
lgpt-info model=gpt2_xl tokenizer=gpt2 model.block_size=2048

The model is built on torch's meta device (shapes, no storage), so an 8B model takes a second. The
vocabulary is model.vocab_size, else a fixed-vocabulary tokenizer's (tokenizer=gpt2, cl100k, byte), else
tokenizer.vocab_size (bpe's, the most it learns), else the family's default (a char vocabulary depends on the corpus).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

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
    rows.append("  (activations come on top: they grow with batch size x context)")
    return "\n".join(rows)


def task(cfg: DictConfig) -> dict[str, Any]:
    from lightning_gpt.training.build import build_model_config

    info = model_info(build_model_config(cfg, vocabulary(cfg)))
    print(table(info))
    return info


def main(argv: list[str] | None = None) -> int:
    return launch(task, "info", argv, "lgpt-info")


if __name__ == "__main__":
    raise SystemExit(main())
