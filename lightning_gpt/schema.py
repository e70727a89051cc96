"""Typed schema behind the Hydra configs: a typo'd key or a wrong type fails at composition, naming the key.

The YAML files under conf/ fill these in; `register_configs` puts the schema in Hydra's ConfigStore
as `lgpt_schema`, the first entry of every app's defaults list.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any

from omegaconf import MISSING

from lightning_gpt.errors import UserError


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
    val_fraction: float = 0.1  # the last 10% of the token stream, as nanoGPT
    block_size: int | None = "${model.block_size}"  # type: ignore[assignment]  # null: the model's context
    batch_size: int = 12  # per device; the global batch is batch_size x devices x accumulate_grad_batches
    val_batches: int = 20  # fixed validation windows: val_batches x batch_size
    num_workers: int = 0
    num_proc: int | None = None  # tokenizing processes; null: one per core
    cache_dir: str = "${paths.cache_dir}"
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class PretrainedModelConfig:
    """model=pretrained: a transformers model's shape and weights (GPT-2, Llama or Mamba), to fine-tune."""

    init_from: str = MISSING  # gpt2, gpt2-medium, ... (hub names) or a local transformers folder
    block_size: int | None = None  # null: the pretrained model's context; smaller crops it
    dropout: float = 0.0
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
    lr: float = 1e-3  # AdamW's
    min_lr: float = 1e-4
    warmup_steps: int = 100
    decay_steps: int = "${trainer.max_steps}"  # type: ignore[assignment]  # cosine from lr to min_lr
    weight_decay: float = 0.1  # only on tensors of 2 or more dims
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-8
    fused: bool | None = None  # null: the fused AdamW kernel wherever torch has one (CUDA and CPU)
    schedule: str = "cosine"  # cosine (nanoGPT's), or wsd: warmup, hold lr, decay linearly over cooldown_frac
    cooldown_frac: float = 0.4  # wsd: the share of decay_steps spent decaying to min_lr
    muon_lr: float = 0.02  # muon: its learning rate (the schedule scales it as it scales lr)
    muon_momentum: float = 0.95


@dataclass
class TrainerConfig:
    """Arguments of lightning.Trainer (the common ones; see its docs)."""

    accelerator: str = "auto"
    devices: Any = 1  # a number, a list of device indices, or "auto" (all of them)
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: str | None = None  # null: Lightning's default, 32-true (trainer=gpu sets bf16-mixed)
    max_steps: int = 2000
    max_epochs: int = -1
    val_check_interval: Any = 250
    check_val_every_n_epoch: int | None = None
    limit_val_batches: Any = None
    limit_train_batches: Any = None
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = 1.0
    gradient_clip_algorithm: str = "norm"
    accumulate_grad_batches: int = 1
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
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 200


OBJECTIVES = ("val/loss", "val/bpb")  # what lgpt-train returns to a sweeper: a metric of the last validation


@dataclass
class HparamsSearchConfig:
    """Set by a preset of conf/hparams_search/, which reads it into the sweeper's settings."""

    n_trials: int = 20
    metric: str = "val/loss"  # the objective the sweeper minimizes: val/loss, or val/bpb (compares tokenizers)

    def __post_init__(self) -> None:  # OmegaConf.to_object runs it on a composed config
        if self.metric not in OBJECTIVES:
            raise UserError(f"hparams_search.metric must be one of {', '.join(OBJECTIVES)}, got {self.metric!r}")
        if self.n_trials < 1:
            raise UserError(f"hparams_search.n_trials must be at least 1, got {self.n_trials}")


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
    seed: int = 1337
    ckpt_path: str | None = None  # resume: a .ckpt file, a run folder, "latest" or "auto"
    hparams_search: HparamsSearchConfig | None = None  # hparams_search=optuna


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
    windows: int | None = None  # evenly spaced windows of block_size tokens; null: all that fit without overlap
    tasks: list[str] = field(default_factory=list)  # harness tasks: tasks=hellaswag,arc_easy (or tasks in tasks_path)
    tasks_path: str | None = None  # a folder of the harness's task YAMLs, added to its own tasks
    limit: int | None = None  # at most this many documents per task; null: all
    num_fewshot: int | None = None  # examples in each prompt; null: each task's own (0 for most)
    batch_size: int = 16  # harness requests scored per forward
    max_gen_toks: int = 256  # generation tasks: at most this many new tokens
    bootstrap_iters: int = 100_000  # resamples for the stderr of perplexity-like metrics; 0: no stderr at all (faster)
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
    seed: int = 1337

    def __post_init__(self) -> None:  # OmegaConf.to_object runs it on a composed config
        if self.split not in ("val", "train", None):
            raise UserError(f"split must be val, train or null (tasks only), got {self.split!r}")
        if self.split is None and not self.tasks:
            raise UserError("nothing to evaluate: split=null scores no data; give tasks=... or split=val")
        if self.windows is not None and self.windows < 1:
            raise UserError(f"windows must be at least 1 (or null for every window of the split), got {self.windows}")
        if empty := [t for t in self.tasks if not str(t).strip()]:
            raise UserError(f"tasks holds {len(empty)} empty name(s); give task names: tasks=hellaswag,arc_easy")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"limit must be at least 1 document per task (or null for all), got {self.limit}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise UserError(f"num_fewshot must be 0 or more (or null for each task's own), got {self.num_fewshot}")
        for key in ("batch_size", "max_gen_toks"):
            if getattr(self, key) < 1:
                raise UserError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.bootstrap_iters < 0:
            raise UserError(f"bootstrap_iters must be 0 (no stderr) or more, got {self.bootstrap_iters}")


@dataclass
class ExportAppConfig:
    ckpt_path: str = MISSING
    out_dir: str = MISSING


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
