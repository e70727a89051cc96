"""Judging a trained model the way the field does: bits per byte, multiple-choice accuracy, and any
lm-evaluation-harness task.

    bpb.py              token_bytes (the per-token byte table), loss_and_bytes, token_losses_and_bytes,
                        bits_per_byte, evaluate_bpb
    multiple_choice.py  Question, read_questions (HellaSwag's JSONL schema), evaluate_multiple_choice,
                        multiple_choice_counts (per process, to all-reduce), loglikelihoods: the one batched
                        path from (context, continuation) text to scores
    harness.py          LightningGPTLM (an lm_eval LM over our model and tokenizer), run_tasks, format_results

Plain functions over a model, a tokenizer and text: no Lightning, Hydra or command-line keys. harness.py
imports lm_eval, so it is imported on its own: `from lightning_gpt.evaluation.harness import run_tasks`.
"""

from __future__ import annotations

from lightning_gpt.evaluation.bpb import (
    bits_per_byte,
    evaluate_bpb,
    loss_and_bytes,
    token_bytes,
    token_losses_and_bytes,
)
from lightning_gpt.evaluation.multiple_choice import (
    Question,
    evaluate_multiple_choice,
    loglikelihoods,
    multiple_choice_counts,
    read_questions,
)

__all__ = [
    "Question",
    "bits_per_byte",
    "evaluate_bpb",
    "evaluate_multiple_choice",
    "loglikelihoods",
    "loss_and_bytes",
    "multiple_choice_counts",
    "read_questions",
    "token_bytes",
    "token_losses_and_bytes",
]
