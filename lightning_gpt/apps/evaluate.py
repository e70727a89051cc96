"""lgpt-eval: loss and perplexity of a checkpoint on a data split, with training's data and trainer configs.

lgpt-eval ckpt_path=outputs/train/runs/<stamp>                        # the default data's validation split
lgpt-eval ckpt_path=<run> data=local data.path=other.txt split=train  # any text, in the checkpoint's tokens
lgpt-eval ckpt_path=<run> trainer=ddp_cpu                             # several processes (GPUs: trainer=ddp)

The text is encoded with the checkpoint's own tokenizer. The loss is the mean next-token cross-entropy over
evenly spaced windows of data.block_size tokens (the model's block_size by default): `windows` of them, or
every non-overlapping window of the split; with data.doc_masking=true each token sees its own document only.
A mixture (data=mixture) is evaluated on each source's split, and the loss over all of them is token-weighted.
The result prints as a table and is written to out_file as JSON.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_gpt.apps.console import fit_threads_to_load, quiet_console
from lightning_gpt.apps.launch import launch
from lightning_gpt.errors import UserError


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate on every process of the trainer; rank 0 prints the table and writes the JSON."""
    from torch.utils.data import DataLoader

    from lightning_gpt import find_checkpoint, read_checkpoint
    from lightning_gpt.data import GPTDataModule
    from lightning_gpt.models.document_mask import check_doc_masking
    from lightning_gpt.training.build import build_trainer
    from lightning_gpt.training.module import GPTLightningModule

    quiet_console()
    if note := fit_threads_to_load():
        warnings.warn(note, stacklevel=1)
    if cfg.split not in ("train", "val"):
        raise UserError(f"split must be train or val, got {cfg.split!r}")
    path = find_checkpoint(cfg.ckpt_path)
    model_config, tokenizer_spec, state = read_checkpoint(path)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data["block_size"] = data["block_size"] or model_config["block_size"]  # null: the checkpoint's context
    block_size, context = data["block_size"], model_config["block_size"]
    if block_size > context:
        raise UserError(
            f"data.block_size={block_size} is longer than the model's context ({context}); "
            f"use data.block_size={context} or less"
        )
    if data["doc_masking"]:
        check_doc_masking(model_config.get("family") or "gpt2")
    # Tokenizers named by their name alone share training's token cache; a char vocabulary travels whole.
    tokenizer = tokenizer_spec if len(tokenizer_spec) > 1 else tokenizer_spec["name"]
    datamodule = GPTDataModule(tokenizer=tokenizer, **data)
    try:
        datamodule.setup()
    except UserError as e:
        if "not in the character vocabulary" not in str(e):
            raise
        raise UserError(f"{e}{training_data_hint(path)}") from e
    dataset, counts = split_windows(datamodule, cfg.split, block_size, cfg.windows, data["batch_size"])

    module = GPTLightningModule(model=model_config, tokenizer=tokenizer_spec)  # no optimizer: it never steps
    module.model.load_state_dict(state)
    if datamodule.mixture:
        module.name_sources(datamodule.val_sources)
    trainer = build_trainer(cfg)
    loader = DataLoader(dataset, batch_size=None, num_workers=data["num_workers"])
    metrics = trainer.validate(module, dataloaders=loader, verbose=False)[0]

    loss = float(metrics["val/loss"])
    windows = sum(counts.values())
    result = {
        "ckpt_path": str(path),
        "split": cfg.split,
        "data": describe_data(cfg.data),
        "loss": loss,
        "perplexity": math.exp(loss),
        "windows": windows,
        "block_size": block_size,
        "tokens": windows * block_size,
        "devices": trainer.world_size,
    }
    if datamodule.mixture:
        result["sources"] = source_results(metrics, counts, block_size)
    if trainer.is_global_zero:
        print(table(result))
        out_file = Path(cfg.out_file)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {out_file}")
    return result


def split_windows(
    datamodule: Any, split: str, block_size: int, windows: int | None, batch_size: int
) -> tuple[Any, dict[str, int]]:
    """The fixed windows of `split` to validate on, and how many each source has: `windows` evenly spaced ones
    per source (None: every non-overlapping window of it), documents masked as the data module says. A
    mixture's sources come one after the other, each batch tagged with its source's index in
    datamodule.val_sources (see GPTLightningModule.name_sources)."""
    from lightning_gpt.data.windows import FixedWindows, ValidationWindows

    parts, counts = [], {}
    for i, name in enumerate(datamodule.val_sources):
        tokens = datamodule.tokens(split, i)
        counts[name] = windows or (len(tokens) - 1) // block_size
        if counts[name] < 1:
            raise UserError(f"windows must be at least 1, got {counts[name]}")
        tag = i if datamodule.mixture else None
        masking = datamodule.doc_masking
        parts.append(FixedWindows(tokens, block_size, counts[name], batch_size, doc_masking=masking, tag=tag))
    return (ValidationWindows(parts) if datamodule.mixture else parts[0]), counts


def source_results(metrics: dict[str, Any], counts: dict[str, int], block_size: int) -> dict[str, dict[str, Any]]:
    """Each source's figures from what validation logged (val/<quantity>/<name>): loss, perplexity, windows,
    tokens."""
    results = {}
    for name, windows in counts.items():
        loss = float(metrics[f"val/loss/{name}"])
        results[name] = {"loss": loss, "perplexity": math.exp(loss), "windows": windows, "tokens": windows * block_size}
    return results


def training_data_hint(path: Path) -> str:
    """'; it was trained on ...: use data=...', from the run config a checkpoint carries."""
    import torch

    try:
        config = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["hyper_parameters"]["config"]
        data = config["data"]
    except Exception:
        return ""
    source = data.get("source")
    use = {
        "local": f"data=local data.path={data.get('path')}",
        "hub": f"data=hub data.name={data.get('name')}",
        "embedded": "data=shakespeare",
        "prepared": f"data=prepared data.path={data.get('path')}",
    }.get(source, f"data={source}")
    return f"; the checkpoint's training corpus has them all: {use}"


def describe_data(data: DictConfig) -> str:
    if data.source in ("local", "prepared"):
        return f"{data.source} {data.path}"
    if data.source == "mixture":
        return f"mixture of {', '.join(data.sources)}"
    if data.source == "hub":
        return f"hub {data.name}" + (f" ({data.config_name})" if data.config_name else "")
    return data.source


def table(result: dict[str, Any]) -> str:
    rows = [
        ("checkpoint", result["ckpt_path"]),
        ("data", f"{result['data']}, {result['split']} split"),
        ("tokens", f"{result['tokens']:,} ({result['windows']} windows of {result['block_size']})"),
        ("loss", f"{result['loss']:.4f}"),
        ("perplexity", f"{result['perplexity']:.3f}"),
        *((f"loss ({name})", f"{part['loss']:.4f}") for name, part in result.get("sources", {}).items()),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def task(cfg: DictConfig) -> float:
    return evaluate(cfg)["loss"]


def main(argv: list[str] | None = None) -> int:
    return launch(task, "eval", argv, "lgpt-eval")


if __name__ == "__main__":
    raise SystemExit(main())
