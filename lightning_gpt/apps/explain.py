"""lgpt-explain: follow one prompt through a trained model (GPT-2, Llama, Mamba, or any family whose folder has
an inspect.py) and write what happens as one HTML page.

lgpt-explain ckpt_path=outputs/train/runs/<stamp> prompt="ROMEO:"        # -> <run>/explain.html
lgpt-explain ckpt_path=<run or .ckpt> prompt=@prompt.txt out=page.html max_new_tokens=80

The page and what it shows: lightning_gpt/explainer.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from lightning_gpt.apps.launch import launch
from lightning_gpt.apps.prompts import read_prompt
from lightning_gpt.devices import pick_device


def default_out(ckpt_path: str | Path) -> Path:
    """explain.html in the run folder the checkpoint belongs to, else in the current folder."""
    from lightning_gpt import find_checkpoint

    found = find_checkpoint(ckpt_path)
    folder = found.parent.parent if found.parent.name == "checkpoints" else found.parent
    return folder / "explain.html" if (folder / "checkpoints").is_dir() else Path("explain.html")


def task(cfg: DictConfig) -> Path:
    """Load the checkpoint, explain the prompt, write the page; print its path."""
    from lightning_gpt import load
    from lightning_gpt.explainer import explain, write_page

    start = time.perf_counter()
    prompt = read_prompt(cfg.prompt)
    device, _ = pick_device(cfg.device, "32-true")
    model, tokenizer = load(cfg.ckpt_path, device)
    data = explain(
        model,
        tokenizer,
        prompt,
        cfg.max_new_tokens,
        cfg.temperature,
        cfg.top_k,
        cfg.top_p,
        cfg.seed,
        cfg.max_prompt_tokens,
        cfg.lens_top,
        cfg.candidates,
        cfg.pca_points,
    )
    data.source = str(cfg.ckpt_path)
    path = write_page(data, cfg.out if cfg.out else default_out(cfg.ckpt_path))
    size = path.stat().st_size / 1e6
    print(f"{len(data.tokens)} prompt tokens, {size:.2f} MB, {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(path)
    return path


def main(argv: list[str] | None = None) -> int:
    return launch(task, "explain", argv, "lgpt-explain", interrupted="the page was not written")


if __name__ == "__main__":
    raise SystemExit(main())
