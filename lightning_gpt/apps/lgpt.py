"""lgpt: every app under one command, `lgpt <app> [key=value ...]` (the same as `lgpt-<app> ...`).

lgpt train experiment=nanogpt_baby        lgpt sample ckpt_path=latest        python -m lightning_gpt eval ...
"""

from __future__ import annotations

import importlib
import sys

APPS = {  # subcommand -> (module under lightning_gpt.apps, what it does)
    "train": ("train", "train a model from the configs (lgpt-train)"),
    "sample": ("sample", "generate text from a checkpoint (lgpt-sample)"),
    "eval": ("evaluate", "loss, bits per byte and benchmark tasks of a checkpoint (lgpt-eval)"),
    "export": ("export", "a checkpoint as a Hugging Face transformers folder (lgpt-export)"),
    "explain": ("explain", "one prompt through a checkpoint, as an HTML page (lgpt-explain)"),
    "prepare": ("prepare", "tokenize a corpus once into token shards (lgpt-prepare)"),
    "info": ("info", "a model's size, FLOPs and memory before training it (lgpt-info)"),
    "plot": ("plot", "loss curves of runs and sweeps (lgpt-plot)"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<8} {what}" for name, (_, what) in APPS.items())
    return f"usage: lgpt <app> [key=value ...]   (lgpt <app> --help for its options)\n\napps:\n{rows}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, *rest = argv
    if name not in APPS:
        print(f"error: unknown app {name!r}; one of {', '.join(APPS)}\n\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(f"lightning_gpt.apps.{APPS[name][0]}").main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
