"""lgpt-eval: a checkpoint's loss, perplexity and bits per byte on a data split, and lm-evaluation-harness tasks.

lgpt-eval ckpt_path=outputs/train/runs/<stamp>                        # the default data's validation split
lgpt-eval ckpt_path=<run> data=local data.path=other.txt split=train  # any text, in the checkpoint's tokens
lgpt-eval ckpt_path=<run> trainer=ddp_cpu                             # several processes (GPUs: trainer=ddp)
lgpt-eval ckpt_path=<run> tasks=hellaswag,arc_easy split=null         # harness tasks only (pip install 'lgpt[eval]')
lgpt-eval ckpt_path=<run> tasks=my_task tasks_path=my_tasks limit=100 # tasks from a folder of the harness's YAMLs

The text is encoded with the checkpoint's own tokenizer. The loss is the mean next-token cross-entropy over
evenly spaced windows of data.block_size tokens (the model's block_size by default): `windows` of them, or
every non-overlapping window of the split; bits per byte divides the summed loss (in bits) by the UTF-8 bytes
of the targets, as training's val/bpb. With data.doc_masking=true each token sees its own document only. A
mixture (data=mixture) is evaluated on each source's split, and the figures over all of them are weighted by
tokens (bytes for bits per byte). Tasks go through `lightning_gpt.evaluation.harness.run_tasks`, in the
first process, on the trainer's device. Both print as tables and are written to one new JSON file per launch:
<run>/eval/<stamp>.json for a checkpoint in a run folder, else outputs/eval/<stamp>.json (out_file= names
another, which must not exist yet). A refused or failed launch writes nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_gpt.apps.console import fit_threads_to_load, quiet_console
from lightning_gpt.apps.launch import launch
from lightning_gpt.errors import UserError


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate on every process of the trainer; the first process prints the tables and writes the JSON."""
    from lightning_gpt import find_checkpoint, read_checkpoint
    from lightning_gpt.schema import EvalAppConfig, check_values
    from lightning_gpt.training.build import build_trainer
    from lightning_gpt.training.module import GPTLightningModule

    quiet_console()
    if note := fit_threads_to_load():
        print(note, file=sys.stderr)
    check_values(cfg, EvalAppConfig)  # the ranges the schema declares (limit >= 1, num_fewshot >= 0, ...)
    if cfg.split not in ("val", "train", None):
        raise UserError(f"split must be val, train or null (tasks only), got {cfg.split!r}")
    if empty := [task for task in cfg.tasks if not task.strip()]:
        raise UserError(f"tasks holds {len(empty)} empty name(s); give task names: tasks=hellaswag,arc_easy")
    if cfg.tasks:
        from lightning_gpt.evaluation import harness  # noqa: F401  # without lm_eval: say how to install it, now
    path = find_checkpoint(cfg.ckpt_path)
    out_file = results_file(cfg, path)
    model_config, tokenizer_spec, state = read_checkpoint(path)
    module = GPTLightningModule(model=model_config, tokenizer=tokenizer_spec)  # no optimizer: it never steps
    module.model.load_state_dict(state)
    split = split_loader(cfg, path, model_config, tokenizer_spec) if cfg.split else None
    trainer = build_trainer(cfg)

    tables, scores, tasks = [], {}, {}
    # Tasks first, in the first process only (the adapter is single-process): their mistakes (an unknown task,
    # data out of reach, text a char model cannot read) show before the split's processes start.
    if cfg.tasks and first_process():
        from lightning_gpt.evaluation.harness import format_results

        harness_results = run_harness(cfg, module, trainer)
        tasks = {"tasks": task_metrics(harness_results), "harness": harness_results}
        tables.append(format_results(harness_results))
    if split is not None:
        loader, counts, block_size, sources = split
        if sources:
            module.name_sources(sources)
        metrics = trainer.validate(module, dataloaders=loader, verbose=False)[0]
        loss, windows = float(metrics["val/loss"]), sum(counts.values())
        scores = {
            "split": cfg.split,
            "data": describe_data(cfg.data),
            "loss": loss,
            "perplexity": math.exp(loss),
            "bpb": float(metrics["val/bpb"]),
            "windows": windows,
            "block_size": block_size,
            "tokens": windows * block_size,
            "devices": trainer.world_size,
        }
        if sources:
            scores["sources"] = source_results(metrics, counts, block_size)
        tables.insert(0, table({"ckpt_path": str(path), **scores}))
    result = {"ckpt_path": str(path), **scores, **tasks}
    if first_process():
        write_result(result, out_file)
        print("\n\n".join(tables))
        print(f"written to {out_file}")
    return result


