"""Typed schema behind the Hydra configs: a typo'd key or a wrong type fails at composition, naming the key;
a number out of its range fails before a launch writes anything (`check_values`), naming the key and its range.

The YAML files under conf/ fill these in; `register_configs` puts the schema in Hydra's ConfigStore
as `lgpt_schema`, the first entry of every app's defaults list. Each numeric setting declares its range
here, beside its default (`bounded`); the model families' dataclasses check theirs in `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from lightning_gpt.errors import UserError

_PACKAGE_DIR = Path(__file__).resolve().parent
# Inside an installed wheel the YAML files live in the package; in a source checkout, beside it.
CONF_DIR = _PACKAGE_DIR / "conf" if (_PACKAGE_DIR / "conf").is_dir() else _PACKAGE_DIR.parent / "conf"


@dataclass(frozen=True)
class Bound:
    """A numeric setting's valid values: finite, within [low, high] (an end excluded when open)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None  # a type Hydra already checked, or another choice (a fraction, "auto")
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        below = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        above = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"must be {self.describe()}, got {value}" if below or above else None

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


def bounded(default: Any, low: float | None = None, high: float | None = None, **open_ends: bool) -> Any:
    """A dataclass field with its default and its range (see Bound), checked by check_values."""
    return field(default=default, metadata={"bound": Bound(low, high, **open_ends)})


def check_values(cfg: Any, node: type | None = None, prefix: str = "") -> None:
    """Refuse a value outside the range its schema field declares (one line naming the key); and the few
    rules that relate two settings. Call with a resolved config, before anything is written."""
    from omegaconf import DictConfig

    node = node or TrainConfig
    first = ("trainer", "model", "seed")  # settings others interpolate (decay_steps, data.block_size): blame these
    for f in sorted(dataclasses.fields(node), key=lambda f: f.name not in first):
        if f.name not in cfg:
            continue
        value = cfg[f.name]
        bound = f.metadata.get("bound")
        if bound is not None:
            for v in list(value) if isinstance(value, (list, tuple)) or _is_list(value) else [value]:
                if problem := bound.problem(v):
                    raise UserError(f"{prefix}{f.name} {problem}")
        child = globals().get(str(f.type).removesuffix(" | None"))
        if isinstance(value, DictConfig) and dataclasses.is_dataclass(child):
            check_values(value, child, f"{prefix}{f.name}.")
    if node is EvalAppConfig and cfg.get("split", "val") is None and not cfg.get("tasks"):
        raise UserError("nothing to evaluate: split=null scores no data; give tasks=... or split=val")
    if node is TrainerConfig and cfg.get("max_epochs", -1) != -1 and not cfg.max_epochs >= 1:
        raise UserError(
            f"{prefix}max_epochs must be -1 (no limit: trainer.max_steps ends the run) or >= 1, got {cfg.max_epochs}"
        )
    if node is OptimConfig and cfg.min_lr > cfg.lr:
        raise UserError(
            f"{prefix}min_lr={cfg.min_lr} is above {prefix}lr={cfg.lr}: the learning rate would rise as it decays; "
            f"set {prefix}min_lr to at most {prefix}lr"
        )


def in_range(key: str, value: Any) -> Any:
    """The value of a config key, checked against the range its schema field declares: for a setting that a
    plugin reads before lgpt-train's own checks (the Optuna sweeper reads hparams_search.n_trials)."""
    node: type = TrainConfig
    *parents, leaf = key.split(".")
    for name in parents:
        node = globals()[str({f.name: f for f in dataclasses.fields(node)}[name].type).removesuffix(" | None")]
    bound = {f.name: f for f in dataclasses.fields(node)}[leaf].metadata.get("bound")
    if bound is not None and (problem := bound.problem(value)):
        raise UserError(f"{key} {problem}")
    return value


def _is_list(value: Any) -> bool:
    from omegaconf import ListConfig

    return isinstance(value, ListConfig)


@dataclass
class TokenizerConfig:
    name: str = "char"  # char, byte, bpe, or a tiktoken encoding: gpt2, r50k_base, p50k_base, cl100k_base, o200k_base
    vocab_size: int | None = None  # bpe: tokens to learn from the corpus, bytes and <|endoftext|> included


