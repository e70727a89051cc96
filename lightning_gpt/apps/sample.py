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
from typing import TextIO

from omegaconf import DictConfig

from lightning_gpt.apps.console import fit_threads_to_load
from lightning_gpt.apps.launch import launch
from lightning_gpt.apps.prompts import read_prompt
from lightning_gpt.devices import pick_device
from lightning_gpt.errors import UserError

SEPARATOR = "-" * 15


def write_samples(cfg: DictConfig, out: TextIO | None = None) -> list[str]:
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
    write_samples(cfg)


def main(argv: list[str] | None = None) -> int:
    return launch(task, "sample", argv, "lgpt-sample", interrupted="the text printed so far is all there is")


if __name__ == "__main__":
    raise SystemExit(main())
