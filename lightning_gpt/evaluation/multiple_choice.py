"""Multiple-choice scoring as lm-evaluation-harness scores HellaSwag, ARC, PIQA and Winogrande.

Each choice is a continuation of the question's context; the model's answer is the choice with the highest
summed log-likelihood (`acc`), or the highest log-likelihood per character of the choice (`acc_norm`, what
lm_eval 0.4's `ConfigurableTask.process_results` computes: `completion_len = len(choice)`). The numbers
match the harness's own Hugging Face model on an exported checkpoint, because the text becomes tokens the
same way (`encode_pair`: whitespace at the end of the context moves to the continuation, as
`TemplateLM._encode_pair` does) and windows are cut the same way (the last block_size + 1 tokens of
context + continuation, as `HFLM._loglikelihood_tokens` does).

`loglikelihoods` is the one path from text pairs to scores: `evaluate_multiple_choice` and the harness
adapter (`lightning_gpt.evaluation.harness`) both call it. `multiple_choice_counts` scores one process's
share of the questions and returns sums to all-reduce, for validation under DDP.

    questions = [Question("The cat sat on the", ["mat.", "moon."], label=0), ...]
    evaluate_multiple_choice(model, tokenizer, questions)   # {"acc": ..., "acc_norm": ..., "n": ...}
    read_questions("hellaswag_val.jsonl", limit=100)        # questions from a JSONL file in HellaSwag's schema
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lightning_gpt.errors import UserError
from lightning_gpt.tokenizers import CharTokenizer

if TYPE_CHECKING:
    from lightning_gpt.models.base import LanguageModel
    from lightning_gpt.tokenizers import Tokenizer

Pair = tuple[list[int], list[int]]  # (context ids, continuation ids)
# 200 HellaSwag-style questions shipped with the package: a line of a speech from the last tenth of the embedded
# Shakespeare (its validation text), its next line among three other lines of that text (tests/test_downstream.py
# rebuilds the file from the corpus). The downstream callback's default task.
SHAKESPEARE_NEXT_LINE = Path(__file__).with_name("shakespeare_next_line.jsonl")


@dataclass(frozen=True)
class Question:
    """A context, its candidate endings, and the index of the right one."""

    context: str
    choices: list[str]
    label: int


@contextmanager
def evaluating(model: LanguageModel) -> Iterator[None]:
    """Eval mode and no gradients inside; the model's mode is put back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def check_encodable(tokenizer: Tokenizer, texts: Iterable[str]) -> None:
    """Refuse, in one error naming them all, characters a character-level model never saw in training."""
    if not isinstance(tokenizer, CharTokenizer):
        return  # byte-level tokenizers encode any text
    unknown = set().union(*map(set, texts)) - set(tokenizer.chars)
    if unknown:
        shown = "".join(sorted(unknown)[:40])
        raise UserError(
            f"the text holds {len(unknown)} characters the model never saw in training ({shown!r}): its character "
            f"vocabulary has only the {tokenizer.vocab_size} characters of its training text, so it cannot score "
            "them; use text written in those characters, or a model with a byte-level tokenizer (byte, bpe, gpt2)"
        )


def _excerpt(text: str, n: int = 60) -> str:
    return repr(text) if len(text) <= n else repr(text[:n]) + "..."


def check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")