@dataclass
class DataConfig:
    source: str = "embedded"  # embedded (Shakespeare, no download), local, hub, or prepared (lgpt-prepare's folder)
    path: str | None = (
        None  # local: file, folder or glob (.txt/.md, .jsonl/.json, .csv, .parquet); prepared: the folder
    )
    val_path: str | None = None  # local: validation files, instead of val_fraction
    name: str | None = None  # hub: dataset name
    config_name: str | None = None  # hub: dataset configuration
    split: str = "train"
    val_split: str | None = None  # hub: validation split, instead of val_fraction
    revision: str | None = None
    text_column: str = "text"
    sample_by: str = "document"  # text files: document, paragraph or line
    val_fraction: float = bounded(0.1, 0, 1, low_open=True, high_open=True)  # the last 10% of the stream
    block_size: int | None = bounded("${model.block_size}", 1)  # null: the model's context
    batch_size: int = bounded(12, 1)  # per device; the global batch is batch_size x devices x accumulation
    val_batches: int = bounded(20, 1)  # fixed validation windows: val_batches x batch_size
    num_workers: int = bounded(0, 0)  # loader processes; 0: load in the training process
    num_proc: int | None = bounded(None, 1)  # tokenizing processes; null: one per core
    cache_dir: str = "${paths.cache_dir}"
    seed: int = "${seed}"  # type: ignore[assignment]
    max_skipped_fraction: float = bounded(0.01, 0, 1)  # refuse a corpus where more rows lack text_column
    packing: str = "random"  # random: nanoGPT's windows anywhere; bos_aligned: each window starts a document
    doc_masking: bool = False  # attention never crosses a document boundary inside a window
    # data=mixture: name -> {the keys above for one source, weight}. Typed Any: OmegaConf cannot merge a dict
    # into a node typed `dict | None` (a command-line data.sources={...} failed to compose)
    sources: Any = None
    on_exhausted: str = "repeat"  # data=mixture: a source drawn to its end repeats, or (stop) ends the run
    streaming: bool = False  # data=hub: tokenize the dataset as it streams, in the loader's workers
    data_files: Any = None  # hub: the files of a builder such as json (a glob, a list, or split -> files)


@dataclass
class PretrainedModelConfig:
    """model=pretrained: a transformers model's shape and weights (GPT-2, Llama or Mamba), to fine-tune."""

    init_from: str = MISSING  # gpt2, gpt2-medium, ... (hub names) or a local transformers folder
    block_size: int | None = None  # null: the pretrained model's context; smaller crops it
    dropout: float = bounded(0.0, 0, 1, high_open=True)
    compile: bool = False  # torch.compile the model


def model_node(config_class: type) -> type:
    """The config node of model=<family>: the family's dataclass (its only copy of the defaults), with
    vocab_size null (the tokenizer's) and `compile`, which is about training rather than the shape."""
    return make_dataclass(
        f"{config_class.__name__}Node",
        [("vocab_size", int | None, field(default=None)), ("compile", bool, field(default=False))],
        bases=(config_class,),
    )


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw, or muon: Muon for the blocks' weight matrices, AdamW for the rest
    lr: float = bounded(1e-3, 0, low_open=True)  # AdamW's
    min_lr: float = bounded(1e-4, 0)  # at most lr
    warmup_steps: int = bounded(100, 0)
    decay_steps: int = bounded("${trainer.max_steps}", 1)  # the schedule reaches min_lr here
    weight_decay: float = bounded(0.1, 0)  # only on tensors of 2 or more dims
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99], metadata={"bound": Bound(0, 1, high_open=True)})
    eps: float = bounded(1e-8, 0, low_open=True)
    fused: bool | None = None  # null: the fused AdamW kernel wherever torch has one (CUDA and CPU)
    schedule: str = "cosine"  # cosine (nanoGPT's), or wsd: warmup, hold lr, decay linearly over cooldown_frac
    cooldown_frac: float = bounded(0.4, 0, 1)  # wsd: the share of decay_steps spent decaying to min_lr
    muon_lr: float = bounded(0.02, 0, low_open=True)  # muon: its learning rate (the schedule scales it as lr)
    muon_momentum: float = bounded(0.95, 0, 1, high_open=True)


