"""Any lm-evaluation-harness task on our model: an adapter, not a fork.

The harness owns the tasks (YAML: prompts, few-shot examples, metrics); a model is three methods over plain
request tuples. `LightningGPTLM` implements them for a (LanguageModel, Tokenizer) pair, so a checkpoint is
scored on HellaSwag, ARC or LAMBADA exactly as the harness scores a Hugging Face model: `loglikelihood`
goes through `multiple_choice.loglikelihoods` (the same tokenization and batching as our own
multiple-choice scorer), `loglikelihood_rolling` cuts disjoint windows with the harness's own functions,
and `generate_until` decodes with `lightning_gpt.generation.generate`.

    results = run_tasks(model, tokenizer, ["hellaswag"], limit=100)
    print(format_results(results))
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lightning_gpt.errors import UserError

try:
    import lm_eval
    from lm_eval.api.model import LM
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as e:
    raise UserError(
        f"the lm-evaluation-harness is not installed ({e}); pip install 'lm_eval>=0.4.13' to run its tasks"
    ) from e
from lightning_gpt.evaluation.multiple_choice import (
    check_batch_size,
    check_encodable,
    evaluating,
    loglikelihoods,
    prefix_token,
    score_pairs,
)

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import TaskManager

    from lightning_gpt.models.base import LanguageModel
    from lightning_gpt.tokenizers import Tokenizer


class LightningGPTLM(LM):
    """An lm_eval model over our LanguageModel and Tokenizer, on whatever device the model is."""

    def __init__(
        self, model: LanguageModel, tokenizer: Tokenizer, batch_size: int = 16, max_gen_toks: int = 256
    ) -> None:
        super().__init__()
        check_batch_size(batch_size)
        if max_gen_toks < 1:
            raise UserError(f"max_gen_toks must be at least 1, got {max_gen_toks}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_gen_toks = batch_size, max_gen_toks
        self._device = next(model.parameters()).device

    @property
    def block_size(self) -> int:
        return self.model.config.block_size

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name

    def get_model_info(self) -> dict[str, Any]:
        """What the harness records about the model in results["config"]."""
        return {
            "model_family": self.model.config.family,
            "model_num_parameters": self.model.num_params(non_embedding=False),
            "block_size": self.block_size,
            "tokenizer": self.tokenizer.name,
        }

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """log P(continuation | context) and whether greedy decoding gives the continuation, per request."""
        args = [req.args for req in requests]
        results = loglikelihoods(self.model, self.tokenizer, args, self.batch_size)
        for request, result in zip(args, results):
            self.cache_hook.add_partial("loglikelihood", request, result)
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """log P(text) of each whole text, over disjoint windows of block_size tokens (the first standing on
        end-of-text), each token predicted once with as much context as the window allows."""
        texts = [req.args[0] for req in requests]
        check_encodable(self.tokenizer, texts)
        prefix = prefix_token(self.tokenizer)
        pairs, owners = [], []
        for n, text in enumerate(texts):
            windows = get_rolling_token_windows(
                token_list=self.tokenizer.encode(text), prefix_token=prefix, max_seq_len=self.block_size, context_len=1
            )
            for window in map(make_disjoint_window, windows):
                pairs.append(window)
                owners.append(n)
        totals = [0.0] * len(texts)
        for owner, (ll, _) in zip(owners, score_pairs(self.model, pairs, self.batch_size)):
            totals[owner] += ll
        for text, total in zip(texts, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return totals

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Continue each context (greedily unless the request samples) until a stop string, end-of-text or
        max_gen_toks tokens; the text before the first stop string."""
        check_encodable(self.tokenizer, (req.args[0] for req in requests))
        groups: dict[tuple[str, int], list[int]] = {}  # same settings and prompt length -> one batch
        prompts, settings = [], []
        for n, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            max_new = kwargs["max_gen_toks"]
            # As the harness's HF model: room for max_gen_toks after the context (our cache slides when it cannot).
            keep = self.block_size - max_new if max_new < self.block_size else self.block_size
            ids = (self.tokenizer.encode(context) if context else [prefix_token(self.tokenizer)])[-keep:]
            prompts.append(ids)
            settings.append(kwargs)
            key = json.dumps(kwargs, sort_keys=True, default=str)
            groups.setdefault((key, len(ids)), []).append(n)
        outputs = [""] * len(requests)
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                batch = members[start : start + self.batch_size]
                texts = self._generate([prompts[n] for n in batch], dict(settings[batch[0]]))
                for n, text in zip(batch, texts):
                    outputs[n] = text
                    self.cache_hook.add_partial("generate_until", requests[n].args, text)
        return outputs

    def _generate(self, prompts: list[list[int]], kwargs: dict[str, Any]) -> list[str]:
        from lightning_gpt.generation import generate

        until = handle_stop_sequences(kwargs.pop("until", None), eos=None)
        sample = bool(kwargs.get("do_sample"))
        temperature = float(kwargs.get("temperature") or 0.0) if sample else 0.0
        top_k, top_p = (kwargs.get("top_k") or None, kwargs.get("top_p")) if sample else (None, None)  # 0: no top-k
        idx = torch.tensor(prompts, device=self._device)  # (B, T): one prompt length per batch
        eot = self.tokenizer.eot_id
        rows: list[list[int]] = [[] for _ in prompts]
        with evaluating(self.model):
            for token in generate(self.model, idx, kwargs["max_gen_toks"], temperature, top_k, top_p, eot):
                for row, t in zip(rows, token[:, 0].tolist()):
                    row.append(t)
                if until and all(self._stopped(row, until) for row in rows):
                    break
        texts = [self.tokenizer.decode(row[: row.index(eot)] if eot in row else row) for row in rows]
        return [postprocess_generated_text(text, until, None) for text in texts]

    def _stopped(self, row: list[int], until: list[str]) -> bool:
        eot = self.tokenizer.eot_id
        if eot is not None and eot in row:
            return True
        text = self.tokenizer.decode(row)
        return any(stop and stop in text for stop in until)