def first_process() -> bool:
    """Whether this is the first process of the launch: Lightning's DDP children, torchrun and srun set these
    (a Trainer knows its rank only once it runs)."""
    return all(os.environ.get(key, "0") == "0" for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def split_loader(
    cfg: DictConfig, path: Path, model_config: dict, tokenizer_spec: dict
) -> tuple[Any, dict[str, int], int, list[str]]:
    """The split's fixed windows as a loader (tokenized once into the cache), the number of windows of each
    source, their length, and a mixture's source names (the loader's batches say which: name_sources)."""
    from torch.utils.data import DataLoader

    from lightning_gpt.data import GPTDataModule
    from lightning_gpt.models.document_mask import check_doc_masking
    from lightning_gpt.training.build import config_error

    data = OmegaConf.to_container(cfg.data, resolve=True)
    data["block_size"] = data["block_size"] or model_config["block_size"]  # null: the checkpoint's context
    block_size, context = data["block_size"], model_config["block_size"]
    if block_size > context:
        raise UserError(
            f"data.block_size={block_size} is longer than the model's context ({context}); "
            f"use data.block_size={context} or less"
        )
    if data["doc_masking"]:
        try:
            check_doc_masking(model_config.get("family") or "gpt2")
        except ValueError as e:
            raise config_error(e, ["doc_masking"], "data.") from None
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
    loader = DataLoader(dataset, batch_size=None, num_workers=data["num_workers"])
    return loader, counts, block_size, datamodule.val_sources if datamodule.mixture else []


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
            where = f"data.sources.{name}: " if datamodule.mixture else ""
            raise UserError(
                f"{where}the {split} split holds {len(tokens)} tokens, fewer than one window of {block_size}; "
                "give more text or a smaller data.block_size"
            )
        tag = i if datamodule.mixture else None
        masking = datamodule.doc_masking
        parts.append(FixedWindows(tokens, block_size, counts[name], batch_size, doc_masking=masking, tag=tag))
    return (ValidationWindows(parts) if datamodule.mixture else parts[0]), counts


def source_results(metrics: dict[str, Any], counts: dict[str, int], block_size: int) -> dict[str, dict[str, Any]]:
    """Each source's figures from what validation logged (val/<quantity>/<name>): loss, perplexity, bits per
    byte, windows, tokens."""
    results = {}
    for name, windows in counts.items():
        loss = float(metrics[f"val/loss/{name}"])
        results[name] = {
            "loss": loss,
            "perplexity": math.exp(loss),
            "bpb": float(metrics[f"val/bpb/{name}"]),
            "windows": windows,
            "tokens": windows * block_size,
        }
    return results


def run_harness(cfg: DictConfig, module: Any, trainer: Any) -> dict[str, Any]:
    """The harness's results for cfg.tasks, the model on the trainer's device and in its precision."""
    from lightning_gpt.evaluation.harness import run_tasks

    precision = trainer.precision_plugin
    model = precision.convert_module(module.to(trainer.strategy.root_device)).model
    with precision.forward_context():
        return run_tasks(
            model,
            module.tokenizer,
            list(cfg.tasks),
            tasks_path=cfg.tasks_path,
            limit=cfg.limit,
            num_fewshot=cfg.num_fewshot,
            batch_size=cfg.batch_size,
            max_gen_toks=cfg.max_gen_toks,
            bootstrap_iters=cfg.bootstrap_iters,
        )


def task_metrics(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from the harness's results: its `<metric>,<filter>` keys, `acc,none` as `acc`
    (a filtered one, `exact_match,strict-match`, as it is), without the stderr, alias and sample count."""
    metrics = {}
    for name, values in {**results.get("results", {}), **results.get("groups", {})}.items():
        metrics[name] = {
            key.removesuffix(",none"): value
            for key, value in values.items()
            if "," in key and "_stderr," not in key and isinstance(value, (int, float))
        }
    return metrics


def default_out_file(ckpt: Path, log_dir: str) -> Path:
    """<run>/eval/<stamp>.json for a checkpoint in a run folder (a run folder's checkpoints/), else
    <log_dir>/eval/<stamp>.json: a Hugging Face folder or a loose .ckpt may sit where nothing should be added."""
    folder = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    root = folder if ckpt.is_file() and (folder / "checkpoints").is_dir() else Path(log_dir)
    return root / "eval" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{secrets.token_hex(2)}.json"


def results_file(cfg: DictConfig, ckpt: Path) -> Path:
    """Where this launch's results go, refused now if writing there could replace or follow anything."""
    out_file = Path(cfg.out_file) if cfg.out_file is not None else default_out_file(ckpt, cfg.paths.log_dir)
    if out_file.exists() or out_file.is_symlink():
        raise UserError(f"out_file {out_file} already exists; lgpt-eval writes a new file: name another one")
    if out_file.parent.is_symlink():
        raise UserError(
            f"{out_file.parent} is a symbolic link; lgpt-eval writes only into a folder of its own: remove the link, "
            "or give out_file=..."
        )
    return out_file


def write_result(result: dict[str, Any], out_file: Path) -> None:
    """The results as JSON in a file that did not exist, whole or not at all: written under a temporary name,
    then linked to its own (which fails if anything is there by now), so no file is replaced or left half-written."""
    from lightning_gpt.io import create_new, placing, temporary_name

    default = None
    if "harness" in result:  # numpy numbers and sets in the harness's results, as its own CLI writes them
        from lm_eval.utils import handle_non_serializable as default
    text = json.dumps(result, indent=2, default=default) + "\n"
    made = [p for p in [out_file.parent, *out_file.parent.parents] if not p.exists()]
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(out_file)
    try:
        with create_new(tmp) as f:
            f.write(text.encode())
        with placing(out_file):
            os.link(tmp, out_file)  # FileExistsError if anything is at that name by now
    except FileExistsError as e:
        raise UserError(f"out_file {out_file} appeared while evaluating; lgpt-eval never replaces a file") from e
    finally:
        tmp.unlink(missing_ok=True)
        if not out_file.exists():  # it failed (a full disk): the folders made for it go, if they stayed empty
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()


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
        ("bits per byte", f"{result['bpb']:.4f}"),
        *((f"loss ({name})", f"{part['loss']:.4f}") for name, part in result.get("sources", {}).items()),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def task(cfg: DictConfig) -> float | None:
    return evaluate(cfg).get("loss")


def task_list(argv: list[str]) -> list[str]:
    """`tasks=hellaswag,arc_easy` as the harness's own command line spells it, as a Hydra list: Hydra reads a
    bare comma list as a sweep, and a single name as a string."""

    def as_list(value: str) -> str:
        return value if value.startswith("[") else "[]" if value in ("", "null") else f"[{value}]"

    return [f"tasks={as_list(arg[6:])}" if arg.startswith("tasks=") else arg for arg in argv]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return launch(task, "eval", task_list(argv), "lgpt-eval", interrupted="no results were written")


if __name__ == "__main__":
    raise SystemExit(main())
