"""lgpt-train: compose the config, build data + model + Trainer, fit, print a sample.

lgpt-train                                   # char model on the embedded Shakespeare, ~2 min on CPU
lgpt-train experiment=nanogpt_baby data=local data.path=input.txt
lgpt-train -m optim.lr=1e-3,3e-4             # a sweep: one run folder per job
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from lightning_gpt.cli import CONF_DIR, one_line_errors, register_resolvers, run_app
from lightning_gpt.errors import UserError

register_resolvers()


def build_datamodule(cfg: DictConfig):
    from lightning_gpt.data import GPTDataModule

    return GPTDataModule(tokenizer=cfg.tokenizer.name, **OmegaConf.to_container(cfg.data, resolve=True))


def build_model_config(cfg: DictConfig, tokenizer) -> dict[str, Any]:
    """The GPT shape from the model config, its vocabulary following the tokenizer's by default.

    With model.init_from, the shape is the pretrained GPT-2's; model.block_size may only crop its context.
    """
    from lightning_gpt.model import GPTConfig

    model = OmegaConf.to_container(cfg.model, resolve=True)
    for key in ("compile", "init_from"):
        model.pop(key)
    if cfg.model.init_from:
        from lightning_gpt.hf import GPT2_TOKENIZERS, gpt2_config

        if tokenizer.name not in GPT2_TOKENIZERS:
            raise UserError(f"model.init_from={cfg.model.init_from} needs GPT-2's tokenizer, not {tokenizer.name}; "
                            "add tokenizer=gpt2")  # fmt: skip
        return gpt2_config(cfg.model.init_from, model["block_size"], model["dropout"]).to_dict()
    if model["vocab_size"] is None:
        model["vocab_size"] = tokenizer.vocab_size
    elif model["vocab_size"] < tokenizer.vocab_size:
        raise UserError(
            f"model.vocab_size={model['vocab_size']} is smaller than the {tokenizer.name} tokenizer's "
            f"{tokenizer.vocab_size} tokens; remove the override (null follows the tokenizer)"
        )
    try:
        return GPTConfig(**model).to_dict()
    except ValueError as e:
        raise UserError(str(e)) from e


def build_trainer(cfg: DictConfig):
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ProgressBar

    def instantiate_all(group: DictConfig) -> list:
        try:
            return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]
        except Exception as e:
            raise UserError(f"could not create {group._key()}: {e.__cause__ or e}".splitlines()[0]) from e

    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    check_trainer(trainer_kwargs)
    if isinstance(trainer_kwargs["val_check_interval"], int):  # optimizer steps; Lightning counts batches
        trainer_kwargs["val_check_interval"] *= trainer_kwargs["accumulate_grad_batches"]
    if isinstance(trainer_kwargs["strategy"], dict):
        trainer_kwargs["strategy"] = instantiate(cfg.trainer.strategy)
    if trainer_kwargs["plugins"]:
        trainer_kwargs["plugins"] = [instantiate(p) for p in cfg.trainer.plugins]
    callbacks = instantiate_all(cfg.callbacks)
    if not trainer_kwargs["enable_progress_bar"]:  # trainer.enable_progress_bar=false wins over callbacks/
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    try:
        return L.Trainer(**trainer_kwargs, logger=instantiate_all(cfg.logger) or False, callbacks=callbacks)
    except ValueError as e:  # Lightning's own check of a value, e.g. an unknown precision or strategy name
        raise UserError(f"bad trainer setting: {_first_line(e)}") from e


def check_trainer(t: dict[str, Any]) -> None:
    """What Lightning would only fail on mid-run (a division by zero, a crash at the first validation)."""
    for key in ("log_every_n_steps", "accumulate_grad_batches"):
        if t[key] < 1:
            raise UserError(f"trainer.{key} must be a positive integer, got {t[key]}")
    if t["max_steps"] == 0 or t["max_steps"] < -1:
        raise UserError(f"trainer.max_steps must be a positive integer (or -1 with max_epochs), got {t['max_steps']}")
    interval = t["val_check_interval"]
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
        raise UserError(
            f"trainer.val_check_interval must be a positive number of optimizer steps (or a fraction of an "
            f"epoch), got {interval}"
        )


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def resolve_ckpt_path(value: str | None, log_dir: str, output_dir: str) -> str | None:
    """A checkpoint file, a run folder (its last.ckpt), "latest" (the newest last.ckpt under log_dir), or
    "auto": this run folder's last.ckpt if there is one (a requeued job resumes), else a fresh start."""
    if value is None:
        return None
    if value == "auto":  # also what Lightning saves on SLURM's requeue signal (hpc_ckpt_<n>.ckpt)
        found = [p for p in [Path(output_dir) / "checkpoints" / "last.ckpt", *Path(output_dir).glob("hpc_ckpt_*.ckpt")]
                 if p.is_file()]  # fmt: skip
        return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None
    if value == "latest":
        found = sorted(Path(log_dir).glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise UserError(f"ckpt_path=latest: no checkpoints/last.ckpt under {log_dir}; train first")
        return str(found[-1])
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt" if (path / "checkpoints").is_dir() else path / "last.ckpt"
    if not path.is_file():
        raise UserError(f"checkpoint not found: {value}; give a .ckpt file, a run folder or ckpt_path=latest")
    return str(path)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit once. `cfg` is fully resolved, so DDP ranks can run it without Hydra."""
    import lightning as L

    from lightning_gpt.callbacks import SampleText
    from lightning_gpt.checkpointing import check_resumable
    from lightning_gpt.distributed import children_run_this_app
    from lightning_gpt.module import GPTLightningModule

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = build_datamodule(cfg)
    tokenizer = datamodule.tokenizer
    module = GPTLightningModule(
        model=build_model_config(cfg, tokenizer),
        tokenizer=tokenizer.to_dict(),
        optim=OmegaConf.to_container(cfg.optim),
        compile=cfg.model.compile,
        config=OmegaConf.to_container(cfg),
    )
    if cfg.model.init_from:  # fine-tuning: start from GPT-2's weights
        from lightning_gpt.hf import gpt2_state_dict

        module.model.load_state_dict(gpt2_state_dict(cfg.model.init_from, module.model.config.block_size))
    if datamodule.block_size > module.model.config.block_size:
        raise UserError(
            f"data.block_size={datamodule.block_size} is longer than the model's context "
            f"(model.block_size={module.model.config.block_size}); drop the data.block_size override"
        )
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.paths.log_dir, cfg.paths.output_dir)
    if ckpt_path is None and any((output_dir / "checkpoints").glob("*.ckpt")):
        raise UserError(
            f"the run folder {output_dir} already holds another run's checkpoints; resume it with ckpt_path=auto, "
            "or start this one in a new folder"
        )
    if ckpt_path:
        check_resumable(ckpt_path, module.hparams.model, module.hparams.tokenizer, cfg.trainer.max_steps)
    trainer = build_trainer(cfg)
    # DDP processes that Lightning starts run `lightning_gpt.train`, which reads this run's config from here.
    with children_run_this_app():
        os.environ["LGPT_RUN_DIR"] = str(output_dir)
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)  # no code in ckpts
        finally:
            if "wandb" in sys.modules:  # one W&B run per job of a multirun
                sys.modules["wandb"].finish()
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if not trainer.fast_dev_run:  # every process generates: a sharded model needs them all
            sample = SampleText(cfg.sample.prompt, cfg.sample.max_new_tokens, cfg.sample.temperature, cfg.sample.top_k)
            text = sample.generate(module)
            if trainer.is_global_zero:
                val_loss = f" val/loss {metrics['val/loss']:.4f} |" if "val/loss" in metrics else ""
                print(f"\nstep {trainer.global_step}:{val_loss} run folder {output_dir}")
                print(f"--- sample ---\n{text}\n--------------")
    return metrics


def task(cfg: DictConfig) -> float | None:
    """One Hydra job: resolve the config, save it in the run folder, train. Returns val/loss for sweepers."""
    OmegaConf.resolve(cfg)
    output_dir = Path(cfg.paths.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))  # the resolved config of this run
    except OSError as e:
        raise UserError(f"cannot write to the run folder {output_dir} ({e.strerror}); set paths.log_dir") from e
    metrics = train(cfg)
    return metrics.get("val/loss")


_hydra_main = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")(one_line_errors(task))


def main() -> None:
    run_dir = os.environ.get("LGPT_RUN_DIR")
    if run_dir and "LOCAL_RANK" in os.environ:  # a DDP rank launched by Lightning: same config as rank 0
        run_app(lambda: train(OmegaConf.load(Path(run_dir) / "config.yaml")))
    else:
        run_app(_hydra_main)


if __name__ == "__main__":
    main()