def task_manager(tasks: Sequence[str], tasks_path: str | Path | None = None) -> TaskManager:
    """The harness's task index: the folder's tasks alone when it holds every requested one as a task (indexing
    the harness's 14,000 built-in tasks takes seconds), else the built-in tasks with the folder's on top (a
    group in the folder may name built-in tasks)."""
    from lm_eval.tasks import TaskManager

    if tasks_path is not None:
        path = Path(tasks_path).expanduser()
        if not path.is_dir():
            raise UserError(
                f"tasks_path {str(tasks_path)!r} is not a folder; give the folder that holds the task YAMLs"
            )
        local = TaskManager(include_path=str(path), include_defaults=False)
        if all(name in local.all_subtasks for name in tasks):
            return local
        return TaskManager(include_path=str(path))
    return TaskManager()


def check_tasks(tasks: Sequence[str], manager: TaskManager) -> None:
    """Refuse a task name the harness does not know, naming close ones."""
    for name in tasks:
        if name in manager.all_tasks or (name.endswith((".yaml", ".yml")) and Path(name).is_file()):
            continue
        close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "no task has a close name"
        raise UserError(
            f"unknown task {name!r} ({hint}); list the harness's tasks with `lm_eval ls tasks`, or put a task "
            "YAML in the folder given as tasks_path"
        )


def run_tasks(
    model: LanguageModel,
    tokenizer: Tokenizer,
    tasks: Sequence[str],
    tasks_path: str | Path | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    max_gen_toks: int = 256,
    seed: int | None = 1234,
    log_samples: bool = False,
    bootstrap_iters: int = 100_000,
) -> dict[str, Any]:
    """Score the model on harness tasks with `lm_eval.simple_evaluate`; its results dict (results[task][metric]).

    tasks: names the harness knows, or tasks in tasks_path (a folder of task YAMLs). limit: at most this many
    documents per task (a float below 1: that fraction). seed: python's, numpy's and torch's RNG are set to it
    (as lm_eval's CLI does); None leaves them alone (evaluating inside training). log_samples: add each
    document's requests and responses under results["samples"]. Writes nothing.
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks:
        raise UserError("no tasks to run: give at least one task name, e.g. ['hellaswag']")
    if limit is not None and not limit > 0:
        raise UserError(f"limit must be a positive number of documents per task (or None for all), got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"num_fewshot must be 0 or more (or None for each task's own), got {num_fewshot}")
    manager = task_manager(tasks, tasks_path)
    check_tasks(tasks, manager)
    lm = LightningGPTLM(model, tokenizer, batch_size, max_gen_toks)
    try:
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            task_manager=manager,
            limit=limit,
            num_fewshot=num_fewshot,
            log_samples=log_samples,
            bootstrap_iters=bootstrap_iters,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=1234 if seed is None else seed,  # the sampler's own generator, not the global one
        )
    except (ConnectionError, FileNotFoundError) as e:  # datasets' and huggingface_hub's offline errors
        raise UserError(_dataset_error(tasks, manager, e)) from e


def _dataset_error(tasks: Sequence[str], manager: TaskManager, error: Exception) -> str:
    """Which task's dataset could not be read, how to fetch it, and how to point a task at a local copy."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    cause = f"({type(error).__name__}: {message})"
    datasets = {}  # requested task -> its dataset_path
    for name in tasks:
        entry = manager.task_index.get(name)
        if entry is not None and (entry.cfg or {}).get("dataset_path"):
            datasets[name] = entry.cfg["dataset_path"]
    # The task whose hub dataset the error names, else one reading local files, else the hub id in the message.
    named = [name for name, path in datasets.items() if path in message and path != "json"]
    named = named or [name for name, path in datasets.items() if path == "json" or Path(path).exists()]
    if named:
        who, path = f"task {named[0]!r}", datasets[named[0]]
    else:
        hub_id = re.search(r"'([\w.-]+/[\w.-]+)'", message)
        who, path = f"a task of {', '.join(tasks)}", hub_id.group(1) if hub_id else None
    if path is None or path == "json" or Path(path).exists():
        return f"{who} reads data that could not be read {cause}; check dataset_path and dataset_kwargs in its YAML"
    return (
        f"{who} needs the dataset {path!r}, which could not be read here {cause}; download it where there is a "
        f"network (`hf download {path} --repo-type dataset`, then copy Hugging Face's cache here), or save its "
        "split as JSONL and point a task YAML in tasks_path at it (dataset_path: json, dataset_kwargs: "
        "{data_files: {validation: /abs/path.jsonl}})"
    )


def format_results(results: dict[str, Any]) -> str:
    """The harness's tables (tasks, then groups if any) as Markdown."""
    from lm_eval.utils import make_table

    table = make_table(results)
    if results.get("groups"):
        table += "\n" + make_table(results, "groups")
    return table
