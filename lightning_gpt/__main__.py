"""`python -m lightning_gpt <app> ...`: the `lgpt` command."""

from lightning_gpt.apps.lgpt import main

if __name__ == "__main__":
    raise SystemExit(main())
