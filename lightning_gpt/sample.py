"""lgpt-sample: generate text from a checkpoint, streamed to stdout as it is generated.

lgpt-sample ckpt_path=outputs/train/runs/<stamp>                  # the run's last.ckpt
lgpt-sample ckpt_path=<run> prompt="ROMEO:" temperature=0.7 top_k=50 max_new_tokens=200
lgpt-sample ckpt_path=<run> prompt=@prompt.txt num_samples=4      # four samples, one batch
echo "Ω café, I'll go" | lgpt-sample ckpt_path=<run> prompt=-     # any text, no quoting: standard input

Several samples are generated as one batch: the first streams token by token, the others print when
the batch is done. Each sample is printed with its prompt and followed by a line of dashes. Messages go
to stderr, so stdout holds only the text.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import hydra
from omegaconf import DictConfig

from lightning_gpt.cli import CONF_DIR, fit_threads_to_load, one_line_errors, register_resolvers, run_app
from lightning_gpt.errors import UserError

register_resolvers()

SEPARATOR = "-" * 15
_PRECISIONS = {"32": "float32", "bf16": "bfloat16", "16": "float16"}


def read_prompt(prompt: str) -> str:
    """The prompt itself, the contents of a file given as @path, or standard input for "-" (text with
    commas, quotes or non-ASCII characters needs no quoting there)."""
    if prompt == "-":
        return sys.stdin.read()
    if not prompt.startswith("@"):
        return prompt
    path = Path(prompt[1:]).expanduser()
    if not path.is_file():
        raise UserError(f"prompt file {path} not found; give prompt=@<existing file> or the text itself")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"prompt file {path} is not valid UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8, "
            "e.g. iconv -f latin1 -t utf-8"
        ) from e


def pick_device(device: str, precision: str | None):
    """The torch device and dtype to sample with ("auto": the best there is)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:<index> or mps") from e
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(dev.type, True):
        raise UserError(f"device={device} but there is no {dev.type} device here; use device=auto or device=cpu")
    if precision is None:
        precision = "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "32"
    if str(precision) not in _PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; use {', '.join(_PRECISIONS)} (or null)")
    return dev, getattr(torch, _PRECISIONS[str(precision)])


def generate(cfg: DictConfig, out: TextIO | None = None) -> list[str]:
    """Write the samples to out, stdout by default (the first as it is generated), and return them."""

    from lightning_gpt import find_checkpoint, load
    from lightning_gpt.generation import check_sampling, complete

    try:
        check_sampling(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)
    except ValueError as e:
        raise UserError(str(e)) from e
    if cfg.num_samples < 1:
        raise UserError(f"num_samples must be at least 1, got {cfg.num_samples}")
    device, dtype = pick_device(cfg.device, cfg.precision)
    if device.type == "cpu" and (note := fit_threads_to_load()):
        print(note, file=sys.stderr)
    prompt = read_prompt(cfg.prompt)
    path = find_checkpoint(cfg.ckpt_path)
    model, tokenizer = load(path, device)
    model.to(dtype)
    print(
        f"loaded {path}: {model.num_params() / 1e6:.2f}M parameters, {tokenizer.name} tokenizer, on {device}",
        file=sys.stderr,
    )

    out = out or sys.stdout
    out.write(prompt)

    def stream(text: str) -> None:
        out.write(text)
        out.flush()

    samples = complete(
        model,
        tokenizer,
        prompt,
        cfg.max_new_tokens,
        cfg.temperature,
        cfg.top_k,
        cfg.top_p,
        num_samples=cfg.num_samples,
        seed=cfg.seed,
        stop_at_eot=cfg.stop_at_eot,
        on_text=stream,
    )
    out.write(f"\n{SEPARATOR}\n")
    for text in samples[1:]:
        out.write(f"{text}\n{SEPARATOR}\n")
    out.flush()
    return samples


def task(cfg: DictConfig) -> None:
    generate(cfg)


_hydra_main = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")(one_line_errors(task))


def main() -> None:
    run_app(_hydra_main)


if __name__ == "__main__":
    main()
