"""Local lm-evaluation-harness tasks for offline tests: Tiny Shakespeare in HellaSwag's and LAMBADA's shapes.

HellaSwag-style: context = a line of a speech, the right ending = the line after it, the wrong endings =
other lines drawn at random, so a model that learned the text can beat chance (25%). LAMBADA-style: two
lines of a speech whose last word is predicted (`loglikelihood`; perplexity and acc). Each is a JSONL file
and a task YAML (<task>.jsonl, <task>.yaml) in the harness's schema, read through `TaskManager(include_path=folder)`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from lightning_gpt.evaluation import Question

from .config import TINY_SHAKESPEARE

HELLASWAG_TASK = "lgpt_tiny_hellaswag"
LAMBADA_TASK = "lgpt_tiny_lambada"


def speech_line_pairs(text: str) -> list[tuple[str, str]]:
    """Consecutive lines of one speech: neither a speaker's name ("ROMEO:") nor blank."""
    lines = text.splitlines()
    return [
        (a, b)
        for a, b in zip(lines, lines[1:])
        if a.strip() and b.strip() and not a.endswith(":") and not b.endswith(":") and len(b.split()) >= 3
    ]


def hellaswag_rows(n: int = 32, seed: int = 0, text: str | None = None, max_ending: int | None = None) -> list[dict]:
    """HellaSwag's schema (ctx, endings, label) from consecutive lines; endings are 4 lines, one the next
    (lines of at most max_ending characters, for a model with a short context)."""
    pairs = speech_line_pairs(text if text is not None else TINY_SHAKESPEARE.read_text())
    pairs = [(a, b) for a, b in pairs if max_ending is None or len(b) <= max_ending]
    rng = random.Random(seed)
    rows = []
    for ctx, ending in rng.sample(pairs, n):
        wrong = [b for _, b in rng.sample(pairs, 3)]
        label = rng.randrange(4)
        endings = wrong[:label] + [ending] + wrong[label:]
        rows.append({"ctx": ctx, "endings": endings, "label": label})
    return rows


def lambada_rows(n: int = 20, seed: int = 1, text: str | None = None) -> list[dict]:
    """LAMBADA's schema (text): two lines of a speech, without the final punctuation; the last word is scored."""
    pairs = speech_line_pairs(text if text is not None else TINY_SHAKESPEARE.read_text())
    rng = random.Random(seed)
    return [{"text": f"{a} {b}".rstrip(".,;:!?'-")} for a, b in rng.sample(pairs, n)]


def questions(rows: list[dict]) -> list[Question]:
    """The rows as our own multiple-choice questions (what the harness's YAML below makes of them)."""
    return [Question(row["ctx"], row["endings"], row["label"]) for row in rows]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_multiple_choice_task(folder: Path, name: str, rows: list[dict]) -> Path:
    """A HellaSwag-style task (ctx, endings, label) named name: its JSONL file and YAML in folder; the YAML."""
    folder.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(folder / f"{name}.jsonl", rows)
    yaml = folder / f"{name}.yaml"
    yaml.write_text(
        f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data.resolve()}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{ctx}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "{{{{endings}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
    )
    return yaml


def write_tasks(folder: Path, hellaswag: list[dict] | None = None, lambada: list[dict] | None = None) -> Path:
    """Write the two tasks' JSONL files and YAMLs into folder (the tasks_path); return folder."""
    folder.mkdir(parents=True, exist_ok=True)
    write_multiple_choice_task(folder, HELLASWAG_TASK, hellaswag if hellaswag is not None else hellaswag_rows())
    lambada_data = write_jsonl(folder / f"{LAMBADA_TASK}.jsonl", lambada if lambada is not None else lambada_rows())
    (folder / f"{LAMBADA_TASK}.yaml").write_text(
        f"""task: {LAMBADA_TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {lambada_data.resolve()}
validation_split: validation
output_type: loglikelihood
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
    )
    return folder


def shakespeare_next_line_rows() -> list[dict]:
    """The downstream callback's default questions (lightning_gpt/evaluation/shakespeare_next_line.jsonl): 200
    next-line questions, endings of at most 40 characters, from the last tenth of the embedded Shakespeare."""
    from lightning_gpt.data.shakespeare import load_plays

    text = "".join(load_plays())
    return hellaswag_rows(200, seed=0, text=text[int(0.9 * len(text)) :], max_ending=40)