@dataclass
class TrainerConfig:
    """Arguments of lightning.Trainer (the common ones; see its docs)."""

    accelerator: str = "auto"
    devices: Any = 1  # a number, a list of device indices, or "auto" (all of them)
    num_nodes: int = bounded(1, 1)
    strategy: Any = "auto"
    precision: str | None = None  # null: Lightning's default, 32-true (trainer=gpu sets bf16-mixed)
    max_steps: int = bounded(2000, 1)  # the run's length, and the schedule's horizon (optim.decay_steps)
    max_epochs: int = -1  # -1: no limit (trainer.max_steps ends the run), else 1 or more (0 would train nothing)
    val_check_interval: Any = bounded(250, 0, low_open=True)  # optimizer steps (or a fraction of an epoch)
    check_val_every_n_epoch: int | None = None
    limit_val_batches: Any = None
    limit_train_batches: Any = None
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = bounded(10, 1)
    gradient_clip_val: float | None = bounded(1.0, 0)  # the largest gradient norm (or value); null or 0: none
    gradient_clip_algorithm: str = "norm"
    accumulate_grad_batches: int = bounded(1, 1)
    deterministic: Any = False
    benchmark: bool | None = None
    fast_dev_run: Any = False
    overfit_batches: Any = 0.0
    profiler: Any = None  # simple, advanced, or a {_target_: ...} profiler (debug=profiler)
    detect_anomaly: bool = False
    enable_progress_bar: bool = True
    enable_model_summary: bool = True
    use_distributed_sampler: bool = True
    default_root_dir: str | None = "${paths.output_dir}"
    plugins: Any = None


@dataclass
class PathsConfig:
    root_dir: str = "${oc.env:LGPT_ROOT,.}"  # where outputs/ goes
    log_dir: str = "${paths.root_dir}/outputs"
    output_dir: str | None = "${hydra:runtime.output_dir}"
    cache_dir: str = "${oc.env:LGPT_CACHE_DIR,'~/.cache/lightning_gpt'}"  # tokenized corpora


@dataclass
class SampleConfig:
    """The sample printed at the end of training and logged at each validation."""

    prompt: str = ""
    max_new_tokens: int = bounded(200, 1)
    temperature: float = bounded(0.8, 0)  # 0: greedy
    top_k: int | None = bounded(200, 1)


OBJECTIVES = ("val/loss", "val/bpb")  # what lgpt-train can return to a sweeper: a metric of the last validation


@dataclass
class HparamsSearchConfig:
    """Set by a preset of conf/hparams_search/, which reads it into the sweeper's settings."""

    n_trials: int = bounded(20, 1)
    metric: str = "val/loss"  # the objective the sweeper minimizes: val/loss, or val/bpb (compares tokenizers)


@dataclass
class InfoConfig:
    """lgpt-info's own settings (conf/info.yaml turns the node on; a training run has none)."""

    gpu_memory_gib: float | None = bounded(None, 0, low_open=True)  # also print the largest micro-batch that fits


@dataclass
class TrainConfig:
    tokenizer: TokenizerConfig = MISSING
    data: DataConfig = MISSING
    model: Any = MISSING  # a family's node (model=gpt2, llama, mamba, a preset of one) or model=pretrained
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = MISSING
    paths: PathsConfig = MISSING
    sample: SampleConfig = field(default_factory=SampleConfig)
    logger: dict[str, Any] = field(default_factory=dict)  # name -> {_target_: a Lightning logger, ...}
    callbacks: dict[str, Any] = field(default_factory=dict)  # name -> {_target_: a Lightning callback, ...}
    task_name: str = "train"
    tags: list[str] = field(default_factory=list)
    seed: int = bounded(1337, 0)
    ckpt_path: str | None = None  # resume: a .ckpt file, a run folder, "latest" or "auto"
    hparams_search: HparamsSearchConfig | None = None  # hparams_search=optuna
    info: InfoConfig | None = None  # lgpt-info


# ---------------------------------------------------------------------------------------------------
# lgpt-sample, lgpt-eval, lgpt-export: each reads a checkpoint (a .ckpt file, or a run folder's best)


@dataclass
class SampleAppConfig:
    ckpt_path: str = MISSING
    prompt: str = ""  # text, or @file to read it from a file; empty: start from end-of-text (a newline for char)
    num_samples: int = 1  # generated as one batch; the first streams, the others print when done
    max_new_tokens: int = 500
    temperature: float = 0.8  # 0: greedy
    top_k: int | None = 200
    top_p: float | None = None  # nucleus sampling, in (0, 1]
    seed: int = 1337
    stop_at_eot: bool = True  # stop a sample at the end-of-text token
    device: str = "auto"  # auto (cuda, mps, else cpu), cpu, cuda, cuda:1, mps
    precision: str | None = None  # 32, bf16 or 16; null: bf16 on GPUs that have it, else 32


