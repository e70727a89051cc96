"""lgpt-export: a checkpoint as a Hugging Face transformers folder of its family (GPT-2, Llama), or as one
checkpoint file (a sharded checkpoint gathered into what any tool and any number of processes read).

lgpt-export ckpt_path=outputs/train/runs/<stamp> out_dir=my-gpt2
python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('my-gpt2')"
lgpt-export ckpt_path=outputs/train/runs/<stamp> out_dir=whole format=ckpt   # whole/last.ckpt

The folder holds config.json and model.safetensors, plus the tokenizer's files when transformers has an
equivalent: vocab.json, merges.txt and configs for GPT-2's; tokenizer.json and tokenizer_config.json for a
trained BPE (char and byte tokenizers have none).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from omegaconf import DictConfig

from lightning_gpt.apps.launch import launch
from lightning_gpt.errors import UserError


def task(cfg: DictConfig) -> None:
    from lightning_gpt import find_checkpoint, load
    from lightning_gpt.checkpoints import is_hf_folder
    from lightning_gpt.hf import export
    from lightning_gpt.hf.tokenizer import has_hf_tokenizer
    from lightning_gpt.runs import run_folder_containing

    if not str(cfg.out_dir).strip():  # out_dir= : the current folder, which the export would replace
        raise UserError("'out_dir' needs a value: add out_dir=... to the command line")
    if run := run_folder_containing(cfg.out_dir):
        raise UserError(
            f"out_dir={cfg.out_dir} is inside the run folder {run}; an export goes into a folder of its own (a run "
            "folder must stay one: sample, eval and resume read it)"
        )
    if cfg.format not in ("hf", "ckpt"):
        raise UserError(f"format={cfg.format} is not a format of lgpt-export; use format=hf or format=ckpt")
    path = find_checkpoint(cfg.ckpt_path)
    if cfg.format == "ckpt":
        if is_hf_folder(path):
            raise UserError(
                f"{path} is a transformers folder, not a checkpoint of ours: format=ckpt has nothing to gather"
            )
        written = write_checkpoint_folder(path, cfg.out_dir)
        print(f"exported {path} as one checkpoint file: {written}")
        return
    model, tokenizer = load(path)
    files = export(model, tokenizer, cfg.out_dir)
    print(f"exported {path} as a transformers {model.config.family} folder: {', '.join(str(f) for f in files)}")
    if not has_hf_tokenizer(tokenizer):
        print(f"no tokenizer files: the {tokenizer.name} tokenizer has no Hugging Face equivalent")


def write_checkpoint_folder(path: Path, out_dir: str) -> Path:
    """out_dir/last.ckpt: the checkpoint as one file, written whole beside out_dir and renamed into place; a
    sharded folder is gathered (torch.distributed.checkpoint reads it in this one process)."""
    from lightning_gpt.io import write_folder
    from lightning_gpt.parallel.checkpoint import consolidate, is_sharded

    def fill(folder: Path) -> None:
        if is_sharded(path):
            consolidate(path, folder / "last.ckpt")
        else:
            shutil.copyfile(path, folder / "last.ckpt", follow_symlinks=True)

    write_folder(Path(out_dir), "checkpoint export", fill)
    return Path(out_dir).expanduser() / "last.ckpt"


def main(argv: list[str] | None = None) -> int:
    return launch(
        task, "export", argv, "lgpt-export", interrupted="nothing of this export was written; out_dir is as it was"
    )


if __name__ == "__main__":
    raise SystemExit(main())