def prefix_token(tokenizer: Tokenizer) -> int:
    """What an empty context stands on: end-of-text, or a newline for a tokenizer with none (char)."""
    from lightning_gpt.generation import prompt_ids

    return prompt_ids(tokenizer, "")[-1]


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> Pair:
    """Context and continuation ids, as lm_eval's TemplateLM.loglikelihood makes them for a causal model.

    Whitespace at the end of the context moves to the front of the continuation; the continuation's ids are
    those of context + continuation past the context's own ids (so a word keeps the space in front of it, as
    byte-level BPEs spell it). An empty context becomes the prefix token (end-of-text), and the continuation
    is encoded alone.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if not context:
        cont = tokenizer.encode(continuation)
        if not cont:
            raise UserError("an empty continuation has nothing to score; give each choice some text")
        prefix = prefix_token(tokenizer)
        return ([prefix], cont) if cont[0] != prefix else (cont[:1], cont[1:])
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    cont = whole[len(ctx) :]
    if not cont:
        raise UserError(f"the continuation {continuation!r} of {context[-40:]!r} has no tokens of its own to score")
    return ctx, cont


def encode_requests(tokenizer: Tokenizer, requests: Sequence[tuple[str, str]], block_size: int) -> list[Pair]:
    """Each (context, continuation) as ids (`encode_pair`), refusing text the tokenizer cannot read and a
    continuation longer than block_size (a context that long is cut on the left when scored, not refused).
    Cheap: a caller can check its requests long before it scores them."""
    check_encodable(tokenizer, (text for request in requests for text in request))
    pairs = [encode_pair(tokenizer, context, continuation) for context, continuation in requests]
    for (_, continuation), (_, cont) in zip(requests, pairs):
        if len(cont) > block_size:
            raise UserError(
                f"the continuation {_excerpt(continuation)} is {len(cont)} tokens, longer than the model's context "
                f"(block_size {block_size}): it cannot be scored in one window; shorten it"
            )
    return pairs


def loglikelihoods(
    model: LanguageModel,
    tokenizer: Tokenizer,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 16,
    min_batches: int = 0,
) -> list[tuple[float, bool]]:
    """For each (context, continuation): log P(continuation | context) in nats, and whether greedy decoding
    would produce exactly the continuation. A context too long for the model is cut on the left."""
    check_batch_size(batch_size)
    pairs = encode_requests(tokenizer, requests, model.config.block_size)
    return score_pairs(model, pairs, batch_size, min_batches)


def score_pairs(
    model: LanguageModel, pairs: Sequence[Pair], batch_size: int = 16, min_batches: int = 0
) -> list[tuple[float, bool]]:
    """Summed log-likelihood (nats) of each pair's continuation ids, and whether each is the greedy choice.

    Pairs are batched longest first (little padding), right-padded, one forward per batch; only the positions
    that predict continuation tokens are scored. Each row is the last block_size + 1 ids of context +
    continuation (the harness's left truncation), fed without its last id. min_batches: run idle forwards
    until there were this many, so every process of a sharded model (FSDP) runs as many as the others.
    """
    check_batch_size(batch_size)
    block = model.config.block_size
    device = next(model.parameters()).device
    rows = [(ctx + cont)[-(block + 1) :] for ctx, cont in pairs]
    conts = [cont for _, cont in pairs]
    if any(len(cont) > block for cont in conts) or any(not cont for cont in conts):
        raise ValueError(f"each continuation must hold 1 to block_size ({block}) tokens")
    order = sorted(range(len(pairs)), key=lambda i: -len(rows[i]))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    with evaluating(model):
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            T = max(len(rows[i]) for i in batch) - 1
            idx = torch.zeros(len(batch), T, dtype=torch.long)  # (B, T), right-padded with token 0
            owner, position, target = [], [], []  # one entry per scored continuation token
            for b, i in enumerate(batch):
                row, n = rows[i], len(conts[i])
                idx[b, : len(row) - 1] = torch.tensor(row[:-1])
                owner += [b] * n
                position += range(len(row) - 1 - n, len(row) - 1)  # the positions that predict the continuation
                target += conts[i]
            logits = model(idx.to(device))[0]  # (B, T, V): the forward, so FSDP- or compile-wrapped models work
            owner_t, target_t = torch.tensor(owner, device=device), torch.tensor(target, device=device)
            logprobs = F.log_softmax(logits[owner_t, torch.tensor(position, device=device)].float(), dim=-1)  # (N, V)
            token_ll = logprobs.gather(1, target_t[:, None])[:, 0].cpu().double()  # (N,)
            missed = (logprobs.argmax(dim=-1) != target_t).cpu().long()  # (N,): 1 where greedy picks another token
            sums = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, owner_t.cpu(), token_ll)  # (B,)
            misses = torch.zeros(len(batch), dtype=torch.long).index_add_(0, owner_t.cpu(), missed)  # (B,)
            for b, i in enumerate(batch):
                results[i] = (float(sums[b]), bool(misses[b] == 0))
        for _ in range(min_batches - math.ceil(len(order) / batch_size)):
            model(torch.zeros(1, 1, dtype=torch.long, device=device))  # an idle forward: FSDP gathers with the rest
    return results


def read_questions(path: str | Path, limit: int | None = None) -> list[Question]:
    """The first `limit` (None: all) questions of a JSONL file in HellaSwag's schema, one object a line:
    {"ctx": "...", "endings": ["...", ...], "label": 0} (label: the right ending's index, or its digit as a
    string, as the Hugging Face copy of HellaSwag has it). Checked as `check_questions` checks them."""
    import json

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"no questions file at {path}; give a JSONL file of {{ctx, endings, label}} objects")
    questions = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if limit is not None and len(questions) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ctx, endings, label = row["ctx"], row["endings"], int(row["label"])
                if (
                    not isinstance(ctx, str)
                    or not isinstance(endings, list)
                    or not all(isinstance(e, str) for e in endings)
                ):
                    raise TypeError("ctx must be text and endings a list of texts")
            except (ValueError, KeyError, TypeError) as e:
                raise UserError(
                    f"{path}, line {n}: not a question in HellaSwag's schema ({type(e).__name__}: {e}); each line "
                    'must be {"ctx": "...", "endings": ["...", "..."], "label": 0}'
                ) from e
            questions.append(Question(ctx, endings, label))
    check_questions(questions)
    return questions


def check_questions(questions: Sequence[Question]) -> None:
    """Refuse no questions, a question without choices or with an empty one, and a label out of range."""
    if not questions:
        raise UserError("no questions to score: give at least one Question")
    for n, q in enumerate(questions):
        if not q.choices:
            raise UserError(f"question {n} ({q.context[:40]!r}) has no choices; give it at least one")
        if not 0 <= q.label < len(q.choices):
            raise UserError(
                f"question {n} ({q.context[:40]!r}) has label {q.label} but {len(q.choices)} choices; "
                f"the label is the index of the right choice, 0 to {len(q.choices) - 1}"
            )
        if empty := [c for c in q.choices if not c]:
            raise UserError(f"question {n} ({q.context[:40]!r}) has {len(empty)} empty choices; give each some text")


def multiple_choice_counts(
    model: LanguageModel,
    tokenizer: Tokenizer,
    questions: Sequence[Question],
    batch_size: int = 16,
    rank: int = 0,
    world_size: int = 1,
    delimiter: str = " ",
) -> torch.Tensor:
    """Right answers by `acc` and by `acc_norm`, and questions scored, as an int64 tensor (3,) on the model's
    device, for this process's share (questions[rank::world_size]): all-reduce (sum) it across processes.

    Each choice is scored as the continuation delimiter + choice (the harness's target_delimiter, " ").
    """
    if not 0 <= rank < world_size:
        raise UserError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    check_questions(questions)
    check_batch_size(batch_size)
    mine = questions[rank::world_size]
    requests = [(q.context, delimiter + choice) for q in mine for choice in q.choices]
    # Every process runs as many forwards as the busiest one, so a sharded model's collectives pair up.
    most = max(sum(len(q.choices) for q in questions[r::world_size]) for r in range(world_size))
    scores = iter(loglikelihoods(model, tokenizer, requests, batch_size, min_batches=math.ceil(most / batch_size)))
    correct = correct_norm = 0
    for q in mine:
        lls = [next(scores)[0] for _ in q.choices]
        normed = [ll / len(choice) for ll, choice in zip(lls, q.choices)]
        correct += max(range(len(lls)), key=lls.__getitem__) == q.label  # the first best, as np.argmax
        correct_norm += max(range(len(normed)), key=normed.__getitem__) == q.label
    device = next(model.parameters()).device
    return torch.tensor([correct, correct_norm, len(mine)], dtype=torch.int64, device=device)


def evaluate_multiple_choice(
    model: LanguageModel,
    tokenizer: Tokenizer,
    questions: Sequence[Question],
    batch_size: int = 16,
    delimiter: str = " ",
) -> dict[str, float]:
    """acc and acc_norm over the questions (fractions of them answered right), and n, their number."""
    correct, correct_norm, n = multiple_choice_counts(model, tokenizer, questions, batch_size, delimiter=delimiter)
    return {"acc": int(correct) / int(n), "acc_norm": int(correct_norm) / int(n), "n": int(n)}