@dataclass
class EvalAppConfig:
    """lgpt-eval: loss, perplexity and bits per byte on a split of `data`, and lm-evaluation-harness tasks."""

    ckpt_path: str = MISSING  # a .ckpt file, a run folder (its last.ckpt) or a Hugging Face GPT-2-vocabulary folder
    split: str | None = "val"  # val or train: the split of data scored as training validates; null: tasks only
    windows: int | None = bounded(None, 1)  # evenly spaced windows of block_size tokens; null: all, no overlap
    tasks: list[str] = field(default_factory=list)  # harness tasks: tasks=hellaswag,arc_easy (or tasks in tasks_path)
    tasks_path: str | None = None  # a folder of the harness's task YAMLs, added to its own tasks
    limit: int | None = bounded(None, 1)  # at most this many documents per task; null: all
    num_fewshot: int | None = bounded(None, 0)  # examples in each prompt; null: each task's own (0 for most)
    batch_size: int = bounded(16, 1)  # harness requests scored per forward
    max_gen_toks: int = bounded(256, 1)  # generation tasks: at most this many new tokens
    bootstrap_iters: int = bounded(100_000, 0)  # resamples for perplexity-like metrics' stderr; 0: no stderr at all
    out_file: str | None = None  # null: <run>/eval/<stamp>.json, or outputs/eval/<stamp>.json outside a run folder
    data: DataConfig = MISSING
    trainer: TrainerConfig = MISSING
    paths: PathsConfig = MISSING
    model: dict[str, Any] = field(
        default_factory=lambda: {"block_size": None}
    )  # data.block_size null: the checkpoint's
    logger: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, Any] = field(default_factory=dict)
    task_name: str = "eval"
    seed: int = bounded(1337, 0)


@dataclass
class ExportAppConfig:
    ckpt_path: str = MISSING  # a .ckpt file, a run folder (its last.ckpt) or a sharded checkpoint's folder
    out_dir: str = MISSING  # a new folder (or an earlier export of the same format, replaced whole)
    format: str = "hf"  # hf: a transformers folder; ckpt: one checkpoint file, out_dir/last.ckpt (from shards)


@dataclass
class ExplainAppConfig:
    ckpt_path: str = MISSING
    prompt: str = MISSING  # text, or @file to read it from a file
    out: str | None = None  # the HTML file; null: explain.html in the checkpoint's run folder, else here
    max_new_tokens: int = 40  # the continuation (stops at the end of the context window)
    temperature: float = 0.8  # the continuation's sampling, and where the page's controls start
    top_k: int | None = 200
    top_p: float | None = None
    seed: int = 1337
    max_prompt_tokens: int = 128  # longer prompts are refused: the attention maps grow with its square
    lens_top: int = 5  # tokens kept per layer and position in the logit lens
    candidates: int = 100  # next-token candidates whose text the page embeds
    pca_points: int = 2000  # rows of the embedding table in the PCA plot
    device: str = "cpu"


@dataclass
class PrepareAppConfig:
    out_dir: str = MISSING  # the prepared folder: new, empty, or one lgpt-prepare wrote
    # 2**27 tokens: 256 MiB a shard at uint16; OpenWebText's 9B tokens in 68 files, and a killed run redoes
    # at most a few minutes of work per shard
    shard_tokens: int = 2**27
    memory_mb: int = 256  # text and tokens in flight, all processes together (their ~60 MB each on top)
    tokenizer: TokenizerConfig = MISSING
    data: DataConfig = MISSING
    paths: PathsConfig = MISSING
    model: dict[str, Any] = field(default_factory=lambda: {"block_size": None})  # data.block_size reads it
    seed: int = 1337  # data.seed reads it


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    from lightning_gpt.models import FAMILIES

    for name, config_class in FAMILIES.items():  # model=gpt2, llama, mamba: a family's defaults
        ConfigStore.instance().store(group="model", name=name, node=model_node(config_class))
    ConfigStore.instance().store(group="model", name="pretrained", node=PretrainedModelConfig)
    ConfigStore.instance().store(name="lgpt_schema", node=TrainConfig)
    ConfigStore.instance().store(name="lgpt_sample_schema", node=SampleAppConfig)
    ConfigStore.instance().store(name="lgpt_eval_schema", node=EvalAppConfig)
    ConfigStore.instance().store(name="lgpt_export_schema", node=ExportAppConfig)
    ConfigStore.instance().store(name="lgpt_explain_schema", node=ExplainAppConfig)
    ConfigStore.instance().store(name="lgpt_prepare_schema", node=PrepareAppConfig)
